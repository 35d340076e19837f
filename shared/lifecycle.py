"""Running a worker as a process: SIGTERM/SIGINT stop it gracefully, exceptions surface as exit 1."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol


class Worker(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...
    async def close(self) -> None: ...


def install_uvloop() -> bool:
    """Use uvloop when it is installed (faster loop); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def run_worker(worker: Worker) -> None:
    """Run until the worker returns or a stop signal arrives; always close it."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await worker.close()
