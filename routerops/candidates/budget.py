"""Dollar budgets for candidate calls: one per run, one per request (episode), nestable.

Policy: a call is refused once what has already been spent reaches the limit (spent >= limit).
We do not predict what a call will cost before making it: the completion length is unknown until
the reply arrives, and a pessimistic guess (max_tokens x price) would refuse calls that in
practice cost a few percent of that. The consequence is bounded overshoot: the call that crosses
the limit is allowed, and so is every call already in flight when it crosses, so a budget can end
above its limit by at most (calls in flight) x (cost of one call at max_tokens).

Both classes guard their totals with a `threading.Lock`. No method awaits while holding it, so
the same lock serves asyncio tasks on one loop and threads alike.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol, runtime_checkable

__all__ = ["Budget", "RequestBudget", "RunBudget"]


@runtime_checkable
class Budget(Protocol):
    """What a backend needs from `CallContext.budget`."""

    def check(self) -> str | None: ...

    def charge(self, usd: float) -> None: ...


def _validate_limit(limit_usd: float | None) -> float | None:
    if limit_usd is None:
        return None
    limit = float(limit_usd)
    if math.isnan(limit) or limit < 0:
        raise ValueError(f"budget limit must be None (unlimited) or a number >= 0, got {limit_usd!r}")
    return limit


def _validate_charge(usd: float) -> float:
    amount = float(usd)
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"a charge must be a finite number >= 0, got {usd!r}")
    return amount


class _Ledger:
    """Dollars spent against an optional limit, safe to share between threads."""

    _scope = "budget"

    def __init__(self, limit_usd: float | None) -> None:
        self._limit = _validate_limit(limit_usd)
        self._spent = 0.0
        self._calls = 0
        self._refusals = 0
        self._lock = threading.Lock()

    @property
    def limit_usd(self) -> float | None:
        return self._limit

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    @property
    def calls(self) -> int:
        """Number of charges recorded (successful, paid calls)."""
        with self._lock:
            return self._calls

    @property
    def refusals(self) -> int:
        """Number of `check()` calls this ledger refused."""
        with self._lock:
            return self._refusals

    def _own_remaining(self) -> float | None:
        """None when unlimited; never negative, even after overshoot."""
        if self._limit is None:
            return None
        with self._lock:
            return max(0.0, self._limit - self._spent)

    def _own_refusal(self) -> str | None:
        if self._limit is None:
            return None
        with self._lock:
            if self._spent >= self._limit:
                self._refusals += 1
                return f"{self._scope} budget spent: ${self._spent:.6f} of ${self._limit:.6f}"
        return None

    def _record(self, usd: float) -> float:
        amount = _validate_charge(usd)
        with self._lock:
            self._spent += amount
            self._calls += 1
        return amount


class RunBudget(_Ledger):
    """Total spend of one run (training job, evaluation, replay session)."""

    _scope = "run"

    @property
    def remaining_usd(self) -> float | None:
        return self._own_remaining()

    def check(self) -> str | None:
        """Why a new call must be refused, or None if it may go ahead."""
        return self._own_refusal()

    def charge(self, usd: float) -> None:
        self._record(usd)

    def __repr__(self) -> str:
        return f"RunBudget(limit_usd={self._limit!r}, spent_usd={self.spent_usd:.6f})"


class RequestBudget(_Ledger):
    """Spend of one request (one routed question); also charges the run budget it belongs to."""

    _scope = "request"

    def __init__(self, limit_usd: float | None, run: RunBudget | None = None) -> None:
        super().__init__(limit_usd)
        self.run = run

    @property
    def remaining_usd(self) -> float | None:
        """The tighter of this request's and the run's remaining dollars (None when both unlimited)."""
        mine = self._own_remaining()
        theirs = self.run.remaining_usd if self.run is not None else None
        if mine is None:
            return theirs
        return mine if theirs is None else min(mine, theirs)

    def check(self) -> str | None:
        """The request's own limit is checked first, so the reason names the tighter scope."""
        return self._own_refusal() or (self.run.check() if self.run is not None else None)

    def charge(self, usd: float) -> None:
        amount = self._record(usd)
        if self.run is not None:
            self.run.charge(amount)

    def __repr__(self) -> str:
        return f"RequestBudget(limit_usd={self._limit!r}, spent_usd={self.spent_usd:.6f}, run={self.run!r})"
