"""`python -m tests.emulator --port N [options]`: run one DMR emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tests.emulator.config import from_args
from tests.emulator.server import EmulatorServer


async def _run(server: EmulatorServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except OSError as exc:
        print(f"emulator: cannot listen on {server.config.host}:{server.config.port}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    admin = f", admin on {server.admin_url}" if server.config.admin_port is not None else ""
    print(f"emulator {server.config.name}: listening on {server.url}{admin}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    config = from_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The default loop on purpose: the in-process tests run on it, so the process behaves the same.
    asyncio.run(_run(EmulatorServer(config)))


if __name__ == "__main__":
    main()
