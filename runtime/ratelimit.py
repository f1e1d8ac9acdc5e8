"""Token-bucket rate limits, in memory, per key and per process.

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; each request takes
one. With several processes the effective limit is one budget per process, which is enough to
keep one noisy sender from flooding the database, the purpose of these limits.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aiohttp import web

DEFAULT_WEBHOOK_RATE = 10.0
DEFAULT_WEBHOOK_BURST = 20
DEFAULT_MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class TokenBucketLimiter:
    """Allows `burst` requests at once per key, then `rate` a second.

    Keys are kept in least-recently-used order. A bucket untouched for `burst / rate` seconds
    has refilled completely and is indistinguishable from a new one, so it is dropped: memory
    follows the number of keys active in that window. `max_keys` bounds it even under a flood
    of distinct keys; past it the least recently used bucket is forgotten early, which can only
    make the limiter more lenient to that key, never stricter.
    """

    def __init__(
        self,
        rate: float = DEFAULT_WEBHOOK_RATE,
        burst: int = DEFAULT_WEBHOOK_BURST,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = float(rate)
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    @property
    def full_after_s(self) -> float:
        """Seconds an untouched bucket takes to refill from empty."""
        return self.burst / self.rate

    def allow(self, key: Hashable) -> tuple[bool, float]:
        """Take a token for `key`: (allowed, seconds until the next token if refused)."""
        now = self._clock()
        self._evict(now)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), updated_at=now)
        else:
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated_at = now
        self._buckets[key] = bucket  # most recently used goes last
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, 0.0
        return False, (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        # Least recently used first, so the scan stops at the first bucket still refilling.
        idle_cutoff = now - self.full_after_s
        while self._buckets and next(iter(self._buckets.values())).updated_at <= idle_cutoff:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """`Retry-After` takes whole seconds; round up so a client that obeys it is let in."""
    return str(max(1, math.ceil(seconds)))


WEBHOOK_LIMITER: web.AppKey[TokenBucketLimiter] = web.AppKey("webhook_limiter")

# The app factory does not create a webhook limiter, and an application cannot gain keys once
# it has started (aiohttp freezes it), so the default one is created on first use and kept
# here, one per application. Weak keys let a finished application (every test makes one) take
# its limiter with it.
_default_limiters: weakref.WeakKeyDictionary[web.Application, TokenBucketLimiter] = (
    weakref.WeakKeyDictionary()
)


def webhook_limiter(app: web.Application) -> TokenBucketLimiter:
    """The app's webhook limiter: `app[WEBHOOK_LIMITER]` when set before start, else a default."""
    configured = app.get(WEBHOOK_LIMITER)
    if configured is not None:
        return configured
    limiter = _default_limiters.get(app)
    if limiter is None:
        limiter = _default_limiters[app] = TokenBucketLimiter()
    return limiter
