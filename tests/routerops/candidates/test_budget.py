"""RunBudget / RequestBudget: refusal once spent, nesting, validation, thread safety."""

from __future__ import annotations

import math
import threading

import pytest

from routerops.candidates import Budget, RequestBudget, RunBudget


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
    reason = run.check()
    assert reason is not None and "run budget" in reason
    assert run.spent_usd == pytest.approx(0.012)
    assert run.remaining_usd == 0.0
    assert run.calls == 2 and run.refusals == 1


def test_zero_limit_refuses_the_first_call() -> None:
    assert RequestBudget(0.0).check() is not None
    assert RunBudget(0).check() is not None


def test_request_budget_charges_its_run_and_names_the_tighter_scope() -> None:
    run = RunBudget(1.0)
    a = RequestBudget(0.1, run=run)
    b = RequestBudget(None, run=run)
    a.charge(0.1)
    reason = a.check()
    assert reason is not None and reason.startswith("request budget")
    assert b.check() is None
    b.charge(0.9)
    assert run.spent_usd == pytest.approx(1.0)
    reason = b.check()
    assert reason is not None and reason.startswith("run budget")
    assert (a.spent_usd, b.spent_usd) == (pytest.approx(0.1), pytest.approx(0.9))
    assert RequestBudget(0.5, run=RunBudget(0.2)).remaining_usd == pytest.approx(0.2)


@pytest.mark.parametrize("limit", [-0.01, -1, math.nan])
def test_invalid_limits_raise(limit: float) -> None:
    with pytest.raises(ValueError):
        RunBudget(limit)
    with pytest.raises(ValueError):
        RequestBudget(limit)


@pytest.mark.parametrize("usd", [-1e-9, math.nan, math.inf])
def test_invalid_charges_raise(usd: float) -> None:
    with pytest.raises(ValueError):
        RunBudget(None).charge(usd)
    with pytest.raises(ValueError):
        RequestBudget(None).charge(usd)


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
        w.join()
    assert run.calls == per_thread * threads
    assert run.spent_usd == 0.5 * per_thread * threads
