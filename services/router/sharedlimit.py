"""Token buckets shared by every router replica through Redis (`PIER_RATE_LIMIT_SHARED=true`).

One round trip per request: a Lua script takes from the client's bucket and then the global one, with Redis's
own clock (replicas' clocks may disagree; Redis has one). Bucket keys are `shared.keys.rate_bucket(digest)`:
a SHA-256 of the client's identity, so no byte a client sent is ever part of a key. When Redis fails or is
slow (`PIER_RATE_LIMIT_REDIS_TIMEOUT_S`), the local `Limiter` answers instead and Redis is left alone for a
few seconds: the limit is still enforced, per replica, and requests never wait on a dead Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.router.ratelimit import Bucket, Limit, Limiter, Taken
from shared import keys

log = logging.getLogger(__name__)

RETRY_REDIS_AFTER_S = 5.0  # after a failure, the local limiter answers this long before Redis is tried again

# KEYS: client bucket, global bucket (either may be the empty-string placeholder when that limit is off).
# ARGV: client rate, client burst, global rate, global burst. Returns {allowed, client tokens*1000,
# global tokens*1000, now_ms}; allowed: 1, 0 (client refused) or -1 (global refused).
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function take(key, rate, burst)
  local b = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(b[1])
  if tokens == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - tonumber(b[2])) * rate)
  end
  local ok = tokens >= 1
  if ok then tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((burst / rate + 1) * 1000))
  return ok, tokens
end
local mine, theirs = -1, -1
local crate, cburst, grate, gburst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if crate > 0 then
  local ok, tokens = take(KEYS[1], crate, cburst)
  mine = tokens
  if not ok then return {0, math.floor(mine * 1000), -1, math.floor(now * 1000)} end
end
if grate > 0 then
  local ok, tokens = take(KEYS[2], grate, gburst)
  theirs = tokens
  if not ok then
    if crate > 0 then
      redis.call('HSET', KEYS[1], 'tokens', tostring(mine + 1))
    end
    return {-1, math.floor(mine * 1000), math.floor(theirs * 1000), math.floor(now * 1000)}
  end
end
return {1, math.floor(mine * 1000), math.floor(theirs * 1000), math.floor(now * 1000)}
"""


def bucket_id(client: str) -> str:
    """A client's bucket name in Redis: a digest of its identity, never the identity itself."""
    return hashlib.sha256(client.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _taken(allowed: bool, tokens_milli: int, limit: Limit) -> Taken:
    tokens = tokens_milli / 1000.0
    retry_s = 0.0 if allowed else max(0.0, (1.0 - tokens) / limit.rate_per_s)
    return Taken(allowed, Bucket(tokens, 0.0), limit, retry_s)


class SharedLimiter:
    """Buckets in Redis, with `local` as the fallback (and the keeper of in-flight counts, which stay local)."""

    def __init__(self, redis: Redis, local: Limiter, *, timeout_s: float) -> None:
        self._redis = redis
        self.local = local
        self._timeout_s = timeout_s
        self._script = redis.register_script(_SCRIPT)
        self._skip_until = 0.0
        self.fallbacks = 0

    async def admit(self, client: str, now: float, own: Limit | None = None) -> tuple[Taken | None, Taken | None]:
        """As `Limiter.admit`, across every replica; the local limiter answers while Redis cannot."""
        if time.monotonic() < self._skip_until:
            return self.local.admit(client, now, own)
        mine_limit = own or self.local.client_limit
        global_limit = self.local.global_limit
        args = [
            mine_limit.rate_per_s if mine_limit else 0,
            mine_limit.burst if mine_limit else 0,
            global_limit.rate_per_s if global_limit else 0,
            global_limit.burst if global_limit else 0,
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._script(keys=[keys.rate_bucket(bucket_id(client)), keys.RATE_GLOBAL], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self.fallbacks += 1
            self._skip_until = time.monotonic() + RETRY_REDIS_AFTER_S
            log.warning("rate limits: Redis unavailable (%s); limiting locally for %gs", exc, RETRY_REDIS_AFTER_S)
            return self.local.admit(client, now, own)
        allowed, mine_milli, global_milli = int(reply[0]), int(reply[1]), int(reply[2])
        mine = _taken(allowed != 0, mine_milli, mine_limit) if mine_limit is not None else None
        shared = None
        if global_limit is not None and allowed != 0:
            shared = _taken(allowed == 1, global_milli, global_limit)
        return mine, shared
