"""Evaluation throughput against a loopback candidate server with fixed latency.

Two paths of `stages.evaluate_router`: the baselines (each candidate called once per question)
and router episodes (a scripted router, one call per question, so the number measured is the
evaluation machinery's, not a policy's generation speed). The ideal is concurrency / latency
calls per second, divided by calls per question. Prints a markdown table.

Two processes share the machine's cores (the client and the server), so at high concurrency the
run is CPU-bound and noisy: each row is the median of --repeats runs, with the range beside it.

Usage: python bench/evaluate.py [--latency 0.05] [--questions 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routerops.candidates.budget import RequestBudget  # noqa: E402
from routerops.candidates.client import ClientConfig, OpenAIChatClient  # noqa: E402
from routerops.candidates.types import QuestionInfo  # noqa: E402
from routerops.config import load_params  # noqa: E402
from routerops.policy import ScriptedRouter  # noqa: E402
from routerops.pool import Pool, load_pool  # noqa: E402
from routerops.rollout import RolloutLimits, run_episodes  # noqa: E402
from routerops.testing.fakeserver import subprocess_server  # noqa: E402
from routerops.tokens import ByteTokenizer  # noqa: E402
from stages.evaluate_router import single_calls  # noqa: E402


async def time_baselines(url: str, cfg: ClientConfig, pool: Pool, qs: list[QuestionInfo], concurrency: int) -> float:
    async with OpenAIChatClient(cfg, base_url=url, api_key="k") as client:
        start = time.perf_counter()
        await single_calls(qs, pool, client, concurrency, "bench")
        return time.perf_counter() - start


async def time_episodes(url: str, cfg: ClientConfig, pool: Pool, qs: list[QuestionInfo], concurrency: int,
                        limits: RolloutLimits) -> float:
    tok = ByteTokenizer()
    router = ScriptedRouter(tok, ["Qwen2.5-7B-Instruct"])
    items = [(q, tok.encode(f"Question: {q.text}\n")) for q in qs]
    async with OpenAIChatClient(cfg, base_url=url, api_key="k") as client:
        start = time.perf_counter()
        await run_episodes(items, concurrency=concurrency, budgets=[RequestBudget(None)] * len(items),
                           generator=router, tokenizer=tok, pool=pool, backend=client, limits=limits)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.latency <= 0 or args.questions < 1 or args.repeats < 1:
        ap.error("--latency must be > 0, --questions and --repeats >= 1")
    pool = load_pool(ROOT / "pool.yaml")
    limits = load_params(ROOT / "params.yaml").rollout.limits()  # the project's episode limits
    rows = []
    with subprocess_server(args.latency) as url:
        for concurrency in (8, 32, 64):
            cfg = ClientConfig(max_concurrency=concurrency, read_timeout_s=10)
            n = max(concurrency * 4, args.questions // len(pool))
            qs = [QuestionInfo(f"q{i}", f"benchmark question {i}?", "nq", ("a",)) for i in range(n)]
            runs = [asyncio.run(time_baselines(url, cfg, pool, qs, concurrency)) for _ in range(args.repeats)]
            rows.append(("baselines (6 calls/question)", concurrency, n, runs,
                         concurrency / args.latency / len(pool)))
            rq = [QuestionInfo(f"r{i}", f"benchmark question {i}?", "nq", ("a",)) for i in range(args.questions)]
            runs = [asyncio.run(time_episodes(url, cfg, pool, rq, concurrency, limits)) for _ in range(args.repeats)]
            rows.append(("router episodes (1 call/question)", concurrency, len(rq), runs, concurrency / args.latency))

    print(f"candidate server latency {args.latency * 1000:.0f} ms (loopback, separate process); "
          f"{len(pool)} candidates; median of {args.repeats} runs\n")
    print("| path | concurrency | questions | seconds | questions/s | ideal questions/s | efficiency % (range) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, c, n, runs, ideal in rows:
        secs = statistics.median(runs)
        lo, hi = 100 * n / max(runs) / ideal, 100 * n / min(runs) / ideal
        print(f"| {path} | {c} | {n} | {secs:.2f} | {n / secs:.1f} | {ideal:.1f} | "
              f"{100 * n / secs / ideal:.1f} ({lo:.0f}-{hi:.0f}) |")


if __name__ == "__main__":
    main()
