from __future__ import annotations

from routerops.config import load_params
from stages.route_samples import Inputs, run


def test_route_samples_answers_real_questions(repo_root, shared_data, pool) -> None:
    params = load_params(repo_root / "params.yaml")
    params = params.model_copy(update={"demo": params.demo.model_copy(update={"questions": 6})})
    out = run(params, Inputs(pool, shared_data))
    s = out.summary
    assert s["questions"] == 6 and len(out.traces) == 6 and len(out.rendered) == 6
    assert s["format_valid"] == 1.0  # the scripted router always follows the protocol
    assert s["replay"]["calls"] == sum(len(t["calls"]) for t in out.traces)
    assert s["usd_per_question"] == sum(t["cost_usd"] for t in out.traces) / 6
    assert s["pool_snapshot"] == pool.snapshot_id
    # deterministic: the same params give the same traces
    again = run(params, Inputs(pool, shared_data))
    assert (again.traces, again.markdown) == (out.traces, out.markdown)
    assert out.markdown.startswith("# Scripted router on real NQ questions (replay pool)\n")
    assert f"| pool snapshot / prices | {pool.snapshot_id} / {pool.pricing.id} |" in out.markdown


def test_route_samples_rejects_a_demo_model_not_in_the_pool(repo_root, shared_data, pool) -> None:
    import pytest

    params = load_params(repo_root / "params.yaml")
    params = params.model_copy(update={"demo": params.demo.model_copy(update={"route_to": ("GPT-9",)})})
    with pytest.raises(KeyError, match=r"^\"'GPT-9' is not in pool "):
        run(params, Inputs(pool, shared_data))
