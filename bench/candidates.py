"""Throughput of candidate calls: the async client vs a Router-R1-style pool of blocking threads;
then the wall-clock timings of the client's failure paths and of the fake server.

    python bench/candidates.py [--latency 0.05] [--seconds 3] [--in-process] [--repeats 3]
                               [--timings-only | --throughput-only]

Throughput: each setting sends enough calls to last about `--seconds` at the ideal rate
(concurrency / latency) to a fake OpenAI server with a fixed per-request latency, and reports calls
per second beside that ideal. The server runs in its own process by default so that it does not
share the client's GIL; the numbers then measure the client, not the fake.

Timings: how long a call takes when the client times out, honours Retry-After, backs off, meets a
dead endpoint or queues on its concurrency limit, and how the fake server overlaps latency and
shuts down, each beside the time the configuration implies. The tests assert only the outcomes of
these paths (kinds, attempts, the delays the client asked for); the wall-clock side is here. The
server runs in this process (the faults are scripted on its object); these rows are dominated by
sleeps and timeouts, not by CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.candidates import (  # noqa: E402
    CandidateFailure,
    CandidateReply,
    ClientConfig,
    FailureKind,
    OpenAIChatClient,
    request_body,
)
from routerops.pool import Candidate, load_pool  # noqa: E402
from routerops.testing.fakeserver import FakeOpenAIServer, Fault, closed_port_url, subprocess_server  # noqa: E402

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


# ----- timings of failure paths and of the fake server -------------------------------------------

# Every timing row: the expected outcome is checked too, so a row never times the wrong path.
Check = Callable[[object], bool]


@dataclass(frozen=True)
class Timing:
    path: str
    expected_s: float   # what the configuration implies (sleeps and timeouts only)
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def _call_once(url: str, candidate: Candidate, config: ClientConfig, query: str = "timing") -> tuple[float, object]:
    async def go() -> object:
        async with OpenAIChatClient(config, base_url=url, api_key="bench") as client:
            return await client.call(candidate, query)

    t0 = time.perf_counter()
    result = asyncio.run(go())
    return time.perf_counter() - t0, result


def _failed(kind: FailureKind, attempts: int) -> Check:
    return lambda r: isinstance(r, CandidateFailure) and (r.kind, r.attempts) == (kind, attempts)


def _replied(attempts: int) -> Check:
    return lambda r: isinstance(r, CandidateReply) and r.attempts == attempts


def _client_row(path: str, expected_s: float, faults: list[Fault | None], config: ClientConfig, check: Check,
                candidate: Candidate, repeats: int, url: str | None = None) -> Timing:
    runs = []
    for _ in range(repeats):
        if url is not None:
            seconds, result = _call_once(url, candidate, config)
        else:
            with FakeOpenAIServer(faults=faults, log_requests=False) as server:
                seconds, result = _call_once(server.base_url, candidate, config)
        if not check(result):
            raise RuntimeError(f"{path}: unexpected outcome {result!r}")
        runs.append(seconds)
    return Timing(path, expected_s, runs)


def _limited_burst(candidate: Candidate, repeats: int) -> Timing:
    """32 calls through 4 slots at 50 ms: at least 8 server round trips."""
    config = ClientConfig(max_concurrency=4, max_attempts=1, read_timeout_s=10.0)
    runs = []
    for _ in range(repeats):
        with FakeOpenAIServer(latency_s=0.05, log_requests=False) as server:
            async def go() -> list[object]:
                async with OpenAIChatClient(config, base_url=server.base_url, api_key="bench") as client:
                    return list(await asyncio.gather(*(client.call(candidate, f"q{i}") for i in range(32))))

            t0 = time.perf_counter()
            results = asyncio.run(go())
            runs.append(time.perf_counter() - t0)
            if not all(isinstance(r, CandidateReply) for r in results) or server.max_in_flight > 4:
                raise RuntimeError(f"limited burst: failures or max_in_flight {server.max_in_flight} > 4")
    return Timing("client: 32 calls, max_concurrency=4, server latency 50 ms (8 round trips)", 32 / 4 * 0.05, runs)


def _server_overlap(repeats: int) -> Timing:
    """10 blocking clients at once against 200 ms latency: ~0.2 s if the server overlaps them, 2 s serially."""
    runs = []
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    for _ in range(repeats):
        with FakeOpenAIServer(latency_s=0.2, log_requests=False) as server:
            # Clients are built outside the timed window (each builds an SSL context, ~30 ms of CPU).
            clients = [httpx.Client(base_url=server.base_url, timeout=10.0) for _ in range(10)]
            threads = [threading.Thread(target=lambda http=http: http.post("/chat/completions", json=body))
                       for http in clients]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            runs.append(time.perf_counter() - t0)
            for http in clients:
                http.close()
            if server.completions != 10:
                raise RuntimeError(f"server overlap: {server.completions} of 10 completions")
    return Timing("fake server: 10 concurrent requests at 200 ms latency (serial: 2.0 s)", 0.2, runs)


def _server_shutdown(repeats: int) -> Timing:
    """stop() with 3 requests stalled for an hour: cancels them instead of waiting."""
    runs = []
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
               + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    for _ in range(repeats):
        server = FakeOpenAIServer(faults=[Fault.stall(3600)] * 3, log_requests=False).start()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        for sock in socks:
            sock.sendall(request)
        deadline = time.monotonic() + 10
        while server.in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        if server.in_flight != 3:
            raise RuntimeError(f"shutdown: only {server.in_flight} of 3 requests in flight")
        t0 = time.perf_counter()
        server.stop()
        runs.append(time.perf_counter() - t0)
        for sock in socks:
            sock.close()
    return Timing("fake server: stop() with 3 requests stalled for an hour", 0.0, runs)


def timings(candidate: Candidate, repeats: int) -> list[Timing]:
    no_backoff = ClientConfig(max_attempts=2, backoff_base_s=0.0, read_timeout_s=10.0)
    rows = [
        _client_row("client: read timeout 0.3 s x 2 attempts against a stalled server", 0.6,
                    [Fault.stall(3600), Fault.stall(3600)], ClientConfig(
                        max_attempts=2, backoff_base_s=0.0, read_timeout_s=0.3),
                    _failed(FailureKind.TIMEOUT, 2), candidate, repeats),
        _client_row("client: 429 with Retry-After: 1, then 200", 1.0,
                    [Fault.http_status(429, retry_after=1), None], no_backoff, _replied(2), candidate, repeats),
        _client_row("client: 429 with Retry-After: 120, capped by max_retry_after_s=0.5", 0.5,
                    [Fault.http_status(429, retry_after=120), None],
                    ClientConfig(max_attempts=2, read_timeout_s=10.0, max_retry_after_s=0.5), _replied(2),
                    candidate, repeats),
        _client_row("client: 3 x 503 then 200, backoff 0.1 / 0.2 / 0.4 s (no jitter)", 0.7,
                    [Fault.http_status(503)] * 3 + [None],
                    ClientConfig(max_attempts=4, backoff_base_s=0.1, backoff_max_s=1.0, jitter=False,
                                 read_timeout_s=10.0), _replied(4), candidate, repeats),
        _client_row("client: refused connect x 3 attempts, backoff 0.05 / 0.1 s (no jitter)", 0.15, [],
                    ClientConfig(max_attempts=3, backoff_base_s=0.05, jitter=False),
                    _failed(FailureKind.CONNECT, 3), candidate, repeats, url=closed_port_url()),
        _limited_burst(candidate, repeats),
        _server_overlap(repeats),
        _server_shutdown(repeats),
    ]
    return rows


def timing_table(rows: list[Timing]) -> str:
    lines = ["| path | expected s | measured s (median) | range s | over expected s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.path} | {r.expected_s:.2f} | {r.median:.3f} | {min(r.runs):.3f}-{max(r.runs):.3f} | "
                     f"{r.median - r.expected_s:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05, help="fake server latency per call, seconds")
    ap.add_argument("--seconds", type=float, default=3.0, help="target duration per setting at the ideal rate")
    ap.add_argument("--in-process", action="store_true", help="run the fake server in this process")
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing row (median reported)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--timings-only", action="store_true", help="skip the throughput table")
    only.add_argument("--throughput-only", action="store_true", help="skip the timings table")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    candidate = load_pool(REPO_ROOT / "pool.yaml").get("Qwen2.5-7B-Instruct")
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, httpx {httpx.__version__}")
    failures = 0
    if not args.timings_only:
        rows: list[Row] = []
        with fake_server(args.latency, args.in_process) as url:
            for conc in ASYNC_CONCURRENCY:
                calls = n_calls(conc, args.latency, args.seconds)
                rows.append(asyncio.run(run_async(url, candidate, conc, calls, args.latency)))
            rows.append(run_threads(url, candidate, n_calls(THREAD_POOL_SIZE, args.latency, args.seconds),
                                    args.latency))
        where = "same process" if args.in_process else "separate process"
        print(f"\nThroughput: fake server latency {args.latency * 1000:.0f} ms ({where})")
        print(table(rows))
        failures = sum(r.failures for r in rows)
        if failures:
            print(f"{failures} calls failed", file=sys.stderr)
    if not args.throughput_only:
        print(f"\nTimings of failure paths and of the fake server (in-process server; median of {args.repeats})")
        print(timing_table(timings(candidate, args.repeats)))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
