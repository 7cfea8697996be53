"""The zero-call decision after a price change: none, reprice or retrain, from an evaluation's
stored token counts. A uniform change must never retrain (Router-R1's cost normaliser is relative)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from routerops.candidates.types import CallOrigin
from routerops.evaluation import Call, EvalRecord
from routerops.pool import Pool, parse_pool
from routerops.price_impact import RetrainRule, assess, relative_price_shift, render_impact

ROOT = Path(__file__).resolve().parents[2]
RULE = RetrainRule(min_cheapest_correct_changed=0.05, max_objective_drop=0.01)
HTTP = CallOrigin.HTTP


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "pool.yaml").read_text())


def _pool(raw: dict, scale: dict[str, float] | None = None, every: float | None = None) -> Pool:
    doc = copy.deepcopy(raw)
    for name, price in doc["pricing"]["prices"].items():
        k = every if every is not None else (scale or {}).get(name, 1.0)
        price["input_usd_per_mtok"] = round(price["input_usd_per_mtok"] * k, 6)
        price["output_usd_per_mtok"] = round(price["output_usd_per_mtok"] * k, 6)
    return parse_pool(doc, "pool.yaml")


def _records(pool: Pool) -> list[EvalRecord]:
    """Ten questions; on each, the cheap concise model (Mixtral: 17 tokens at the highest price) and
    a verbose cheap one (Mistral: 150 tokens at 0.20) both answer right, so Mixtral is the cheapest
    correct model (20.4 against 30 micro-USD); the router calls Mixtral and is right on all but the last, where its format fails."""
    mix, mistral, gemma = "Mixtral-8x22B-Instruct", "Mistral-7B-Instruct", "Gemma-2-27B-Instruct"
    out = []
    for i in range(10):
        q = f"nq:{i}"
        for model, tokens, ok in ((mix, 17, True), (mistral, 150, True), (gemma, 53, False)):
            out.append(EvalRecord(f"single:{model}", q, "nq", "q?", ("Paris",), "Paris" if ok else "Lyon", True,
                                  (Call(model, HTTP, tokens),)))
        out.append(EvalRecord("router", q, "nq", "q?", ("Paris",), "Paris", i < 9, (Call(mix, HTTP, 17),)))
        out.append(EvalRecord("cheapest", q, "nq", "q?", ("Paris",), "Paris", True, (Call(mix, HTTP, 17),)))
    assert {c.model for r in out for c in r.calls} <= set(pool.names)
    return out


def test_unchanged_prices_need_nothing(raw) -> None:
    pool = _pool(raw)
    impact = assess(_records(pool), pool, pool, alpha=0.6, rule=RULE, seed=0)
    assert (impact.decision, impact.reason, impact.price_changes) == ("none", "no price changed", 0)
    assert impact.objective_before == impact.objective_after


def test_a_uniform_change_reprices_and_never_retrains(raw) -> None:
    old, new = _pool(raw), _pool(raw, every=2.0)
    impact = assess(_records(old), old, new, alpha=0.9, rule=RULE, seed=0)
    assert impact.decision == "reprice" and impact.price_changes == 12
    assert impact.cheapest_correct_changed == 0
    assert impact.objective_after == pytest.approx(impact.objective_before, abs=1e-12)
    router = next(s for s in impact.systems if s.system == "router")
    assert router.usd_after == pytest.approx(2 * router.usd_before)


def test_a_relative_change_that_moves_the_cheapest_correct_model_retrains(raw) -> None:
    old, new = _pool(raw), _pool(raw, {"Mixtral-8x22B-Instruct": 10.0})  # 17 x 12.0 > 150 x 0.2
    impact = assess(_records(old), old, new, alpha=0.6, rule=RULE, seed=0)
    assert impact.decision == "retrain"
    assert (impact.cheapest_correct_changed, impact.answerable) == (10, 10)
    assert impact.changed_examples[0] == ("nq:0", "Mixtral-8x22B-Instruct", "Mistral-7B-Instruct")
    assert impact.reason == ("the cheapest correct model changed on 100.0% of the answerable questions "
                             "(threshold 5.0%)")
    text = render_impact(impact, "old list", "new list")
    assert text.startswith("# Price change: old list -> new list\n\n**Decision: retrain**")
    assert "| single:Mixtral-8x22B-Instruct | 1.000 | 1.000 | 20.40 | 204.00 | +900.0% |" in text


def test_the_cheapest_baseline_chooses_again_under_the_new_prices(raw) -> None:
    # Of the three models called, Mistral has the lowest price per token (0.20) and answers right
    # in 150 tokens (30 micro-USD); at ten times that Gemma (0.80) is the cheapest, and answers
    # wrong in 53 tokens (42.4 micro-USD).
    old, new = _pool(raw), _pool(raw, {"Mistral-7B-Instruct": 10.0})
    impact = assess(_records(old), old, new, alpha=0.6, rule=RULE, seed=0)
    cheapest = next(s for s in impact.systems if s.system == "cheapest")
    assert (cheapest.em, cheapest.em_after) == (1.0, 0.0)
    assert (cheapest.usd_before, cheapest.usd_after) == (pytest.approx(30e-6), pytest.approx(42.4e-6))
    assert "| cheapest | 1.000 | 0.000 | 30.00 | 42.40 | +41.3% |" in render_impact(impact, "old", "new")


def test_a_small_relative_change_reprices(raw) -> None:
    old, new = _pool(raw), _pool(raw, {"Gemma-2-27B-Instruct": 1.1})  # Gemma is never the cheapest correct
    impact = assess(_records(old), old, new, alpha=0.6, rule=RULE, seed=0)
    assert impact.decision == "reprice" and impact.price_changes == 2


def test_an_unpriced_model_that_the_evaluation_called_is_an_error(raw) -> None:
    old = _pool(raw)
    doc = copy.deepcopy(raw)
    doc["candidates"] = [c for c in doc["candidates"] if c["name"] != "Mixtral-8x22B-Instruct"]
    del doc["pricing"]["prices"]["Mixtral-8x22B-Instruct"]
    doc.pop("price_sources", None)
    new = parse_pool(doc, "new.yaml")
    with pytest.raises(ValueError, match=r"^new\.yaml: no price for model\(s\) Mixtral-8x22B-Instruct that the "
                                         r"evaluation called$"):
        assess(_records(old), old, new, alpha=0.6, rule=RULE, seed=0)


def test_cli_prices_impact(raw, tmp_path) -> None:
    old = _pool(raw)
    trajectories = tmp_path / "trajectories.parquet"
    pq.write_table(pa.Table.from_pylist([r.as_row() for r in _records(old)]), trajectories)
    new_file = tmp_path / "new.yaml"
    doc = copy.deepcopy(raw)
    doc["pricing"]["prices"]["Mixtral-8x22B-Instruct"] = {"input_usd_per_mtok": 12.0, "output_usd_per_mtok": 12.0}
    new_file.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "routerops.cli", "prices", "impact", "--pool", str(new_file),
                           "--trajectories", str(trajectories), "--markdown", str(tmp_path / "impact.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "**Decision: retrain**" in proc.stdout
    assert (tmp_path / "impact.md").read_text() == proc.stdout


def test_the_relative_price_shift_of_the_champions_models(raw) -> None:
    old = _pool(raw)
    router = [r for r in _records(old) if r.system == "router"]  # every call to Mixtral
    assert relative_price_shift(router, old, _pool(raw, every=2.0)) == pytest.approx(0.0, abs=1e-12)
    # Mixtral x10 in a six-model pool: its price over the geometric mean moves by 10^(5/6)
    assert relative_price_shift(router, old, _pool(raw, {"Mixtral-8x22B-Instruct": 10.0})) == pytest.approx(
        math.log(10) * 5 / 6)
    # a model it does not use moves the mean a little: Gemma x1.1 shifts Mixtral by ln(1.1) / 6
    assert relative_price_shift(router, old, _pool(raw, {"Gemma-2-27B-Instruct": 1.1})) == pytest.approx(
        math.log(1.1) / 6, rel=1e-3)
    assert relative_price_shift([], old, _pool(raw, {"Mixtral-8x22B-Instruct": 10.0})) == 0.0


def test_a_champion_whose_models_got_dearer_retrains_when_nothing_else_says_so(raw) -> None:
    # with the other two signals switched off, only the relative price shift decides
    rule = RetrainRule(min_cheapest_correct_changed=1.5, max_objective_drop=1.0, max_relative_price_shift=0.1)
    old = _pool(raw)
    impact = assess(_records(old), old, _pool(raw, {"Mixtral-8x22B-Instruct": 10.0}), alpha=0.6, rule=rule, seed=0)
    assert impact.decision == "retrain" and impact.relative_price_shift == pytest.approx(1.9188, abs=1e-4)
    assert impact.reason == ("the models the champion spends on moved 1.919 in relative price (spend-weighted mean "
                             "|ln| change; threshold 0.100)")
    uniform = assess(_records(old), old, _pool(raw, every=3.0), alpha=0.6, rule=rule, seed=0)
    assert uniform.decision == "reprice" and uniform.relative_price_shift == pytest.approx(0.0, abs=1e-12)
