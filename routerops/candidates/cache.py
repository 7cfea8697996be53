"""Content-addressed SQLite cache of candidate replies, and a backend wrapper that uses it.

Key = sha256 of the canonical JSON of exactly what determines a reply: provider model id, the
rendered messages, the sampling settings and max_tokens. Prices are not in the key and token
counts are stored, so a cached call can be repriced under any later price table with no call at
all. Candidates are called greedily with a fixed seed (pool.yaml), which is what makes reusing a
reply sound; with temperature > 0 the cache returns one sample for every repeat.

Concurrency: WAL journal (readers never block the writer), a busy timeout for writers from other
processes, one connection per thread (and per process after a fork), and INSERT OR IGNORE so two
writers racing on the same key both succeed and the first reply wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.candidates.budget import Budget
from routerops.candidates.types import (
    CallContext,
    CallOrigin,
    CallResult,
    CallTask,
    CandidateBackend,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    candidate_messages,
)
from routerops.pool import Candidate, Pool

__all__ = ["CachedBackend", "CachedEntry", "ResponseCache", "cache_key", "cost_of_cached"]

# Bumped when the key's inputs or the table's meaning change, so old rows are simply never hit.
_KEY_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key               TEXT PRIMARY KEY,
    model             TEXT NOT NULL,
    provider_model_id TEXT NOT NULL,
    text              TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    usage_estimated   INTEGER NOT NULL DEFAULT 0,
    created           REAL NOT NULL
)
"""
_COLUMNS = "key, model, provider_model_id, text, prompt_tokens, completion_tokens, usage_estimated, created"


