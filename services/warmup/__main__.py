"""`python -m services.warmup` runs the warm-up worker; `--check` is the container healthcheck."""

from __future__ import annotations

import argparse
import asyncio

from services.warmup.settings import WarmupSettings
from services.warmup.worker import SERVICE, WarmupWorker
from shared.lifecycle import install_uvloop, run_worker
from shared.liveness import check
from shared.logs import setup_logging
from shared.redisconn import check_at_start
from shared.startup import load_or_exit, report_ignored
from shared.telemetry import setup


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.warmup", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 0 when this container's worker is alive")
    args = parser.parse_args()
    settings = load_or_exit(WarmupSettings.load)
    if args.check:
        return check(settings.redis_target(), SERVICE, settings.warmup_id_file, settings.heartbeat_ttl_s)
    config = load_or_exit(settings.pier_config)
    warm = load_or_exit(settings.warmup_config)
    setup_logging(SERVICE, settings.log_level, settings.log_format)
    report_ignored(config)
    check_at_start(settings.redis_target())  # a wrong password or CA file is exit 2, not a retry loop
    install_uvloop()
    telemetry = setup("pier-warmup")  # before the worker: its tracer and meter come from the global providers
    try:
        asyncio.run(run_worker(WarmupWorker(settings, config, warm)))
    finally:
        telemetry.shutdown()  # spans still queued leave now (bounded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
