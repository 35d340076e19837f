"""`python -m services.router` runs the router on PIER_HOST:PIER_PORT; `--check` is the container healthcheck."""

from __future__ import annotations

import argparse

from services.router.server import check, run
from services.router.settings import RouterSettings
from shared.logs import setup_logging
from shared.redisconn import check_at_start
from shared.startup import load_or_exit, report_ignored


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 0 when this container's router answers /internal/health"
    )
    args = parser.parse_args()
    settings = load_or_exit(RouterSettings.load)
    if args.check:
        return check(settings)
    config = load_or_exit(settings.pier_config)
    setup_logging("router", settings.log_level, settings.log_format)
    report_ignored(config)
    check_at_start(settings.redis_target())  # a wrong password or CA file is exit 2, not a retry loop
    return run(settings, config)


if __name__ == "__main__":
    raise SystemExit(main())
