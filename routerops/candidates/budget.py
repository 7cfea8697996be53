"""Dollar budgets for candidate calls: one per run, one per request (episode), nestable.

Policy: a call is refused once what has already been spent reaches the limit (spent >= limit).
We do not predict what a call will cost before making it: the completion length is unknown until
the reply arrives, and a pessimistic guess (max_tokens x price) would refuse calls that in
practice cost a few percent of that. The consequence is bounded overshoot: the call that crosses
the limit is allowed, and so is every call already in flight when it crosses, so a budget can end
above its limit by at most (calls in flight) x (cost of one call at max_tokens).

Both classes guard their totals with a `threading.Lock`. No method awaits while holding it, so
the same lock serves asyncio tasks on one loop and threads alike.

`SharedRunBudget` is a run budget kept in a file: every process of a run (verl's agent-loop
workers, a resumed trainer) reads and charges the same total, under an exclusive `flock` on a
sidecar lock file, and the total survives the process. One charge costs a lock, a read and an
atomic replace of a file of about 200 bytes (`bench/ledger.py` measures it), against a candidate
call that takes hundreds of milliseconds; the ledger must sit on storage every process of the run
sees (the checkpoint folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["LEDGER_FILE", "Budget", "LedgerError", "RequestBudget", "RunBudget", "SharedRunBudget"]

# A training run's ledger, in its checkpoint folder (both backends): kept on resume, cleared with
# the checkpoints when the run's inputs change.
LEDGER_FILE = "run_budget.json"


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


class LedgerError(RuntimeError):
    """A shared ledger file that cannot be read as one (never silently reset to zero)."""


LEDGER_SCHEMA = 1


class SharedRunBudget(RunBudget):
    """A run budget whose total lives in `path` (JSON), shared by every process that opens it.

    The limit is this process's (params `candidates.run_budget_usd`): a resumed run with a new
    limit keeps what was spent and checks it against the new limit. The file records the last
    limit it was charged under, the dollars, the calls and the refusals; it is replaced
    atomically, so a process killed mid-charge leaves the previous total, never half a file.
    """

    def __init__(self, limit_usd: float | None, path: str | os.PathLike[str]) -> None:
        super().__init__(limit_usd)
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as state:
            self._write(state)  # creates the file, and refuses an unreadable one at once

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with self._lock, open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"schema": LEDGER_SCHEMA, "spent_usd": 0.0, "calls": 0, "refusals": 0}
        try:
            state = json.loads(raw)
            if state.get("schema") != LEDGER_SCHEMA:
                raise ValueError(f"schema {state.get('schema')!r}, expected {LEDGER_SCHEMA}")
            spent = float(state["spent_usd"])
            if not math.isfinite(spent) or spent < 0:
                raise ValueError(f"spent_usd {spent!r}")
            return {"schema": LEDGER_SCHEMA, "spent_usd": spent, "calls": int(state["calls"]),
                    "refusals": int(state.get("refusals", 0))}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(f"{self.path}: not a run ledger ({exc}); move it aside to start the budget "
                              "from zero") from exc

    def _write(self, state: dict[str, Any]) -> None:
        # Replaced, not fsynced: a killed process leaves the old or the new file, whole; an fsync
        # per charge would cost milliseconds each, thousands of times in a local training run.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**state, "limit_usd": self._limit}, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    @property
    def spent_usd(self) -> float:
        with self._locked() as state:
            return float(state["spent_usd"])

    @property
    def calls(self) -> int:
        with self._locked() as state:
            return int(state["calls"])

    @property
    def refusals(self) -> int:
        with self._locked() as state:
            return int(state["refusals"])

    @property
    def remaining_usd(self) -> float | None:
        return None if self._limit is None else max(0.0, self._limit - self.spent_usd)

    def check(self) -> str | None:
        if self._limit is None:
            return None
        with self._locked() as state:
            if state["spent_usd"] >= self._limit:
                state["refusals"] += 1
                self._write(state)
                return f"run budget spent: ${state['spent_usd']:.6f} of ${self._limit:.6f} (ledger {self.path})"
        return None

    def charge(self, usd: float) -> None:
        amount = _validate_charge(usd)
        with self._locked() as state:
            state["spent_usd"] += amount
            state["calls"] += 1
            self._write(state)

    def __repr__(self) -> str:
        return f"SharedRunBudget(limit_usd={self._limit!r}, path={str(self.path)!r})"


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
