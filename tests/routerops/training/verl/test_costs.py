"""The reward function's cost log, aggregated per (split, step)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from routerops.training.verl.costs import summarize_training_costs
from routerops.training.verl.reward import compute_score, reset_reward_state


def test_cost_log_and_per_step_summary(tmp_path: Path, write_params: Callable[..., Path], candidate_name: str,
                                       valid_response: str, route_call: Callable[..., dict[str, Any]]) -> None:
    Q, VALID, _call = candidate_name, valid_response, route_call
    log = tmp_path / "costs.jsonl"
    reset_reward_state()
    kw = {"params_path": str(write_params(tmp_path / "p.yaml", normalizer="sliding")), "cost_log_path": str(log)}
    for step, tokens, text in [(1, 100, VALID), (1, 300, "<answer>Paris</answer>"), (2, 200, VALID)]:
        extra = {"split": "train", "global_step": step, "route_calls": json.dumps([_call(Q, tokens), _call("x", 0, False)])}
        compute_score("nq", text, ["Paris"], extra, **kw)
    compute_score("nq", VALID, ["Paris"], {"split": "validation", "global_step": 2,
                                          "route_calls": json.dumps([])}, **kw)
    with log.open("a") as fh:
        fh.write('{"split": "train", "step": 2, "score": \n')  # a half-written line of a live run
    summary = summarize_training_costs(log)
    assert summary.skipped_lines == 1
    s1, s2 = summary.for_split("train")
    assert (s1.step, s1.trajectories, s2.step, s2.trajectories) == (1, 2, 2, 1)
    assert s1.reward_mean == pytest.approx(0.0) and s1.format_valid_share == 0.5  # 1 and -1
    assert s1.cost_usd_total == pytest.approx(400 * 0.30 / 1e6) and s1.calls_mean == 2.0
    assert s1.calls_per_model == {Q: 2, "x": 2} and s2.em_mean == 1.0
    (v,) = summary.for_split("validation")
    assert v.cost_usd_total == 0.0 and v.as_row()["split"] == "validation"
    assert summarize_training_costs(tmp_path / "missing.jsonl").steps == ()
