"""Real redis-server and redis-sentinel processes with a password, an ACL user, TLS (certificates made here with
openssl) and Sentinels: what the Redis security and fail-over tests run Pier against."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import (
    free_port,
    kill_popen,
    port_open,
    redis_server_binary,
    require_binary,
    stop_popen,
    wait_for_sync,
)

PASSWORD = "s3cret-Redis-pw-7f2c"  # the default user's password (admin: the tests' own view of the server)
PIER_USER = "pier"
PIER_PASSWORD = "pier-ACL-pw-91ab"
SENTINEL_PASSWORD = "sentinel-pw-4d1e"
MASTER = "pier-master"

# The minimal ACL for Pier (docs/security.md#redis): its own keys, no channels, and only the commands it sends
# (redis-py's CLIENT SETINFO on connect may be refused: it ignores that. Commands its Lua scripts call are
# checked too: GET/PEXPIRE/DEL for leases; TIME/HMGET/HSET for shared limits).
PIER_COMMANDS = (
    "+ping +get +set +mget +exists +del +pexpire +zadd +zrange +zrem +xadd +xread +xrange "
    "+xrevrange +hmget +hset +time +multi +exec +discard +evalsha +eval +script|load"
)
PIER_ACL = f"on >{PIER_PASSWORD} resetkeys ~pier:* resetchannels -@all {PIER_COMMANDS}"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=Pier test {ca}",
            cwd=folder,
        )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", "-extfile", "san.ext",
            cwd=folder,
        )  # fmt: skip
    return Certs(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "other-ca.crt",
    )


@dataclass
class Server:
    """One redis-server or redis-sentinel process."""

    port: int
    popen: subprocess.Popen[bytes]
    dir: Path
    tls: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user or ''}:{password}@" if password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_popen(self.popen)

    def kill(self) -> None:
        kill_popen(self.popen)


def _common_lines(workdir: Path, port: int, certs: Certs | None) -> list[str]:
    """Where a redis-server or redis-sentinel listens (on `port`, or only on its TLS port with `certs`) and writes."""
    return ["bind 127.0.0.1", f"port {0 if certs else port}", f"dir {workdir}", f"logfile {workdir / 'server.log'}"]


def _tls_lines(certs: Certs, *, mutual: bool) -> list[str]:
    return [
        f"tls-cert-file {certs.server_cert}",
        f"tls-key-file {certs.server_key}",
        f"tls-ca-cert-file {certs.ca}",
        f"tls-auth-clients {'yes' if mutual else 'no'}",
        # Sentinels and replicas reach each other over TLS too (with the server's certificate as the client one).
        "tls-replication yes",
        f"tls-client-cert-file {certs.server_cert}",
        f"tls-client-key-file {certs.server_key}",
    ]


def _start(binary: str, workdir: Path, lines: Sequence[str], port: int, *, tls: bool) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"  # Sentinels rewrite their config file: it must be a writable file of their own
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    popen = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(port, popen, workdir, tls=tls)
    wait_for_sync(lambda: port_open(port) or popen.poll() is not None, timeout_s=10, what=f"{binary} on {port}")
    if popen.poll() is not None:
        raise AssertionError(f"{binary} exited with {popen.returncode}:\n{server.log()[-3000:]}")
    return server


def start_redis(
    workdir: Path,
    *,
    password: str | None = PASSWORD,
    acl_users: Sequence[str] = (),
    certs: Certs | None = None,
    mutual: bool = False,
    replica_of: int | None = None,
) -> Server:
    """A redis-server: a password for the default user, ACL users (`user <name> <rules>` lines), TLS when `certs`."""
    port = free_port()
    lines = [
        *_common_lines(workdir, port, certs),
        'save ""',
        "appendonly no",
    ]
    if certs is not None:
        lines += [f"tls-port {port}", *_tls_lines(certs, mutual=mutual)]
    if password is not None:
        lines += [f"requirepass {password}", f"masterauth {password}"]
    lines += [f"user {rule}" for rule in acl_users]
    if replica_of is not None:
        lines.append(f"replicaof 127.0.0.1 {replica_of}")
    return _start(redis_server_binary(), workdir, lines, port, tls=certs is not None)


def start_sentinel(
    workdir: Path, master_port: int, *, password: str | None = PASSWORD, certs: Certs | None = None
) -> Server:
    """A redis-sentinel (the Debian binary) watching `master_port`, quorum 2, down after 1 s."""
    port = free_port()
    lines = [
        *_common_lines(workdir, port, certs),
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {MASTER} 1000",
        f"sentinel failover-timeout {MASTER} 10000",
        f"sentinel parallel-syncs {MASTER} 1",
        f"requirepass {SENTINEL_PASSWORD}",
        f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
    ]
    if password is not None:
        lines.append(f"sentinel auth-pass {MASTER} {password}")
    if certs is not None:
        lines += [f"tls-port {port}", *_tls_lines(certs, mutual=False)]
    return _start(require_binary("redis-sentinel", "redis-sentinel"), workdir, lines, port, tls=certs is not None)
