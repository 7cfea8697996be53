from __future__ import annotations

import asyncio
import json

import pyarrow.parquet as pq
import pytest

from routerops.candidates.budget import RunBudget
from routerops.candidates.client import ClientConfig, OpenAIChatClient
from routerops.candidates.replay import QualityMatrix, ReplayPool
from routerops.candidates.types import CallOrigin, FailureKind, QuestionInfo
from routerops.evaluation import (
    Decoding,
    EvalRecord,
    KnnEvidence,
    aggregate,
    provenance,
    reprice_records,
    verdict,
    with_baselines,
)
from routerops.pool import parse_pool
from routerops.testing.fakeserver import FakeOpenAIServer, Fault
from stages.evaluate_router import Outputs, single_calls, write

QUESTIONS = [QuestionInfo(f"nq:test:{i}", f"who wrote book number {i}?", "nq", (f"Author {i}",)) for i in range(8)]


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    async def call(self, candidate, query, context=None):
        self.calls += 1
        return await self.inner.call(candidate, query, context)


def records(singles) -> list[EvalRecord]:
    return [r for per in singles.values() for r in per.values()]


def test_reprice_equals_a_fresh_evaluation_with_zero_calls(pool, shared_data) -> None:
    matrix = QualityMatrix.load(shared_data / "pool")
    raw = pool.model_dump(mode="json")
    raw["pricing"]["prices"] = {c.name: {"input_usd_per_mtok": c.price.input_usd_per_mtok * 3,
                                         "output_usd_per_mtok": c.price.output_usd_per_mtok * 3} for c in pool}
    for c in raw["candidates"]:
        c.pop("price")
    raw["pricing"].pop("id")
    new_pool = parse_pool({"pricing": raw["pricing"], "candidates": raw["candidates"]})

    old_backend = Counting(ReplayPool(matrix, seed=0))
    old = records(asyncio.run(single_calls(QUESTIONS, pool, old_backend, 8, "t")))
    assert old_backend.calls == len(QUESTIONS) * len(pool)
    fresh_backend = Counting(ReplayPool(matrix, seed=0))
    fresh = records(asyncio.run(single_calls(QUESTIONS, new_pool, fresh_backend, 8, "t")))

    repriced = reprice_records(old, new_pool, seed=0)  # takes no backend at all: zero calls by construction
    expected = aggregate(with_baselines(fresh, new_pool, seed=0), new_pool)
    def comparable(ms):  # everything but wall-clock latency, which is measured, not computed
        return sorted((m.system, m.data_source, m.questions, m.em, m.f1, m.format_valid, m.usd_per_question,
                       m.calls_per_question, tuple(m.call_share.items()), m.candidate_failures) for m in ms)

    assert comparable(repriced) == comparable(expected)
    before = {(m.system, m.data_source): m.usd_per_question for m in aggregate(with_baselines(old, pool, seed=0), pool)}
    assert all(m.usd_per_question == pytest.approx(3 * before[(m.system, m.data_source)]) for m in repriced)
    assert min(before.values()) > 0  # every single call is paid, so tripled prices show


def test_candidate_outage_is_counted_and_outputs_are_written(pool, tmp_path) -> None:
    # One candidate's endpoint answers 503 to every request; the others answer normally.
    def fault(req):
        return Fault.http_status(503) if req.model == pool.get("Mixtral-8x22B-Instruct").provider_model_id else None

    with FakeOpenAIServer(on_request=fault) as server:
        async def go():
            client = OpenAIChatClient(ClientConfig(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02,
                                                   read_timeout_s=2), base_url=server.base_url, api_key="k")
            try:
                return await single_calls(QUESTIONS, pool, client, 8, "t")
            finally:
                await client.aclose()

        singles = asyncio.run(go())
    recs = records(singles)
    avg = {m.system: m for m in aggregate(recs, pool) if m.data_source == "average"}
    assert avg["single:Mixtral-8x22B-Instruct"].candidate_failures == len(QUESTIONS)
    assert avg["single:Mixtral-8x22B-Instruct"].usd_per_question == 0.0
    assert avg["single:Qwen2.5-7B-Instruct"].candidate_failures == 0
    failed = next(r for r in recs if r.system == "single:Mixtral-8x22B-Instruct")
    call = failed.calls[0]
    assert (call.origin, call.failure, call.ok, failed.answer) == (CallOrigin.FAILED, FailureKind.HTTP_STATUS,
                                                                    False, None)

    metrics = tuple(aggregate(recs, pool))
    out = Outputs(tuple(recs), metrics, (), verdict(metrics), {}, Decoding("greedy", 0, 1.0, 0.95), pool,
                  KnnEvidence(0.5, (), {}), {"baselines": provenance(c for r in recs for c in r.calls)})
    write(out, tmp_path / "evaluation", tmp_path / "metrics.json")
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "| single:Mixtral-8x22B-Instruct | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | 0.0 | 0.00 |" in report
    assert (tmp_path / "evaluation" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "evaluation" / "summary.md").read_text()
    assert summary.startswith("# Router evaluation") and "Exact match per benchmark" not in summary
    assert pq.read_table(tmp_path / "evaluation" / "trajectories.parquet").num_rows == len(recs)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["average"]["single:Mixtral-8x22B-Instruct"]["candidate_failures"] == len(QUESTIONS)
    nq = metrics["per_benchmark"]["single:Qwen2.5-7B-Instruct"]["nq"]
    assert nq["questions"] == len(QUESTIONS) and nq["call_share"] == {"Qwen2.5-7B-Instruct": 1.0}
    assert nq["candidate_failures"] == 0
    assert set(nq) == {"questions", "em", "f1", "format_valid", "usd_per_question", "calls_per_question", "em_any_format", "contains_gold",
                       "call_share", "latency_p50_s", "latency_p95_s", "candidate_failures"}
    assert metrics["verdict"] is None and metrics["router_minus"] == {}  # no router was evaluated


def test_baseline_calls_count_against_the_runs_budget(pool, shared_data) -> None:
    # The run's ledger is shared with the router's episodes: here they already spent it all but a
    # hair, so the first baseline call goes ahead (the budget refuses once spent >= limit) and
    # every later one is refused, costs nothing and says why.
    run = RunBudget(1e-3)
    run.charge(1e-3 - 1e-12)
    singles = asyncio.run(single_calls(QUESTIONS[:2], pool, ReplayPool(QualityMatrix.load(shared_data / "pool"), seed=0),
                                       1, "t", run))
    calls = [r.calls[0] for per in singles.values() for r in per.values()]
    assert [c.ok for c in calls].count(True) == 1 and len(calls) == 2 * len(pool)
    refused = [c for c in calls if not c.ok]
    assert {(c.origin, c.failure) for c in refused} == {(CallOrigin.FAILED, FailureKind.BUDGET)}
    assert all(c.failure_detail.startswith("run budget spent: $0.001") for c in refused)
    assert run.calls == 2 and run.refusals == len(refused)
