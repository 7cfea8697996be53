"""Stage: evaluate the trained router against baselines, per benchmark, in dollars.

`python -m stages.evaluate_router`. On the test split (seven benchmarks): the router (decoding
from params, recorded with the results), each single candidate called once, random, cheapest,
most expensive, the oracle (cheapest candidate that answers correctly; an upper bound) and a kNN
router over sentence embeddings fitted on the train split. Writes per-question trajectories
(parquet), metrics with the verdict (DVC metrics), a markdown report, a short summary and a
Pareto plot, and the kNN baseline's fit evidence (`knn_fit.parquet`, `knn.json`). Candidate
failures are counted, never fatal. `routerops eval reprice --pool NEW.yaml` re-costs it all with no
call, the price-based baselines choosing again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routerops.behaviour import router_behaviour
from routerops.candidates.budget import RequestBudget, RunBudget
from routerops.candidates.replay import QualityMatrix, ReplayStats
from routerops.candidates.types import CallContext, CallTask, CandidateBackend, CandidateReply, QuestionInfo
from routerops.config import Params, load_params
from routerops.evaluation import (
    Call,
    Decoding,
    EvalRecord,
    KnnEvidence,
    PairedDifference,
    SystemMetrics,
    Verdict,
    aggregate,
    comparison_baselines,
    direct_answer,
    paired_difference,
    provenance,
    verdict,
    with_baselines,
)
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.policy import build_policy
from routerops.pool import Pool, load_pool
from routerops.progress import progress
from routerops.protocol import check_format
from routerops.report import pareto_plot, render_report, render_summary
from routerops.rl_dataset import read_questions
from routerops.rollout import run_episode
from routerops.runtime import Backends, build_backend, encode_prompt

__all__ = ["Inputs", "Outputs", "main", "run", "single_calls", "write"]


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    dataset_dir: Path
    router_dir: Path
    data_dir: Path  # the raw snapshot (replay matrix under pool/)

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(load_pool(default_pool_file()), root / params.build_dataset.out_dir,
                   root / params.train_router.out_dir, root / params.build_dataset.raw_dir)


@dataclass(frozen=True)
class Outputs:
    records: tuple[EvalRecord, ...]
    metrics: tuple[SystemMetrics, ...]
    differences: tuple[PairedDifference, ...]
    verdict: Verdict | None
    replay: Mapping[str, object]  # ReplayStats.summary() of the run ({} for HTTP candidates)
    decoding: Decoding
    pool: Pool
    knn: KnnEvidence
    provenance: Mapping[str, Mapping[str, int]]  # phase -> calls per origin (`evaluation.provenance`)
    slice_records: tuple[EvalRecord, ...] = ()  # the held-out matrix slice, apart from `records`
    slice_metrics: tuple[SystemMetrics, ...] = ()
    slice_provenance: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


async def single_calls(questions: Sequence[QuestionInfo], pool: Pool, backend: CandidateBackend,
                       concurrency: int, desc: str, run_budget: RunBudget | None = None
                       ) -> dict[str, dict[str, EvalRecord]]:
    """Each candidate called once per question with the question itself, asked for a short answer
    (`CallTask.DIRECT`), its answer read by `direct_answer`: {question id: {model: record}}.
    Every call counts against `run_budget` (the run's, shared with the router's episodes); once it
    is spent the rest are refused (failure `budget`, no cost)."""
    sem = asyncio.Semaphore(concurrency)
    bar = progress(len(questions) * len(pool), desc)

    async def one(q: QuestionInfo, model: str) -> EvalRecord:
        async with sem:
            start = time.perf_counter()
            res = await backend.call(pool.get(model), q.text, CallContext(
                question=q, budget=RequestBudget(None, run_budget), task=CallTask.DIRECT))
            bar.update(1)
        answer = direct_answer(res.text) if isinstance(res, CandidateReply) else None
        text = res.text if isinstance(res, CandidateReply) else ""
        return EvalRecord(f"single:{model}", q.id, q.data_source, q.text, q.golden_answers, answer, True,
                          (Call.of_result(res),), time.perf_counter() - start, text)

    recs = await asyncio.gather(*(one(q, m) for q in questions for m in pool.names))
    bar.close()
    out: dict[str, dict[str, EvalRecord]] = {}
    for r in recs:
        out.setdefault(r.question_id, {})[r.system.split(":", 1)[1]] = r
    return out


async def _router_records(questions: Sequence[QuestionInfo], params: Params, pool: Pool, router_dir: Path,
                          backends: Backends, desc: str = "router") -> list[EvalRecord]:
    if not questions:
        return []
    gen, tok, client = build_policy(params, router_dir)
    limits = params.router_limits()
    sem = asyncio.Semaphore(params.evaluate_router.concurrency)
    bar = progress(len(questions), desc)

    async def one(q: QuestionInfo) -> EvalRecord:
        async with sem:
            start = time.perf_counter()
            t = await run_episode(q, encode_prompt(q.text, pool, tok, params), generator=gen, tokenizer=tok,
                                  pool=pool, backend=backends.backend, limits=limits,
                                  budget=backends.request_budget(params.candidates.request_budget_usd))
            bar.update(1)
        return EvalRecord("router", q.id, q.data_source, q.text, q.golden_answers, t.answer,
                          check_format(t.segments, pool, limits.rules).valid, tuple(Call.of_record(c) for c in t.calls),
                          time.perf_counter() - start, t.response_text, t.reencoded_turns)

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        bar.close()
        if client is not None:
            await client.aclose()


def run(params: Params, inputs: Inputs) -> Outputs:
    ep = params.evaluate_router
    pool = inputs.pool
    test = read_questions(inputs.dataset_dir, "test")
    train = read_questions(inputs.dataset_dir, "train")[: ep.knn_train_questions]
    held_out = QualityMatrix.load(inputs.data_dir / "pool").held_out() if ep.matrix_slice else []
    backends = build_backend(params.candidates, data_dir=inputs.data_dir, distractor_questions=[*test, *train])
    Singles = dict[str, dict[str, EvalRecord]]

    async def go() -> tuple[list[EvalRecord], Singles, Singles, list[EvalRecord], Singles]:
        try:
            router = await _router_records(test, params, pool, inputs.router_dir, backends)
            singles = await single_calls(test, pool, backends.backend, ep.concurrency, "baselines", backends.run_budget)
            knn_train = await single_calls(train, pool, backends.backend, ep.concurrency, "knn fit",
                                           backends.run_budget)
            slice_router = await _router_records(held_out, params, pool, inputs.router_dir, backends, "matrix slice")
            slice_singles = await single_calls(held_out, pool, backends.backend, ep.concurrency,
                                               "matrix slice baselines", backends.run_budget)
            return router, singles, knn_train, slice_router, slice_singles
        finally:
            await backends.aclose()

    router, singles, knn_train, slice_router, slice_singles = asyncio.run(go())

    from routerops.knn_router import KnnRouter, load_encoder

    # The embeddings only find each test question's neighbours; the choice among candidates is
    # made from the neighbours' single calls under the pool's prices, so repricing re-makes it.
    knn = KnnRouter(load_encoder(), k=ep.knn_k, cost_weight=ep.knn_cost_weight).fit(
        [q.text for q in train],
        [{m: (r.em, r.cost_usd(pool)) for m, r in knn_train[q.id].items()} for q in train])
    evidence = KnnEvidence(ep.knn_cost_weight, tuple(knn_train[q.id] for q in train),
                           dict(zip((q.id for q in test), knn.nearest([q.text for q in test]), strict=True)))
    slice_evidence = KnnEvidence(ep.knn_cost_weight, evidence.train, dict(zip(
        (q.id for q in held_out), knn.nearest([q.text for q in held_out]) if held_out else [], strict=True)))
    include_prompt = params.rewards.include_prompt_cost
    records = with_baselines([*router, *(r for q in test for r in singles[q.id].values())], pool, seed=ep.seed,
                             knn=evidence, include_prompt=include_prompt)
    metrics = aggregate(records, pool, include_prompt)
    meta = inputs.router_dir / "routerops.json"
    trained = json.loads(meta.read_text()).get("provenance") if meta.is_file() else None
    phases = {"training": trained,
              "router": provenance(c for r in router for c in r.calls),
              "baselines": provenance(c for q in test for r in singles[q.id].values() for c in r.calls),
              "knn fit": provenance(c for q in train for r in knn_train[q.id].values() for c in r.calls)}
    differences = [paired_difference(records, pool, "router", b, samples=ep.bootstrap_samples,
                                     confidence=ep.confidence, seed=ep.seed, include_prompt=include_prompt)
                   for b in comparison_baselines(metrics)]
    slice_records = with_baselines([*slice_router, *(r for q in held_out for r in slice_singles[q.id].values())], pool,
                                   seed=ep.seed, knn=slice_evidence, include_prompt=include_prompt)
    slice_phases = {"router": provenance(c for r in slice_router for c in r.calls),
                    "baselines": provenance(c for q in held_out for r in slice_singles[q.id].values() for c in r.calls)}
    stats: ReplayStats | None = backends.replay.stats if backends.replay else None
    return Outputs(tuple(records), tuple(metrics), tuple(differences), verdict(metrics, differences),
                   stats.summary() if stats else {}, Decoding(ep.decoding, ep.seed, ep.temperature, ep.top_p), pool,
                   evidence, {k: v for k, v in phases.items() if v is not None}, tuple(slice_records),
                   tuple(aggregate(slice_records, pool, include_prompt)) if held_out else (),
                   slice_phases if held_out else {})


def _metric_values(m: SystemMetrics) -> dict[str, Any]:
    return {k: v for k, v in asdict(m).items() if k not in ("system", "data_source")}


def _per_benchmark(metrics: Sequence[SystemMetrics]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in metrics:
        if m.data_source != "average":
            out.setdefault(m.system, {})[m.data_source] = _metric_values(m)
    return out


def metrics_json(out: Outputs) -> dict[str, Any]:
    """metrics/evaluation.json: every metric per system, averaged and per benchmark, the
    router-minus-baseline intervals and the verdict."""
    per_benchmark = _per_benchmark(out.metrics)
    return {
        "decoding": asdict(out.decoding), "replay": dict(out.replay), "provenance": dict(out.provenance),
        "pool_snapshot": out.pool.snapshot_id,
        "average": {m.system: _metric_values(m) for m in out.metrics if m.data_source == "average"},
        "per_benchmark": per_benchmark,
        "router_minus": {d.baseline: {"em": d.em, "em_ci": list(d.em_ci), "usd_per_question": d.usd_per_question,
                                      "usd_ci": list(d.usd_ci), "confidence": d.confidence}
                         for d in out.differences},
        "verdict": None if out.verdict is None else out.verdict.as_dict(),
        # copy fidelity and multi-round routing of the router's test episodes (routerops.behaviour)
        "router_behaviour": router_behaviour(out.records).as_dict(),
        # the held-out matrix slice: apart, never in the averages above
        "matrix_slice": None if not out.slice_metrics else {
            "average": {m.system: _metric_values(m) for m in out.slice_metrics if m.data_source == "average"},
            "per_benchmark": _per_benchmark(out.slice_metrics), "provenance": dict(out.slice_provenance)},
    }


def write(out: Outputs, out_dir: Path, metrics_path: Path) -> None:
    """Trajectories, plot, report and summary in one atomically swapped directory; metrics after."""
    pool = out.pool
    with atomic_dir(out_dir) as tmp:
        pq.write_table(pa.Table.from_pylist([r.as_row() for r in out.records]), tmp / "trajectories.parquet")
        out.knn.write(tmp)
        if out.slice_records:
            pq.write_table(pa.Table.from_pylist([r.as_row() for r in out.slice_records]), tmp / "matrix_slice.parquet")
        pareto_plot(out.metrics, tmp / "pareto.png", title=f"EM vs cost (pool {pool.pricing.label})")
        (tmp / "report.md").write_text(render_report(out.metrics, pool, out.decoding, out.provenance,
                                                     plot="pareto.png", differences=out.differences,
                                                     verdict=out.verdict, matrix_slice=out.slice_metrics,
                                                     slice_provenance=out.slice_provenance))
        (tmp / "summary.md").write_text(render_summary(out.metrics, pool, out.decoding, out.provenance,
                                                       differences=out.differences, verdict=out.verdict,
                                                       matrix_slice=out.slice_metrics,
                                                       slice_provenance=out.slice_provenance)
                                        + "\nBeside this file: the full report `report.md` and the Pareto plot "
                                          "`pareto.png`.\n")
    write_json_atomic(metrics_path, metrics_json(out))


def main() -> None:
    root = project_root()
    params = load_params(default_params_file())
    out = run(params, Inputs.of_project(root, params))
    ep = params.evaluate_router
    write(out, root / ep.out_dir, root / ep.metrics)
    sys.stdout.write((root / ep.out_dir / "summary.md").read_text())


if __name__ == "__main__":
    main()
