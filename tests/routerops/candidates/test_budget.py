"""RunBudget / RequestBudget: refusal once spent, nesting, validation, thread safety."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from routerops.candidates import Budget, RequestBudget, RunBudget
from routerops.candidates.budget import LedgerError, SharedRunBudget


def test_unlimited_never_refuses() -> None:
    run = RunBudget(None)
    req = RequestBudget(None, run=run)
    for _ in range(100):
        assert req.check() is None
        req.charge(1_000.0)
    assert run.spent_usd == pytest.approx(100_000.0)
    assert req.remaining_usd is None and run.remaining_usd is None


def test_refuses_once_spent_reaches_limit() -> None:
    run = RunBudget(0.01)
    assert run.check() is None
    run.charge(0.006)
    assert run.check() is None           # 0.006 < 0.01: the next call may go ahead...
    run.charge(0.006)                    # ...and may overshoot: cost is not predicted
    assert run.check() == "run budget spent: $0.012000 of $0.010000"
    assert run.spent_usd == pytest.approx(0.012)
    assert run.remaining_usd == 0.0
    assert run.calls == 2 and run.refusals == 1


def test_zero_limit_refuses_the_first_call() -> None:
    assert RequestBudget(0.0).check() == "request budget spent: $0.000000 of $0.000000"
    assert RunBudget(0).check() == "run budget spent: $0.000000 of $0.000000"


def test_request_budget_charges_its_run_and_names_the_tighter_scope() -> None:
    run = RunBudget(1.0)
    a = RequestBudget(0.1, run=run)
    b = RequestBudget(None, run=run)
    a.charge(0.1)
    assert a.check() == "request budget spent: $0.100000 of $0.100000"
    assert b.check() is None
    b.charge(0.9)
    assert run.spent_usd == pytest.approx(1.0)
    assert b.check() == "run budget spent: $1.000000 of $1.000000"
    assert a.check() == "request budget spent: $0.100000 of $0.100000"  # its own, tighter limit first
    assert (a.spent_usd, b.spent_usd) == (pytest.approx(0.1), pytest.approx(0.9))
    assert RequestBudget(0.5, run=RunBudget(0.2)).remaining_usd == pytest.approx(0.2)


@pytest.mark.parametrize("limit", [-0.01, -1, math.nan])
def test_invalid_limits_raise(limit: float) -> None:
    message = f"^{re.escape(f'budget limit must be None (unlimited) or a number >= 0, got {limit!r}')}$"
    with pytest.raises(ValueError, match=message):
        RunBudget(limit)
    with pytest.raises(ValueError, match=message):
        RequestBudget(limit)


@pytest.mark.parametrize("usd", [-1e-9, math.nan, math.inf])
def test_invalid_charges_raise(usd: float) -> None:
    message = f"^{re.escape(f'a charge must be a finite number >= 0, got {usd!r}')}$"
    run = RunBudget(None)
    with pytest.raises(ValueError, match=message):
        run.charge(usd)
    request = RequestBudget(None, run=run)
    with pytest.raises(ValueError, match=message):
        request.charge(usd)
    assert (run.spent_usd, run.calls, request.spent_usd, request.calls) == (0.0, 0, 0.0, 0)  # nothing recorded


def test_budgets_satisfy_the_backend_protocol() -> None:
    assert isinstance(RunBudget(None), Budget)
    assert isinstance(RequestBudget(None), Budget)
    assert not isinstance(object(), Budget)


def test_concurrent_charges_from_threads_are_not_lost() -> None:
    run = RunBudget(None)
    per_thread, threads = 2_000, 8

    def work() -> None:
        req = RequestBudget(None, run=run)
        for _ in range(per_thread):
            req.check()
            req.charge(0.5)  # exactly representable, so the sum is exact

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)  # generous: 16,000 locked additions; a wedged thread fails below, not by a hang
    assert not any(w.is_alive() for w in workers), "a charging thread did not finish"
    assert run.calls == per_thread * threads
    assert run.spent_usd == 0.5 * per_thread * threads


# ----- the shared ledger: one run budget for every process of a run, kept across a resume ------

CHARGER = """
import sys
from routerops.candidates.budget import SharedRunBudget
path, limit, charges, usd = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ledger = SharedRunBudget(None if limit == "none" else float(limit), path)
for _ in range(charges):
    if ledger.check() is None:
        ledger.charge(usd)
"""


def _chargers(path: Path, limit: float | None, charges: int, usd: float, n: int) -> list[subprocess.Popen[bytes]]:
    """`n` processes, each charging `charges` times, started together."""
    return [subprocess.Popen([sys.executable, "-c", CHARGER, str(path), "none" if limit is None else str(limit),
                              str(charges), str(usd)]) for _ in range(n)]


def test_processes_charging_one_ledger_lose_nothing(tmp_path: Path) -> None:
    """verl's agent-loop workers are separate processes: four of them charge one ledger at once."""
    path = tmp_path / "run_budget.json"
    assert [w.wait(120) for w in _chargers(path, None, 100, 0.25, 4)] == [0, 0, 0, 0]
    ledger = SharedRunBudget(None, path)
    assert (ledger.calls, ledger.spent_usd) == (400, 100.0)  # 0.25 is exact: the sum is too


def test_one_processs_spending_refuses_another_processs_call(tmp_path: Path) -> None:
    path = tmp_path / "run_budget.json"
    assert [w.wait(120) for w in _chargers(path, 1.0, 4, 0.25, 1)] == [0]
    here = SharedRunBudget(1.0, path)
    assert here.check() == f"run budget spent: $1.000000 of $1.000000 (ledger {path})"
    assert here.remaining_usd == 0.0 and here.refusals == 1


def test_a_resumed_run_goes_on_from_what_was_spent(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "run_budget.json"
    first = SharedRunBudget(2.0, path)
    first.charge(1.5)
    del first  # the process ends; nothing but the file remains
    resumed = SharedRunBudget(3.0, path)  # resumed with a larger limit: the spend is kept, the limit is new
    assert (resumed.spent_usd, resumed.calls, resumed.remaining_usd) == (1.5, 1, 1.5)
    assert json.loads(path.read_text())["limit_usd"] == 3.0
    assert isinstance(resumed, RunBudget) and isinstance(RequestBudget(None, resumed), Budget)


LEDGER_CASES = [
    ("", "not a run ledger (Expecting value: line 1 column 1 (char 0))"),
    ("[]", "not a run ledger ('list' object has no attribute 'get')"),
    ('{"schema": 2, "spent_usd": 0, "calls": 0}', "not a run ledger (schema 2, expected 1)"),
    ('{"schema": 1, "calls": 0}', "not a run ledger ('spent_usd')"),
    ('{"schema": 1, "spent_usd": -1, "calls": 0}', "not a run ledger (spent_usd -1.0)"),
    ('{"schema": 1, "spent_usd": "NaN", "calls": 0}', "not a run ledger (spent_usd nan)"),
]


@pytest.mark.parametrize(("content", "message"), LEDGER_CASES)
def test_an_unreadable_ledger_is_refused_never_reset(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "run_budget.json"
    path.write_text(content)
    with pytest.raises(LedgerError) as info:
        SharedRunBudget(1.0, path)
    assert str(info.value) == f"{path}: {message}; move it aside to start the budget from zero"
    assert path.read_text() == content  # left as found
