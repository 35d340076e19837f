"""A leader lease: one worker of a kind leads (health: probes; warm-up: preloads), the others stand by.

`SET key owner NX PX ttl` takes it; the owner renews with a compare-and-pexpire script and releases it on
shutdown with compare-and-delete, so a worker can never extend or drop a lease another worker holds.
"""

from __future__ import annotations

from redis.commands.core import AsyncScript

from shared.statestore import RedisClient

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A PX-expiring Redis lock naming its owner. Methods raise `RedisError` when Redis is unreachable."""

    def __init__(self, redis: RedisClient, key: str, owner: str, *, ttl_s: float) -> None:
        self._redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self._renew: AsyncScript = redis.register_script(_RENEW)
        self._release: AsyncScript = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if free, or keep it if this owner already holds it (e.g. after a restart)."""
        if await self._redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        """Extend the lease; False when another owner holds it or it expired."""
        return bool(await self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    async def release(self) -> bool:
        """Drop the lease if this owner holds it, so a standby can take over at once."""
        return bool(await self._release(keys=[self.key], args=[self.owner]))

    async def holder(self) -> str | None:
        raw = await self._redis.get(self.key)
        return None if raw is None else str(raw)
