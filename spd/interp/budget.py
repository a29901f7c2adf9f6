"""A hard spending cap: reserve the worst case before a request, settle the real cost after.

With many requests in flight, checking "spent < budget" before each one (as the reference did) overshoots
by up to max_concurrent calls. Here a request starts only once its worst case fits beside everything
already spent and everything reserved by requests in flight; otherwise it waits for those to settle, and
when nothing is in flight and it still does not fit, it is refused (`BudgetExhaustedError`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from spd.interp.errors import BudgetExhaustedError

_EPS = 1e-12


@dataclass
class Reservation:
    """Money held for one request until it settles."""

    amount: float
    settled: bool = False


class Budget:
    """Tracks spent and reserved USD against an optional limit, on one event loop."""

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit = limit_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self.n_in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []

    def exhausted_for(self, amount: float) -> bool:
        """True when `amount` can never fit again, whatever the requests in flight turn out to cost."""
        return self.limit is not None and self.spent + amount > self.limit + _EPS

    async def reserve(self, amount: float) -> Reservation:
        """Hold `amount`; wait while requests in flight might free enough; refuse when none can."""
        if self.limit is not None:
            while self.spent + self.reserved + amount > self.limit + _EPS:
                if self.n_in_flight == 0 or self.exhausted_for(amount):
                    raise BudgetExhaustedError(
                        f"budget ${self.limit:.6f} cannot cover this request's worst case ${amount:.6f} "
                        f"(spent ${self.spent:.6f})"
                    )
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        self.reserved += amount
        self.n_in_flight += 1
        return Reservation(amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """Replace the reservation by what the request really cost, and wake requests waiting for room."""
        if reservation.settled:
            return
        reservation.settled = True
        self.reserved = max(0.0, self.reserved - reservation.amount)
        self.n_in_flight -= 1
        self.spent += actual
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
