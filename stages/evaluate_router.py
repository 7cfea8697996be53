"""Stage: evaluate the trained router against baselines, per benchmark, in dollars.

`python -m stages.evaluate_router`. On the test split (seven benchmarks): the router (decoding
from params, recorded with the results), each single candidate called once, random, cheapest,
most expensive, the oracle (cheapest candidate that answers correctly; an upper bound) and a kNN
router over sentence embeddings fitted on the train split. Writes per-question trajectories
(parquet), metrics (DVC metrics), a markdown report and a Pareto plot. Candidate failures are
counted, never fatal. `routerops eval reprice --pool NEW.yaml` re-costs it all with no call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from routerops.candidates.budget import RequestBudget
from routerops.candidates.types import CallContext, CandidateBackend, CandidateReply, QuestionInfo
from routerops.config import EvaluateRouterParams, Params, load_params
from routerops.evaluation import (
    Call,
    EvalRecord,
    SystemMetrics,
    aggregate,
    baseline_choice,
    oracle_choice,
    paired_difference,
)
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import default_pool_file, project_root
from routerops.policy import extract_reply_answer
from routerops.policy_server import CompletionsPolicy, PolicyServerConfig
from routerops.pool import Pool, load_pool
from routerops.protocol import check_format
from routerops.report import pareto_plot, render_report
from routerops.rollout import RolloutLimits, Trajectory, run_episode
from routerops.runtime import Backends, build_backend, encode_prompt

BASELINES = ("random", "cheapest", "most_expensive")


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    dataset_dir: Path
    router_dir: Path
    data_dir: Path  # the raw snapshot (replay matrix under pool/)


def questions_of(path: Path) -> list[QuestionInfo]:
    rows = pq.read_table(path).to_pylist()
    return [QuestionInfo(r["extra_info"]["id"], r["extra_info"]["question"], r["data_source"],
                         tuple(r["reward_model"]["ground_truth"])) for r in rows]


def _call(result: Any) -> Call:
    if isinstance(result, CandidateReply):
        return Call(result.model, True, result.completion_tokens, result.prompt_tokens, result.latency_s,
                    None, result.origin)
    return Call(result.model, False, 0, 0, result.latency_s, f"{result.kind.value}: {result.detail}", "failure")


async def single_calls(questions: Sequence[QuestionInfo], pool: Pool, backend: CandidateBackend,
                       concurrency: int, desc: str, progress: bool) -> dict[str, dict[str, EvalRecord]]:
    """Each candidate called once per question with the question itself: {question id: {model: record}}."""
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(questions) * len(pool), desc=desc, disable=not progress, leave=False)

    async def one(q: QuestionInfo, model: str) -> EvalRecord:
        async with sem:
            start = time.perf_counter()
            res = await backend.call(pool.get(model), q.text, CallContext(question=q, budget=RequestBudget(None)))
            bar.update(1)
        answer = extract_reply_answer(res.text) if isinstance(res, CandidateReply) else None
        text = res.text if isinstance(res, CandidateReply) else ""
        return EvalRecord(f"single:{model}", q.id, q.data_source, q.text, q.golden_answers, answer, True,
                          (_call(res),), time.perf_counter() - start, text)

    recs = await asyncio.gather(*(one(q, m) for q in questions for m in pool.names))
    bar.close()
    out: dict[str, dict[str, EvalRecord]] = {}
    for r in recs:
        out.setdefault(r.question_id, {})[r.system.split(":", 1)[1]] = r
    return out


def policy_generator(params: Params, ep: EvaluateRouterParams, router_dir: Path,
                     environ: Mapping[str, str] | None = None) -> tuple[Any, Any, CompletionsPolicy | None]:
    """(generator, tokenizer, closable client) for the profile's policy backend."""
    from transformers import AutoTokenizer

    kind = ep.policy.get(params.profile)
    if kind is None:
        raise ValueError(f"evaluate_router.policy has no entry for profile {params.profile!r}")
    if not (router_dir / "config.json").is_file():
        raise FileNotFoundError(f"{router_dir}: no trained router (config.json missing); run train_router first")
    greedy = ep.decoding == "greedy"
    if kind == "transformers":
        import torch

        from routerops.training.tiny_policy import BatchedGenerator, load_policy

        torch.manual_seed(ep.seed)
        model, tok = load_policy(router_dir)
        return (BatchedGenerator(model, tok, greedy=greedy, temperature=ep.temperature, top_p=ep.top_p,
                                 max_batch=ep.concurrency), tok, None)
    env = os.environ if environ is None else environ
    base_url = env.get(ep.policy_base_url_env, "")
    if not base_url:
        raise ValueError(f"evaluate_router.policy is 'completions' for profile {params.profile!r}: set "
                         f"{ep.policy_base_url_env} to the router server's base URL (ending in /v1)")
    tok = AutoTokenizer.from_pretrained(router_dir, local_files_only=True)
    client = CompletionsPolicy(PolicyServerConfig(
        base_url=base_url, model=ep.policy_model or str(router_dir), api_key=env.get(ep.policy_api_key_env) or None,
        greedy=greedy, temperature=ep.temperature, top_p=ep.top_p, seed=ep.seed,
        max_connections=ep.concurrency), tok)
    return client, tok, client


