"""The packaged router over HTTP against the same router in process: latency, throughput, overhead.

    python bench/service.py [--project DIR] [--questions 96] [--concurrency 8 32] [--warmup 4]

Both sides run the package `make demo` built (`artifacts/package`, imported into the project's
BentoML store when missing): the same policy, the same replay pool, the same questions (the
package's evaluation questions, in order) and greedy decoding, so both run the same episodes; the
bench checks that every answer and bill agree before it prints a number.

- in process: `routerops.serving.Router.answer`, the episode loop the service runs, awaited here.
- service: `bentoml serve` of the Bento in its own process, auth on (a temporary key), asked with
  an async httpx client over loopback.

Rows: p50/p95 latency at concurrency 1 (one request at a time, every question), episodes per
second at each `--concurrency` (every question, that many in flight), and the service's
overhead per request at concurrency 1: what a client waits beyond the episode the service timed
for that same request (its `Server-Timing` header): HTTP both ways, JSON, auth, the key's
charge, metrics. The paired difference of the two sides' latencies is printed too; it also
carries the episodes' own run-to-run noise (a few ms on this machine). Client and server share
the machine's cores with the policy, so at high concurrency the HTTP side also pays for the
client's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.config import load_params  # noqa: E402
from routerops.keys import KeyStore  # noqa: E402
from routerops.packaging import RECORD_FILE, PackageRecord, bentoml_home, load_package  # noqa: E402
from routerops.service_process import ServiceProcess, import_package  # noqa: E402
from routerops.serving import KEYS_DB_ENV, Router  # noqa: E402

Ask = Callable[[str], Awaitable[tuple[str, float]]]  # question -> (answer, bill total USD)


@dataclass(frozen=True)
class Run:
    latencies_s: tuple[float, ...]  # per question, in question order
    wall_s: float
    outcomes: tuple[tuple[str, float], ...]
    mean_batch: float = 0.0  # episodes per policy forward batch during the run

    @property
    def episodes_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s


def quantile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(ask: Ask, questions: Sequence[str], concurrency: int) -> Run:
    gate = asyncio.Semaphore(concurrency)
    latencies = [0.0] * len(questions)
    outcomes: list[tuple[str, float]] = [("", 0.0)] * len(questions)

    async def one(i: int, q: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            outcomes[i] = await ask(q)
            latencies[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    return Run(tuple(latencies), time.perf_counter() - t0, tuple(outcomes))


BatchStats = Callable[[], Awaitable[tuple[float, float]]]  # -> (batches run, episodes in them) so far


async def bench_side(ask: Ask, questions: Sequence[str], levels: Sequence[int], warmup: int,
                     batch_stats: BatchStats) -> dict[int, Run]:
    await measure(ask, questions[:warmup], 1)
    runs = {}
    for c in (1, *levels):
        count0, sum0 = await batch_stats()
        run = await measure(ask, questions, c)
        count1, sum1 = await batch_stats()
        runs[c] = dataclasses.replace(run, mean_batch=(sum1 - sum0) / max(count1 - count0, 1))
    return runs


def histogram_totals(metrics_text: str, name: str) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram in a /metrics page."""
    values = {}
    for line in metrics_text.splitlines():
        for part in ("count", "sum"):
            if line.startswith(f"{name}_{part}"):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def _package(project: Path) -> tuple[PackageRecord, Path, Path]:
    params = load_params(project / "params.yaml")
    out_dir = project / params.package_router.out_dir
    record_file = out_dir / RECORD_FILE
    if not record_file.is_file():
        raise SystemExit(f"{record_file} does not exist: run `make demo` (or `dvc repro package_router`) first")
    home = bentoml_home(params, project)
    record, _ = import_package(out_dir, home)
    name, version = record.model_tag.split(":", 1)
    return record, home, home / "models" / name / version


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--project", type=Path, default=REPO_ROOT)
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--warmup", type=int, default=4)
    a = ap.parse_args(argv)
    if a.questions < 2 or a.warmup < 0 or any(c < 1 for c in a.concurrency):
        ap.error("--questions needs at least 2, --warmup at least 0 and every --concurrency at least 1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    record, home, model_dir = _package(a.project)
    package = load_package(model_dir)
    questions = [q.text for q in package.questions[: a.questions]]

    async def in_process() -> dict[int, Run]:
        router = Router(package)
        try:
            async def ask(q: str) -> tuple[str, float]:
                answer = await router.answer(q)
                return answer.text, answer.bill.total_usd

            async def stats() -> tuple[float, float]:
                batches = getattr(router.generator, "batches", None) or {}
                return float(sum(batches.values())), float(sum(k * n for k, n in batches.items()))
            return await bench_side(ask, questions, a.concurrency, a.warmup, stats)
        finally:
            await router.aclose()

    print(f"# {record.bento_tag}: {len(questions)} questions, {platform.machine()} x{os.cpu_count()}, "
          f"python {platform.python_version()}", file=sys.stderr)
    print("in process ...", file=sys.stderr)
    local = asyncio.run(in_process())

    episode_ms: list[float] = []  # per served request, from its `Server-Timing: episode;dur=MS`
    with tempfile.TemporaryDirectory(prefix="routerops-bench-") as scratch:
        keys_db = Path(scratch) / "keys.sqlite"
        secret = KeyStore(keys_db).create("bench").secret
        with ServiceProcess(record.bento_tag, home, cwd=Path(scratch), env={KEYS_DB_ENV: str(keys_db)},
                            log_path=Path(scratch) / "serve.log") as svc:
            async def over_http() -> dict[int, Run]:
                limits = httpx.Limits(max_connections=max(a.concurrency), max_keepalive_connections=max(a.concurrency))
                async with httpx.AsyncClient(base_url=svc.base_url, limits=limits, timeout=300,
                                             headers={"authorization": f"Bearer {secret}"}) as http:
                    async def ask(q: str) -> tuple[str, float]:
                        r = await http.post("/v1/chat/completions", json={
                            "model": record.model_tag, "messages": [{"role": "user", "content": q}]})
                        r.raise_for_status()
                        episode_ms.append(float(r.headers["server-timing"].split("dur=", 1)[1]))
                        body: dict[str, Any] = r.json()
                        return body["choices"][0]["message"]["content"], body["routerops"]["total_usd"]

                    async def stats() -> tuple[float, float]:
                        page = (await http.get("/metrics")).text
                        return histogram_totals(page, "routerops_policy_batch_size")
                    return await bench_side(ask, questions, a.concurrency, a.warmup, stats)

            print("service ...", file=sys.stderr)
            served = asyncio.run(over_http())

    for c, run in local.items():
        if served[c].outcomes != run.outcomes:
            differ = sum(x != y for x, y in zip(run.outcomes, served[c].outcomes, strict=True))
            raise SystemExit(f"concurrency {c}: {differ} of {len(questions)} answers or bills differ between the "
                             "service and the in-process loop; the numbers would compare different work")

    print(f"\n{record.bento_tag}, {len(questions)} questions (answers and bills identical on both sides)\n")
    print("| side | p50 latency (ms), conc 1 | p95 latency (ms), conc 1 | "
          + " | ".join(f"episodes/s, conc {c}" for c in a.concurrency) + " |")
    print("|---|---|---|" + "---|" * len(a.concurrency))
    for name, runs in (("in process", local), ("service (HTTP)", served)):
        one = runs[1].latencies_s
        print(f"| {name} | {quantile(one, 0.5) * 1e3:.1f} | {quantile(one, 0.95) * 1e3:.1f} | "
              + " | ".join(f"{runs[c].episodes_per_s:.2f}" for c in a.concurrency) + " |")
    print("\nepisodes per policy batch (mean): " + "; ".join(
        f"conc {c}: in process {local[c].mean_batch:.1f}, service {served[c].mean_batch:.1f}"
        for c in (1, *a.concurrency)))
    # conc 1 requests are the warm-up and then one per question, in order (see bench_side)
    episodes_s = [ms / 1e3 for ms in episode_ms[a.warmup: a.warmup + len(questions)]]
    own = [lat - ep for lat, ep in zip(served[1].latencies_s, episodes_s, strict=True)]
    paired = [s - i for s, i in zip(served[1].latencies_s, local[1].latencies_s, strict=True)]
    print(f"\nservice overhead per request, conc 1 (client latency minus the episode the service timed): "
          f"p50 {statistics.median(own) * 1e3:.2f} ms, p95 {quantile(own, 0.95) * 1e3:.2f} ms (goal: p50 <= 3 ms)")
    print(f"service minus in-process latency, conc 1 (paired by question; carries the episodes' run-to-run "
          f"noise): p50 {statistics.median(paired) * 1e3:.2f} ms")
    for c in a.concurrency:
        share = served[c].episodes_per_s / local[c].episodes_per_s
        print(f"service throughput at conc {c}: {share:.1%} of in process (goal at 32: >= 90 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
