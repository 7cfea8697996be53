"""Throughput of candidate calls: the async client vs a Router-R1-style pool of blocking threads.

    python bench/candidates.py [--latency 0.05] [--seconds 3] [--in-process]

Each setting sends enough calls to last about `--seconds` at the ideal rate (concurrency /
latency) to a fake OpenAI server with a fixed per-request latency, and reports calls per second
beside that ideal. The server runs in its own process by default so that it does not share the
client's GIL; the numbers then measure the client, not the fake.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.candidates import CandidateReply, ClientConfig, OpenAIChatClient, request_body  # noqa: E402
from routerops.pool import Candidate, load_pool  # noqa: E402
from routerops.testing.fakeserver import FakeOpenAIServer, subprocess_server  # noqa: E402

# Router-R1 fans candidate calls out over a fixed pool of 10 worker threads.
THREAD_POOL_SIZE = 10
ASYNC_CONCURRENCY = (1, 8, 64)
# Bounds on calls per setting: at least enough for a stable rate, at most a few seconds even
# if the client runs far below the ideal rate.
MIN_CALLS, MAX_CALLS = 40, 6000


@dataclass(frozen=True)
class Row:
    mode: str
    concurrency: int
    calls: int
    seconds: float
    failures: int
    latency_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def ideal(self) -> float:
        return self.concurrency / self.latency_s


def n_calls(concurrency: int, latency_s: float, seconds: float) -> int:
    return max(MIN_CALLS, min(MAX_CALLS, round(concurrency / latency_s * seconds)))


@contextmanager
def fake_server(latency_s: float, in_process: bool) -> Iterator[str]:
    if in_process:
        with FakeOpenAIServer(latency_s=latency_s, log_requests=False) as server:
            yield server.base_url
        return
    with subprocess_server(latency_s) as url:
        yield url


async def run_async(url: str, candidate: Candidate, concurrency: int, calls: int, latency_s: float) -> Row:
    config = ClientConfig(max_concurrency=concurrency, max_attempts=1, read_timeout_s=10.0)
    async with OpenAIChatClient(config, base_url=url, api_key="bench") as client:
        # Warm-up: open the keep-alive connections outside the timed window.
        await asyncio.gather(*(client.call(candidate, f"warm-up {i}") for i in range(concurrency)))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(client.call(candidate, f"question {i}") for i in range(calls)))
        elapsed = time.perf_counter() - t0
    failures = sum(not isinstance(r, CandidateReply) for r in results)
    return Row("async httpx (OpenAIChatClient)", concurrency, calls, elapsed, failures, latency_s)


def run_threads(url: str, candidate: Candidate, calls: int, latency_s: float) -> Row:
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(i: int) -> bool:
        http: httpx.Client | None = getattr(local, "http", None)
        if http is None:
            http = httpx.Client(base_url=url, headers={"Authorization": "Bearer bench"}, timeout=10.0)
            local.http = http
            with lock:
                clients.append(http)
        resp = http.post("/chat/completions", json=request_body(candidate, f"question {i}"))
        return resp.status_code == 200 and "choices" in resp.json()

    with ThreadPoolExecutor(THREAD_POOL_SIZE) as pool:
        list(pool.map(one, range(THREAD_POOL_SIZE * 2)))  # warm-up: one client per thread
        t0 = time.perf_counter()
        ok = list(pool.map(one, range(calls)))
        elapsed = time.perf_counter() - t0
    for http in clients:
        http.close()
    return Row(f"blocking httpx, ThreadPoolExecutor({THREAD_POOL_SIZE})", THREAD_POOL_SIZE, calls, elapsed,
               ok.count(False), latency_s)


def table(rows: list[Row]) -> str:
    lines = ["| mode | concurrency | calls | seconds | calls/s | ideal calls/s | efficiency % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.concurrency} | {r.calls} | {r.seconds:.2f} | {r.rate:.1f} | "
                     f"{r.ideal:.0f} | {100 * r.rate / r.ideal:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05, help="fake server latency per call, seconds")
    ap.add_argument("--seconds", type=float, default=3.0, help="target duration per setting at the ideal rate")
    ap.add_argument("--in-process", action="store_true", help="run the fake server in this process")
    args = ap.parse_args(argv)

    candidate = load_pool(REPO_ROOT / "pool.yaml").get("Qwen2.5-7B-Instruct")
    rows: list[Row] = []
    with fake_server(args.latency, args.in_process) as url:
        for conc in ASYNC_CONCURRENCY:
            calls = n_calls(conc, args.latency, args.seconds)
            rows.append(asyncio.run(run_async(url, candidate, conc, calls, args.latency)))
        rows.append(run_threads(url, candidate, n_calls(THREAD_POOL_SIZE, args.latency, args.seconds),
                                args.latency))

    where = "same process" if args.in_process else "separate process"
    print(f"fake server latency {args.latency * 1000:.0f} ms ({where}); Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, httpx {httpx.__version__}")
    print(table(rows))
    failures = sum(r.failures for r in rows)
    if failures:
        print(f"{failures} calls failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