def episode_limits(params: Params) -> RolloutLimits:
    """The tiny local policy writes short turns (its own cap); a verl-trained router has Router-R1's."""
    tp = params.require("train_router")
    if tp.backend == "local":
        from routerops.training.local_backend import _limits

        return _limits(params, tp.local)
    r = params.rollout
    return RolloutLimits(r.max_turns, r.max_tokens_per_turn, r.max_obs_tokens, r.max_prompt_tokens,
                         r.max_context_tokens)


async def router_records(questions: Sequence[QuestionInfo], params: Params, ep: EvaluateRouterParams, pool: Pool,
                         router_dir: Path, backends: Backends, progress: bool) -> list[EvalRecord]:
    gen, tok, client = policy_generator(params, ep, router_dir)
    try:
        return await _router_episodes(questions, params, ep, pool, gen, tok, backends, progress)
    finally:
        if client is not None:
            await client.aclose()


async def _router_episodes(questions: Sequence[QuestionInfo], params: Params, ep: EvaluateRouterParams, pool: Pool,
                           gen: Any, tok: Any, backends: Backends, progress: bool) -> list[EvalRecord]:
    limits = episode_limits(params)
    sem = asyncio.Semaphore(ep.concurrency)
    bar = tqdm(total=len(questions), desc="router", disable=not progress, leave=False)

    async def one(q: QuestionInfo) -> EvalRecord:
        async with sem:
            start = time.perf_counter()
            t: Trajectory = await run_episode(q, encode_prompt(q.text, pool, tok, params), generator=gen,
                                              tokenizer=tok, pool=pool, backend=backends.backend, limits=limits,
                                              budget=RequestBudget(params.candidates.request_budget_usd,
                                                                   backends.run_budget))
            bar.update(1)
        calls = tuple(Call(c.model, c.ok, c.completion_tokens, c.prompt_tokens, c.latency_s, c.failure, c.origin)
                      for c in t.calls)
        return EvalRecord("router", q.id, q.data_source, q.text, q.golden_answers, t.answer,
                          check_format(t.segments, pool).valid, calls, time.perf_counter() - start, t.response_text)

    recs = list(await asyncio.gather(*(one(q) for q in questions)))
    bar.close()
    return recs


def _renamed(r: EvalRecord, system: str) -> EvalRecord:
    return EvalRecord(system, r.question_id, r.data_source, r.question, r.golden_answers, r.answer, r.format_valid,
                      r.calls, r.latency_s, r.response)


def run(params: Params, inputs: Inputs, progress: bool = False) -> dict[str, Any]:
    ep: EvaluateRouterParams = params.require("evaluate_router")
    pool = inputs.pool
    test = questions_of(inputs.dataset_dir / "rl" / "test.parquet")
    train = questions_of(inputs.dataset_dir / "rl" / "train.parquet")[: ep.knn_train_questions]
    backends = build_backend(params.candidates, distractor_questions=[*test, *train], data_dir=inputs.data_dir)

    async def go() -> tuple[list[EvalRecord], dict[str, dict[str, EvalRecord]], dict[str, dict[str, EvalRecord]]]:
        try:
            router = await router_records(test, params, ep, pool, inputs.router_dir, backends, progress)
            singles = await single_calls(test, pool, backends.backend, ep.concurrency, "baselines", progress)
            knn_train = await single_calls(train, pool, backends.backend, ep.concurrency, "knn fit", progress)
            return router, singles, knn_train
        finally:
            await backends.aclose()

    router, singles, knn_train = asyncio.run(go())
    records = list(router)
    for q in test:
        per = singles[q.id]
        records.extend(per.values())
        for kind in BASELINES:
            records.append(_renamed(per[baseline_choice(kind, pool, q.id, ep.seed)], kind))
        records.append(_renamed(per[oracle_choice(per, pool)], "oracle"))

    from routerops.knn_router import KnnRouter, load_encoder

    knn = KnnRouter(load_encoder(), k=ep.knn_k, cost_weight=ep.knn_cost_weight).fit(
        [q.text for q in train],
        [{m: (r.em, r.cost_usd(pool)) for m, r in knn_train[q.id].items()} for q in train])
    for q, pick in zip(test, knn.route([q.text for q in test]), strict=True):
        records.append(_renamed(singles[q.id][pick], "knn"))

    metrics = aggregate(records, pool, params.rewards.include_prompt_cost)
    stats = backends.replay.stats.summary() if backends.replay else {}
    differences = [paired_difference(records, pool, "router", b, samples=ep.bootstrap_samples,
                                     confidence=ep.confidence, seed=ep.seed,
                                     include_prompt=params.rewards.include_prompt_cost)
                   for b in comparison_baselines(metrics)]
    return {"records": records, "metrics": metrics, "replay": stats, "differences": differences,
            "decoding": {"mode": ep.decoding, "seed": ep.seed, "temperature": ep.temperature, "top_p": ep.top_p}}


