"""nginx configs for the suite: the fast fixed-body upstream, and nginx as a plain reverse proxy.

Both run as ordinary processes (`daemon off`, one worker) on loopback ports, with every path nginx writes
kept inside the run's own directory.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.paced_upstream import CHAT_JSON, listings, sse_body
from tests.harness import system_binary

SSE_PATH = "/bench/sse"  # the fixed SSE body, for the upstream's own figures


def _quote(payload: bytes) -> str:
    """An nginx single-quoted string (its parser turns `\\n` back into a newline)."""
    text = payload.decode()
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _preamble(workdir: Path) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  tcp_nodelay on;
"""


def upstream_config(workdir: Path, port: int, models: list[str], sse_events: int) -> Path:
    """nginx answering every POST with a fixed chat completion, the DMR probe routes, and a fixed SSE body."""
    routes = "\n".join(
        f"    location = {path} {{ default_type {'text/plain' if path == '/' else 'application/json'}; "
        f"return 200 {_quote(body)}; }}"
        for path, body in listings(models).items()
    )
    text = (
        _preamble(workdir)
        + f"""
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
{routes}
    location = {SSE_PATH} {{ default_type text/event-stream; return 200 {_quote(sse_body(sse_events))}; }}
    location / {{ default_type application/json; return 200 {_quote(CHAT_JSON)}; }}
  }}
}}
"""
    )
    path = workdir / "nginx-upstream.conf"
    path.write_text(text)
    return path


def proxy_config(workdir: Path, routes: list[tuple[int, str]]) -> Path:
    """nginx as a plain reverse proxy: each (listen port, upstream base URL) pair with a keep-alive pool.

    Buffering is off so SSE events pass as they arrive, as anyone putting nginx in front of a streaming
    API configures it.
    """
    blocks = []
    for index, (port, upstream) in enumerate(routes):
        hostport = upstream.removeprefix("http://").rstrip("/")
        blocks.append(
            f"""
  upstream up{index} {{ server {hostport}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up{index};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
"""
        )
    path = workdir / "nginx-proxy.conf"
    path.write_text(_preamble(workdir) + "".join(blocks) + "}\n")
    return path


def argv(config: Path, workdir: Path) -> list[str]:
    return [system_binary("nginx", "nginx"), "-p", str(workdir), "-c", str(config)]
