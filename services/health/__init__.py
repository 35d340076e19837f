"""The health worker: probes every DMR endpoint on its own interval and publishes live state to Redis.

Run it with `python -m services.health`; `python -m services.health --check` is the container healthcheck.
Entry points: `services.health.worker.HealthWorker`, `services.health.settings.HealthSettings`. Nothing is
imported here, so the healthcheck does not pay for the worker's imports.
"""
