"""`python -m services.health` runs the health worker; `--check` is the container healthcheck (exit 0/1)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.health.settings import HealthSettings
from shared.config import PierConfig
from shared.lifecycle import install_uvloop, run_worker
from shared.liveness import check
from shared.logs import setup_logging
from shared.redisconn import check_at_start
from shared.startup import load_or_exit, report_ignored
from shared.telemetry import setup

SERVICE = "health"


async def _serve(settings: HealthSettings, config: PierConfig) -> None:
    # Imported here so that `--check`, run every few seconds by the container healthcheck, stays light.
    from services.health.worker import HealthWorker

    await run_worker(HealthWorker(settings, config=config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.health", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 0 if this worker's heartbeat is fresh, else 1")
    args = parser.parse_args(argv)
    settings = load_or_exit(HealthSettings.load)
    if args.check:
        return check(settings.redis_target(), SERVICE, settings.health_id_file, settings.heartbeat_ttl_s)
    setup_logging(SERVICE, settings.log_level, settings.log_format)
    config = load_or_exit(settings.pier_config)
    report_ignored(config)
    check_at_start(settings.redis_target())  # a wrong password or CA file is exit 2, not a retry loop
    install_uvloop()
    telemetry = setup("pier-health")
    try:
        asyncio.run(_serve(settings, config))
    finally:
        telemetry.shutdown()  # spans still queued leave now (bounded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