def comparison_baselines(metrics: Sequence[SystemMetrics]) -> list[str]:
    """The baselines the router is tested against: the fixed ones, kNN, and every single candidate
    on the singles' Pareto front (no other single is at least as accurate and as cheap): those are
    the ones to beat before a router is worth deploying. A single whose averages equal a fixed
    baseline's (cheapest is one of the singles) is not listed twice."""
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    if "router" not in avg:
        return []
    fixed = [s for s in ("random", "cheapest", "most_expensive", "knn") if s in avg]
    singles = [m for s, m in avg.items() if s.startswith("single:")]
    front = [m for m in singles
             if not any(o.em >= m.em and o.usd_per_question <= m.usd_per_question
                        and (o.em, o.usd_per_question) != (m.em, m.usd_per_question) for o in singles)]
    seen = {(avg[s].em, avg[s].usd_per_question) for s in fixed}
    return fixed + [m.system for m in sorted(front, key=lambda m: m.usd_per_question)
                    if (m.em, m.usd_per_question) not in seen]


def _metric_values(m: SystemMetrics) -> dict[str, Any]:
    return {k: v for k, v in asdict(m).items() if k not in ("system", "data_source")}


def write(result: dict[str, Any], pool: Pool, out_dir: Path, metrics_path: Path) -> Path:
    records: list[EvalRecord] = result["records"]
    metrics = result["metrics"]
    with atomic_dir(out_dir) as tmp:
        pq.write_table(pa.Table.from_pylist([r.as_row() for r in records]), tmp / "trajectories.parquet")
        pareto_plot(metrics, tmp / "pareto.png", title=f"EM vs cost (pool {pool.pricing.label})")
        (tmp / "report.md").write_text(render_report(metrics, pool, result["decoding"], result["replay"],
                                                     plot="pareto.png", differences=result.get("differences", ())))
    per_benchmark: dict[str, dict[str, dict[str, Any]]] = {}
    for m in metrics:
        if m.data_source != "average":
            per_benchmark.setdefault(m.system, {})[m.data_source] = _metric_values(m)
    write_json_atomic(metrics_path, {
        "decoding": result["decoding"], "replay": result["replay"], "pool_snapshot": pool.snapshot_id,
        "average": {m.system: _metric_values(m) for m in metrics if m.data_source == "average"},
        "per_benchmark": per_benchmark,
        "router_minus": {d.baseline: {"em": d.em, "em_ci": list(d.em_ci), "usd_per_question": d.usd_per_question,
                                      "usd_ci": list(d.usd_ci), "confidence": d.confidence}
                         for d in result.get("differences", ())},
    })
    return out_dir / "report.md"


def main() -> None:
    root = project_root()
    params = load_params(root / "params.yaml")
    ep = params.require("evaluate_router")
    bp = params.require("build_dataset")
    inputs = Inputs(load_pool(default_pool_file()), root / bp.out_dir, root / params.require("train_router").out_dir,
                    root / bp.raw_dir)
    result = run(params, inputs, progress=True)
    report = write(result, inputs.pool, root / ep.out_dir, root / ep.metrics)
    sys.stdout.write(report.read_text() + f"\nreport: {report}\nPareto plot: {report.parent / 'pareto.png'}\n")


if __name__ == "__main__":
    main()