def cache_key(candidate: Candidate, query: str, task: CallTask = CallTask.HELP) -> str:
    """Hex sha256 of the canonical JSON of everything that determines the reply (not the price).
    The task changes the message, so a baseline's reply never answers a router's call."""
    doc = {
        "v": _KEY_VERSION,
        "provider_model_id": candidate.provider_model_id,
        "messages": candidate_messages(query, task),
        "sampling": candidate.sampling.model_dump(mode="json"),
        "max_tokens": candidate.max_tokens,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedEntry:
    key: str
    model: str                 # pool name of the candidate that first stored it
    provider_model_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    created: float             # unix seconds


def cost_of_cached(entry: CachedEntry, pool: Pool, include_prompt: bool = False) -> float:
    """Dollars the cached call costs under `pool`'s prices: stored tokens x new price, zero calls.

    The entry is matched by pool name (or alias); KeyError if the pool no longer has that model.
    """
    return pool.get(entry.model).cost_usd(entry.completion_tokens, entry.prompt_tokens, include_prompt)


class ResponseCache:
    """SQLite reply cache. Blocking; call it from async code through `asyncio.to_thread`."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        # (owning thread, pid, connection): lets close() and pruning find every connection.
        self._connections: list[tuple[threading.Thread, int, sqlite3.Connection]] = []
        self._hits = 0
        self._misses = 0
        self._closed = False
        self._conn()  # create the schema now, so a bad path fails at construction

    # ----- connections -----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"cache {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        # A connection inherited through fork must not be used by the child; open a fresh one.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        self._set_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
        conn.execute(_SCHEMA)
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            # Each `asyncio.run` brings a fresh executor whose threads open their own
            # connections; close those of threads that have exited so they do not pile up.
            dead = [c for t, pid, c in self._connections if pid == os.getpid() and not t.is_alive()]
            self._connections = [e for e in self._connections if e[2] not in dead]
            self._connections.append((threading.current_thread(), os.getpid(), conn))
        for old in dead:
            old.close()
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a brief exclusive lock and can report "locked" without going
        # through the busy handler when many processes open a new file at once; retry briefly.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._connections = self._connections, []
        for _, pid, conn in conns:
            if pid != os.getpid():
                continue  # inherited through fork: the parent owns it, the child must not touch it
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- reads and writes ------------------------------------------------------------------

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def misses(self) -> int:
        with self._lock:
            return self._misses

    def peek(self, key: str) -> CachedEntry | None:
        """Read without touching the hit/miss counters (repricing, inspection)."""
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else _entry(row)

    def get(self, key: str) -> CachedEntry | None:
        entry = self.peek(key)
        with self._lock:
            if entry is None:
                self._misses += 1
            else:
                self._hits += 1
        return entry

    def lookup(self, candidate: Candidate, query: str) -> CachedEntry | None:
        return self.get(cache_key(candidate, query))

    def put(self, key: str, candidate: Candidate, reply: CandidateReply) -> bool:
        """Store a reply; False if the key was already there (the first stored reply is kept)."""
        cur = self._conn().execute(
            f"INSERT OR IGNORE INTO replies ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, candidate.name, candidate.provider_model_id, reply.text, reply.prompt_tokens,
             reply.completion_tokens, int(reply.usage_estimated), time.time()),
        )
        return cur.rowcount == 1

    def store(self, candidate: Candidate, query: str, reply: CandidateReply) -> bool:
        return self.put(cache_key(candidate, query), candidate, reply)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def entries(self) -> Iterator[CachedEntry]:
        for row in self._conn().execute(f"SELECT {_COLUMNS} FROM replies ORDER BY created, key"):
            yield _entry(row)

    # ----- repricing -------------------------------------------------------------------------

    def cached_cost(self, pool: Pool, model: str, query: str, include_prompt: bool = False) -> float | None:
        """Cost under `pool`'s prices of the cached call (pool model `model`, `query`); None if not cached.

        The key does not involve prices, so a pool that only changed prices finds the same entry.
        """
        candidate = pool.get(model)
        entry = self.peek(cache_key(candidate, query))
        if entry is None:
            return None
        return candidate.cost_usd(entry.completion_tokens, entry.prompt_tokens, include_prompt)

    def total_cost(self, pool: Pool, include_prompt: bool = False) -> tuple[float, int]:
        """(dollars, entries priced) over every entry whose model is in `pool`; others are skipped."""
        total, priced = 0.0, 0
        for entry in self.entries():
            if pool.resolve(entry.model) is not None:
                total += cost_of_cached(entry, pool, include_prompt)
                priced += 1
        return total, priced


def _entry(row: tuple[Any, ...]) -> CachedEntry:
    key, model, pid, text, prompt, completion, estimated, created = row
    return CachedEntry(key=key, model=model, provider_model_id=pid, text=text, prompt_tokens=int(prompt),
                       completion_tokens=int(completion), usage_estimated=bool(estimated), created=float(created))


class CachedBackend:
    """Any `CandidateBackend` behind a `ResponseCache`.

    A hit returns the stored reply (origin "cache", attempts 0) without calling `inner`, but is
    still refused by a spent budget and still charged at the current price: the router must learn
    the cost of a call, not whether we happened to have it cached. A miss calls `inner` (which
    charges the budget itself) and stores the reply if it succeeded with an origin in
    `store_origins`; by default only real HTTP replies, so synthetic replay answers never leak
    into a cache that later serves live runs.

    Concurrent misses on the same key are coalesced: one call goes out, the others wait for it
    and are served its reply as a cache hit (GRPO samples of one prompt often send the same
    first sub-query). If that call fails, each waiter makes its own call.
    """

    def __init__(
        self,
        inner: CandidateBackend,
        cache: ResponseCache,
        *,
        include_prompt_cost: bool | None = None,
        store_origins: frozenset[CallOrigin] = frozenset({CallOrigin.HTTP}),
    ) -> None:
        self.inner = inner
        self.cache = cache
        if include_prompt_cost is None:
            # Charge hits the way the wrapped client charges misses, when it says how.
            inner_config = getattr(inner, "config", None)
            include_prompt_cost = bool(getattr(inner_config, "include_prompt_cost", False))
        self.include_prompt_cost = include_prompt_cost
        self.store_origins = store_origins
        self._inflight: dict[str, asyncio.Future[CallResult]] = {}
        self.coalesced = 0
        self.store_errors: list[str] = []

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        start = time.perf_counter()
        budget = context.budget if context is not None else None
        if budget is not None:
            if not isinstance(budget, Budget):
                raise TypeError(f"CallContext.budget must have check() and charge(), got {type(budget).__name__}")
            if (reason := budget.check()) is not None:
                return CandidateFailure(candidate.name, FailureKind.BUDGET, None, 0, reason)
        key = cache_key(candidate, query, context.task if context is not None else CallTask.HELP)
        entry = await asyncio.to_thread(self.cache.get, key)
        if entry is not None:
            return self._hit(candidate, entry.text, entry.prompt_tokens, entry.completion_tokens,
                             entry.usage_estimated, budget, start)

        leader = self._inflight.get(key)
        if leader is not None:
            self.coalesced += 1
            shared = await asyncio.shield(leader)
            if isinstance(shared, CandidateReply) and shared.origin in self.store_origins:
                return self._hit(candidate, shared.text, shared.prompt_tokens, shared.completion_tokens,
                                 shared.usage_estimated, budget, start)
            return await self.inner.call(candidate, query, context)

        fut: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self.inner.call(candidate, query, context)
            if isinstance(result, CandidateReply) and result.origin in self.store_origins:
                try:
                    await asyncio.to_thread(self.cache.put, key, candidate, result)
                except sqlite3.Error as exc:
                    # A full disk or a locked file must not cost the reply we already paid for.
                    self.store_errors.append(f"{type(exc).__name__}: {exc}")
            fut.set_result(result)
            return result
        except BaseException as exc:
            # Waiters must not hang on a cancelled or crashed leader; they fall back to own calls.
            if not fut.done():
                fut.set_result(CandidateFailure(candidate.name, FailureKind.CONNECT, None, 0,
                                                f"coalesced call aborted: {type(exc).__name__}"))
            raise
        finally:
            self._inflight.pop(key, None)

    def _hit(self, candidate: Candidate, text: str, prompt_tokens: int, completion_tokens: int,
             usage_estimated: bool, budget: object, start: float) -> CandidateReply:
        if isinstance(budget, Budget):
            budget.charge(candidate.cost_usd(completion_tokens, prompt_tokens, self.include_prompt_cost))
        return CandidateReply(model=candidate.name, text=text, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, latency_s=time.perf_counter() - start,
                              attempts=0, usage_estimated=usage_estimated, origin=CallOrigin.CACHE)
