"""ResponseCache and CachedBackend: keys, hits/misses, persistence, concurrency, zero-call repricing."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from routerops.candidates import (
    CachedBackend,
    CallContext,
    CallResult,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    OpenAIChatClient,
    RequestBudget,
    ResponseCache,
    cache_key,
    cost_of_cached,
)
from routerops.pool import Candidate, Pool, parse_pool
from routerops.testing.fakeserver import FakeOpenAIServer, Fault

MakeClient = Callable[..., OpenAIChatClient]
QUERY = "Which river flows through Vienna?"
REPO_ROOT = Path(__file__).resolve().parents[3]
# Generous bound on waits (see conftest.WAIT_S): far above the work, under the 180 s test timeout.
WAIT_S = 60.0


class Gated:
    """A backend that holds each call until `ready()` is true (or WAIT_S passes), then calls `inner`.

    Wrapped as the cache's inner backend, it keeps the leading miss on the wire until the other
    concurrent misses have joined it, so coalescing is exercised whatever the thread scheduling
    (the cache's lookups run in worker threads and may finish in any order, or late)."""

    def __init__(self, inner: OpenAIChatClient, ready: Callable[[], bool]) -> None:
        self.inner, self.ready = inner, ready
        self.config = inner.config
        self.timed_out = False

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        deadline = time.monotonic() + WAIT_S
        while not self.ready():
            if time.monotonic() > deadline:
                self.timed_out = True
                break
            await asyncio.sleep(0.005)
        return await self.inner.call(candidate, query, context)


def reply(text: str = "The Danube", prompt: int = 60, completion: int = 3, origin: str = "http") -> CandidateReply:
    return CandidateReply(model="x", text=text, prompt_tokens=prompt, completion_tokens=completion,
                          latency_s=0.1, origin=origin)


def repriced_pool(pool_file: Path, factor: float) -> Pool:
    """The repo's pool with every price multiplied by `factor` (a new pricing snapshot)."""
    raw: dict[str, Any] = yaml.safe_load(pool_file.read_text(encoding="utf-8"))
    for price in raw["pricing"]["prices"].values():
        price["input_usd_per_mtok"] *= factor
        price["output_usd_per_mtok"] *= factor
    raw["pricing"]["label"] = f"x{factor}"
    return parse_pool(raw, f"<{pool_file.name} x{factor}>")


def calls(backend: CachedBackend, candidate: Candidate, queries: list[str],
          context: CallContext | None = None) -> list[CallResult]:
    async def go() -> list[CallResult]:
        out = [await backend.call(candidate, q, context) for q in queries]
        inner = backend.inner
        if isinstance(inner, OpenAIChatClient):
            await inner.aclose()
        return out

    return asyncio.run(go())


def test_key_covers_what_determines_the_reply_and_not_the_price(pool: Pool, pool_file: Path) -> None:
    qwen, llama = pool.get("Qwen2.5-7B-Instruct"), pool.get("LLaMA-3.1-8B-Instruct")
    base = cache_key(qwen, QUERY)
    assert base == cache_key(qwen, QUERY) and len(base) == 64
    assert cache_key(qwen, "  " + QUERY + "\n") == base  # rendering strips the query
    assert cache_key(llama, QUERY) != base
    assert cache_key(qwen, QUERY + "?") != base
    hotter = qwen.model_copy(update={"sampling": qwen.sampling.model_copy(update={"temperature": 0.7})})
    assert cache_key(hotter, QUERY) != base
    assert cache_key(qwen.model_copy(update={"max_tokens": 256}), QUERY) != base
    renamed = qwen.model_copy(update={"name": "qwen-renamed"})
    assert cache_key(renamed, QUERY) == base  # same provider model, same request: same reply
    assert cache_key(repriced_pool(pool_file, 3.0).get(qwen.name), QUERY) == base


def test_hits_and_misses_through_the_backend(tmp_path: Path, server: FakeOpenAIServer, make_client: MakeClient,
                                             qwen: Candidate) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        backend = CachedBackend(make_client(), cache)
        first, second, other = calls(backend, qwen, [QUERY, QUERY, QUERY + " (again)"])

    assert isinstance(first, CandidateReply) and first.origin == "http" and first.attempts == 1
    assert isinstance(second, CandidateReply)
    assert (second.origin, second.attempts, second.model) == ("cache", 0, qwen.name)
    assert (second.text, second.prompt_tokens, second.completion_tokens) == (
        first.text, first.prompt_tokens, first.completion_tokens)
    assert isinstance(other, CandidateReply) and other.origin == "http"
    assert (cache.hits, cache.misses) == (1, 2)
    assert server.total_requests == 2


def test_failures_are_not_stored(tmp_path: Path, server: FakeOpenAIServer, make_client: MakeClient,
                                 qwen: Candidate) -> None:
    server.push(Fault.http_status(400))
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        first, second, third = calls(CachedBackend(make_client(), cache), qwen, [QUERY] * 3)
        assert len(cache) == 1
    assert isinstance(first, CandidateFailure) and first.kind is FailureKind.HTTP_STATUS
    assert isinstance(second, CandidateReply) and second.origin == "http"
    assert isinstance(third, CandidateReply) and third.origin == "cache"
    assert server.total_requests == 2


class _ReplayLike:
    """A backend whose replies are synthetic (origin replay:prior), like the offline replay pool."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        self.calls += 1
        return CandidateReply(model=candidate.name, text="synthetic", prompt_tokens=10, completion_tokens=5,
                              latency_s=0.0, origin="replay:prior")


def test_synthetic_replies_are_not_cached_by_default(tmp_path: Path, qwen: Candidate) -> None:
    inner = _ReplayLike()
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        results = calls(CachedBackend(inner, cache), qwen, [QUERY, QUERY])
        assert len(cache) == 0
    assert [r.origin for r in results if isinstance(r, CandidateReply)] == ["replay:prior"] * 2
    assert inner.calls == 2


def test_hit_is_charged_and_refused_like_a_call(tmp_path: Path, server: FakeOpenAIServer,
                                                make_client: MakeClient, qwen: Candidate) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        backend = CachedBackend(make_client(), cache)
        warm = RequestBudget(None)
        (live,) = calls(backend, qwen, [QUERY], CallContext(budget=warm))
        assert isinstance(live, CandidateReply)

        hit_budget = RequestBudget(None)
        backend = CachedBackend(make_client(), cache)
        (hit,) = calls(backend, qwen, [QUERY], CallContext(budget=hit_budget))
        assert isinstance(hit, CandidateReply) and hit.origin == "cache"
        assert warm.spent_usd == pytest.approx(qwen.cost_usd(live.completion_tokens))
        assert hit_budget.spent_usd == pytest.approx(warm.spent_usd)

        counters = (cache.hits, cache.misses)
        (refused,) = calls(CachedBackend(make_client(), cache), qwen, [QUERY], CallContext(budget=RequestBudget(0)))
        assert isinstance(refused, CandidateFailure)
        assert (refused.kind, refused.attempts, refused.detail) == (
            FailureKind.BUDGET, 0, "request budget spent: $0.000000 of $0.000000")
        assert (cache.hits, cache.misses) == counters  # refused before even looking
    assert server.total_requests == 1


def test_cache_survives_reopen(tmp_path: Path, qwen: Candidate) -> None:
    path = tmp_path / "nested" / "dir" / "c.sqlite"
    with ResponseCache(path) as cache:
        before = time.time()
        assert cache.store(qwen, QUERY, reply())
        after = time.time()
        assert not cache.store(qwen, QUERY, reply(text="a later, different reply"))  # first one wins
    with ResponseCache(path) as reopened:
        entry = reopened.lookup(qwen, QUERY)
        assert entry is not None
        assert (entry.key, entry.text, entry.prompt_tokens, entry.completion_tokens) == (
            cache_key(qwen, QUERY), "The Danube", 60, 3)
        assert (entry.model, entry.provider_model_id) == (qwen.name, qwen.provider_model_id)
        # The store's wall-clock time: not a fixed value, but the one taken during the first store.
        assert before <= entry.created <= after and not entry.usage_estimated
        assert (reopened.hits, reopened.misses) == (1, 0)
        assert reopened.lookup(qwen, "unseen") is None
        assert reopened.misses == 1


def test_closed_cache_refuses_use(tmp_path: Path, qwen: Candidate) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.close()
    with pytest.raises(RuntimeError, match=f"^cache {re.escape(str(tmp_path / 'c.sqlite'))} is closed$"):
        cache.lookup(qwen, QUERY)


def test_concurrent_writers_from_threads(tmp_path: Path, pool: Pool) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    models = list(pool)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(seed: int) -> None:
        try:
            barrier.wait(WAIT_S)
            for i in range(60):
                # Overlapping keys across threads: the same (model, query) is written 8 times.
                cand = models[i % len(models)]
                cache.store(cand, f"q{i}", reply(text=f"t{seed}", completion=i + 1))
                entry = cache.lookup(cand, f"q{i}")
                assert entry is not None and entry.completion_tokens == i + 1
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    try:
        assert not any(t.is_alive() for t in threads), "a writer thread did not finish"
        assert errors == []
        assert len(cache) == 60
        assert cache.hits == 8 * 60 and cache.misses == 0
        # Every key holds one writer's reply (which writer came first is scheduling) with the
        # token count all writers agreed on for that key.
        entries = sorted(cache.entries(), key=lambda e: e.completion_tokens)
        assert [e.completion_tokens for e in entries] == list(range(1, 61))
        assert {e.text for e in entries} <= {f"t{seed}" for seed in range(8)}
    finally:
        cache.close()


def test_concurrent_writers_from_processes(tmp_path: Path, pool: Pool) -> None:
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from routerops.candidates import CandidateReply, ResponseCache
        from routerops.pool import load_pool
        pool = load_pool({str(REPO_ROOT / 'pool.yaml')!r})
        cands = list(pool)
        worker = int(sys.argv[1])
        with ResponseCache({str(path)!r}) as cache:
            for i in range(150):
                reply = CandidateReply(model="x", text=f"w{{worker}}", prompt_tokens=1,
                                       completion_tokens=i + 1, latency_s=0.0)
                cache.store(cands[i % len(cands)], f"q{{i}}", reply)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=REPO_ROOT,
                              env={"PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE, text=True)
             for w in range(3)]
    deadline = time.monotonic() + 2 * WAIT_S  # the three run at once: one deadline for all
    for p in procs:
        _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert p.returncode == 0, err
    with ResponseCache(path) as cache:
        assert len(cache) == 150
        entry = cache.lookup(pool.candidates[0], "q0")
        # Which worker stored a key first is process scheduling; that one worker did is not.
        assert entry is not None and entry.text in {"w0", "w1", "w2"}
        assert sorted(e.completion_tokens for e in cache.entries()) == list(range(1, 151))


def test_repricing_a_cached_call_makes_zero_calls(tmp_path: Path, server: FakeOpenAIServer,
                                                  make_client: MakeClient, pool: Pool, pool_file: Path) -> None:
    qwen = pool.get("Qwen2.5-7B-Instruct")
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        old_budget = RequestBudget(None)
        (live,) = calls(CachedBackend(make_client(), cache), qwen, [QUERY], CallContext(budget=old_budget))
        assert isinstance(live, CandidateReply)
        assert server.total_requests == 1

        dearer = repriced_pool(pool_file, 4.0)
        assert dearer.pricing.id != pool.pricing.id
        old_cost = cache.cached_cost(pool, qwen.name, QUERY)
        new_cost = cache.cached_cost(dearer, "qwen2.5-7b", QUERY)  # aliases resolve too
        assert old_cost == pytest.approx(0.30 * live.completion_tokens / 1e6)  # the pool's output price
        assert old_cost == pytest.approx(old_budget.spent_usd)
        assert new_cost == pytest.approx(4.0 * old_cost)
        with_prompt = cache.cached_cost(dearer, qwen.name, QUERY, include_prompt=True)
        assert with_prompt == pytest.approx(4.0 * 0.30 * (live.completion_tokens + live.prompt_tokens) / 1e6)
        assert cache.cached_cost(dearer, qwen.name, "never asked") is None

        (entry,) = list(cache.entries())
        assert cost_of_cached(entry, dearer) == pytest.approx(new_cost)
        assert cache.total_cost(dearer) == (pytest.approx(new_cost), 1)

        # The backend under the new pool hits the same entry and charges the new price.
        new_budget = RequestBudget(None)
        (hit,) = calls(CachedBackend(make_client(), cache), dearer.get(qwen.name), [QUERY],
                       CallContext(budget=new_budget))
        assert isinstance(hit, CandidateReply) and hit.origin == "cache"
        assert new_budget.spent_usd == pytest.approx(new_cost)
    assert server.total_requests == 1


def test_concurrent_identical_misses_make_one_call(tmp_path: Path, server: FakeOpenAIServer,
                                                   make_client: MakeClient, qwen: Candidate) -> None:
    budgets = [RequestBudget(None) for _ in range(5)]

    async def go() -> tuple[list[CallResult], int, bool]:
        with ResponseCache(tmp_path / "c.sqlite") as cache:
            async with make_client() as client:
                backend = CachedBackend(client, cache)
                # The leader's call waits until the other four misses are waiting on it.
                gated = Gated(client, lambda: backend.coalesced == 4)
                backend.inner = gated
                results = await asyncio.gather(
                    *(backend.call(qwen, QUERY, CallContext(budget=b)) for b in budgets))
                return list(results), backend.coalesced, gated.timed_out

    results, coalesced, timed_out = asyncio.run(go())
    assert not timed_out, f"only {coalesced} of 4 concurrent misses joined the leading call within {WAIT_S:.0f} s"
    assert server.total_requests == 1
    assert coalesced == 4
    assert sorted(r.origin for r in results if isinstance(r, CandidateReply)) == ["cache"] * 4 + ["http"]
    (live,) = [r for r in results if isinstance(r, CandidateReply) and r.origin == "http"]
    assert [b.spent_usd for b in budgets] == [pytest.approx(qwen.cost_usd(live.completion_tokens))] * 5


def test_coalesced_waiters_call_themselves_when_the_leader_fails(tmp_path: Path, server: FakeOpenAIServer,
                                                                 make_client: MakeClient, qwen: Candidate) -> None:
    server.push(Fault.http_status(400))

    async def go() -> tuple[list[CallResult], int, bool]:
        with ResponseCache(tmp_path / "c.sqlite") as cache:
            async with make_client() as client:
                backend = CachedBackend(client, cache)
                # The leader's call waits until the other call is waiting on it (the waiter's own
                # call later passes the gate at once).
                gated = Gated(client, lambda: backend.coalesced == 1)
                backend.inner = gated
                results = await asyncio.gather(backend.call(qwen, QUERY), backend.call(qwen, QUERY))
                return list(results), backend.coalesced, gated.timed_out

    results, coalesced, timed_out = asyncio.run(go())
    assert not timed_out, f"the second miss did not join the leading call within {WAIT_S:.0f} s"
    assert coalesced == 1
    # Whichever call finished its cache lookup first led; it got the 400, the other called itself.
    failures = [r for r in results if isinstance(r, CandidateFailure)]
    replies = [r for r in results if isinstance(r, CandidateReply)]
    assert len(failures) == 1 and (failures[0].kind, failures[0].status) == (FailureKind.HTTP_STATUS, 400)
    assert len(replies) == 1 and (replies[0].origin, replies[0].attempts) == ("http", 1)
    assert server.total_requests == 2
