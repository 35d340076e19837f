"""The health worker: probes every DMR endpoint on its own interval and publishes live state to Redis.

Run it with `python -m services.health`; `python -m services.health --check` is the container healthcheck.
"""

from services.health.settings import HealthSettings
from services.health.worker import HealthWorker

__all__ = ["HealthSettings", "HealthWorker"]
