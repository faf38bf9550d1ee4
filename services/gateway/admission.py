"""Admission control before any backend work: per-tenant token bucket and concurrency cap, and a
global in-flight cap. Refusals are RESOURCE_EXHAUSTED with a retry hint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.common.errors import ResourceExhausted


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float = field(default=-1.0)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float | None = None) -> float:
        """Takes one token. Returns 0 when granted, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Admission:
    """Decides, per call, whether it may go to a backend now. Not thread-safe: used on the event loop."""

    def __init__(self, rate: float, burst: int, tenant_concurrency: int, max_in_flight: int) -> None:
        self._rate, self._burst = rate, burst
        self._tenant_concurrency = tenant_concurrency
        self._max_in_flight = max_in_flight
        self._buckets: dict[str, TokenBucket] = {}
        self._tenant_in_flight: dict[str, int] = {}
        self.in_flight = 0

    @contextmanager
    def admit(self, tenant: str) -> Iterator[None]:
        """Holds a slot for the duration of the call, or raises ResourceExhausted at once."""
        if self.in_flight >= self._max_in_flight:
            raise ResourceExhausted(
                f"gateway busy: {self.in_flight} calls in flight (limit {self._max_in_flight})",
                retry_after=1.0,
            )
        running = self._tenant_in_flight.get(tenant, 0)
        if running >= self._tenant_concurrency:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {running} calls in flight (limit {self._tenant_concurrency})",
                retry_after=1.0,
            )
        bucket = self._buckets.setdefault(tenant, TokenBucket(self._rate, self._burst))
        wait = bucket.take()
        if wait:
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its rate limit ({self._rate:g} requests/s, burst {self._burst})",
                retry_after=wait,
            )
        self.in_flight += 1
        self._tenant_in_flight[tenant] = running + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._tenant_in_flight[tenant] -= 1
            if not self._tenant_in_flight[tenant]:
                del self._tenant_in_flight[tenant]
