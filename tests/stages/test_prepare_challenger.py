"""The retrain's plan: what a price change builds, and a superseded change that builds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from routerops.config import load_params
from stages.prepare_challenger import Inputs, PrepareError, run

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(ROOT / "params.yaml")


def _inputs(watch: dict, pool: str | None = "pricing: {}\n") -> Inputs:
    return Inputs("newid", watch, pool, "v0.1.0", "c" * 40, Path("/ws/newid"))


@pytest.mark.parametrize(("decision", "repro"), [
    ("retrain", ["dvc", "repro"]),
    ("reprice", ["dvc", "repro", "--single-item", "evaluate_router", "package_router"]),
])
def test_a_current_change_plans_its_build(decision, repro) -> None:
    plan = run(PARAMS, _inputs({"new_pricing_id": "newid", "decision": decision, "reason": "why"}))
    assert (plan.action, plan.reason, plan.repro, plan.workspace, plan.base_commit) == (
        decision, "why", repro, "/ws/newid", "c" * 40)
    assert plan.run_budget_usd == PARAMS.retrain.budget_usd


def test_a_change_the_latest_watch_no_longer_sees_is_superseded() -> None:
    plan = run(PARAMS, _inputs({"new_pricing_id": "later", "decision": "retrain", "checked_at": "2026-12-02T06:00"}))
    assert (plan.action, plan.repro) == ("superseded", [])
    assert plan.reason == ("the latest price watch (2026-12-02T06:00) found pricing later, not newid: that change "
                           "has its own retrain")


def test_a_decision_without_the_new_pool_is_an_error() -> None:
    with pytest.raises(PrepareError, match=r"^the price watch decided retrain for newid but wrote no pool\.yaml$"):
        run(PARAMS, _inputs({"new_pricing_id": "newid", "decision": "retrain"}, pool=None))
