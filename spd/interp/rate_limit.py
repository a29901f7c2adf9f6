"""Politeness: a shared pause for Retry-After, and an evenly spaced requests-per-minute limiter.

Both live on one event loop and are shared by every coroutine of a client, so a 429 seen by one request
holds back all of them (the reference paused only after the next attempt of each coroutine found out).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

Clock = Callable[[], float]


def parse_retry_after(headers: Mapping[str, str] | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None if absent/bad."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class PauseGate:
    """A pause every request waits out before it starts: set by a Retry-After, shared by all coroutines."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.resume_at = -math.inf
        self.n_pauses = 0

    def pause(self, seconds: float) -> None:
        """Hold every new request back for `seconds` from now (extends, never shortens, a current pause)."""
        if seconds <= 0:
            return
        self.n_pauses += 1
        self.resume_at = max(self.resume_at, self._clock() + seconds)

    async def wait(self) -> None:
        while (delay := self.resume_at - self._clock()) > 0:
            await asyncio.sleep(delay)


class RateLimiter:
    """At most `per_minute` request starts per minute, spaced evenly (GCRA), after any pause of `gate`.

    Even spacing rather than a bucket that refills once a minute: providers meter over short windows, and a
    burst of a minute's worth of requests at start-up is what earns the first 429. `burst` starts may go
    back to back. A slot whose time falls inside a pause that began while it waited is given up for a new
    one after the pause, so requests resume spaced out instead of all at once.
    """

    def __init__(
        self, per_minute: float | None, *, burst: int = 1, gate: PauseGate | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.tolerance = (burst - 1) * self.interval
        self.gate = gate or PauseGate(clock)
        self._clock = clock
        self._tat = -math.inf  # theoretical arrival time of the next conforming request

    async def acquire(self) -> None:
        """Return when this request may start: after the gate's pause and at its own rate slot."""
        while True:
            await self.gate.wait()
            if self.interval == 0.0:
                return
            now = self._clock()
            slot = max(now, self._tat - self.tolerance)
            self._tat = max(self._tat, slot) + self.interval
            if slot > now:
                await asyncio.sleep(slot - now)
            if self.gate.resume_at <= slot:
                return
