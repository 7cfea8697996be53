"""Async OpenAI-compatible chat client for candidate calls: bounded, retried, budgeted.

Every remote fault becomes a `CandidateFailure` with a kind, so a rollout never dies because a
provider hiccuped; the router's reward sees the failure instead. Only transient faults are
retried (connection errors, timeouts, 408, 409, 429, 5xx), with exponential backoff and full
jitter, honouring the server's Retry-After up to a cap. A 2xx whose body is not a chat completion
is not retried: a server that answers like that usually answers like that every time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from routerops.candidates.budget import Budget
from routerops.candidates.types import (
    CallContext,
    CallOrigin,
    CallResult,
    CallTask,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    candidate_messages,
)
from routerops.pool import Candidate

__all__ = [
    "ClientConfig",
    "OpenAIChatClient",
    "TokenCounter",
    "approx_token_count",
    "estimate_prompt_tokens",
    "parse_retry_after",
    "request_body",
]

TokenCounter = Callable[[str], int]
SleepFn = Callable[[float], Awaitable[None]]

# Statuses that a retry can plausibly fix: timeout, conflict (some gateways use it for "busy"),
# rate limit, and every server-side error.
_RETRYABLE_4XX = frozenset({408, 409, 429})
# Per-message framing tokens in OpenAI's chat format (role markers and separators: 3-4 per
# message), plus 3 that prime the assistant reply. Only used when a server omits `usage`.
_MESSAGE_OVERHEAD_TOKENS = 4
_REPLY_PRIMING_TOKENS = 3
# How much of an error body goes into CandidateFailure.detail: enough to read the provider's
# message, not a whole HTML error page.
_DETAIL_CHARS = 300


def approx_token_count(text: str) -> int:
    """Default local token count: ceil(UTF-8 bytes / 4), 0 for empty text.

    BPE tokenizers of the candidate families average about 4 bytes per token on English prose;
    counting bytes rather than characters keeps non-Latin scripts (2-4 bytes per character,
    about one token each) in the right range. Deterministic and dependency-free; pass a real
    tokenizer's counter to the client when the estimate matters.
    """
    return math.ceil(len(text.encode("utf-8")) / 4)


def estimate_prompt_tokens(messages: list[dict[str, str]], counter: TokenCounter = approx_token_count) -> int:
    return sum(counter(m.get("content", "")) + _MESSAGE_OVERHEAD_TOKENS for m in messages) + _REPLY_PRIMING_TOKENS


def request_body(candidate: Candidate, query: str, task: CallTask = CallTask.HELP) -> dict[str, Any]:
    """The exact JSON body sent for (candidate, query, task); the cache keys on the same fields."""
    body: dict[str, Any] = {
        "model": candidate.provider_model_id,
        "messages": candidate_messages(query, task),
        "temperature": candidate.sampling.temperature,
        "top_p": candidate.sampling.top_p,
        "max_tokens": candidate.max_tokens,
    }
    if candidate.sampling.seed is not None:
        body["seed"] = candidate.sampling.seed
    return body


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad.

    Fractional seconds are accepted although RFC 9110 says integer: some gateways send them.
    A date in the past means "now" (0).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850/asctime forms carry no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    ref = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - ref)


@dataclass(frozen=True)
class ClientConfig:
    """Knobs of `OpenAIChatClient`. Defaults suit a hosted provider; tests shrink the timeouts."""

    max_concurrency: int = 16          # calls on the wire at once (semaphore and connection pools)
    # Connections per httpx pool; above this the client opens several pools (shards). httpcore's
    # pool rescans every connection for each queued request, so one pool of 64 connections costs
    # ~10 ms CPU per call and caps a 64-way client near 100 calls/s; shards of 8 restore ~1000/s
    # (bench/candidates.py, 50 ms server latency).
    connections_per_pool: int = 8
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0       # per attempt; also the write timeout
    max_attempts: int = 4              # 1 = no retries
    backoff_base_s: float = 0.5        # first retry waits up to this; doubles per attempt
    backoff_max_s: float = 8.0         # cap of one backoff wait
    jitter: bool = True                # full jitter: uniform(0, backoff); False = the backoff itself
    max_retry_after_s: float = 30.0    # cap on an honoured Retry-After
    include_prompt_cost: bool = False  # Router-R1's cost counts completion tokens only

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.connections_per_pool < 1:
            raise ValueError(f"connections_per_pool must be >= 1, got {self.connections_per_pool}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("backoff_base_s", "backoff_max_s", "max_retry_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Wait before retry number `retry` (1 = first retry) when the server gave no Retry-After."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (retry - 1)))
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True)
class _Attempt:
    """Outcome of one HTTP attempt: a reply, or a failure plus whether to retry and after how long."""

    reply: CandidateReply | None = None
    kind: FailureKind | None = None
    status: int | None = None
    detail: str = ""
    retryable: bool = False
    retry_after_s: float | None = None


class OpenAIChatClient:
    """`CandidateBackend` over HTTP to any OpenAI-compatible `/chat/completions` endpoint.

    The endpoint comes from the env vars named by `candidate.endpoint`, unless `base_url` /
    `api_key` are given here (tests, local servers). `env` replaces `os.environ` for lookups.
    An explicit `api_key=""` sends no Authorization header (local servers without auth).
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        token_counter: TokenCounter = approx_token_count,
        rng: random.Random | None = None,
        sleep: SleepFn = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self._base_url = base_url
        self._api_key = api_key
        self._env = env
        self._count = token_counter
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._transport = transport
        # Pools and semaphore belong to one event loop; they are built on first use in a loop and
        # rebuilt if the client is reused after that loop closed (one `asyncio.run` per command).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        self._shards: list[httpx.AsyncClient] = []
        self._load: list[int] = []
        self._closed = False

    def closed(self) -> bool:
        """True once `aclose()` ran (a method, not an attribute: another task may close the client
        while a call awaits)."""
        return self._closed

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._loop is asyncio.get_running_loop():
                for http in self._shards:
                    await http.aclose()
            self._shards, self._load = [], []

    async def __aenter__(self) -> OpenAIChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("OpenAIChatClient is in use by another running event loop; use one client per loop")
        # Pools left by a closed loop cannot be closed from this one; their sockets die with them.
        cfg = self.config
        # A caller-supplied transport is one object; sharding it would only share it, so one pool.
        shards = 1 if self._transport is not None else -(-cfg.max_concurrency // cfg.connections_per_pool)
        per_shard = -(-cfg.max_concurrency // shards)
        self._shards = [
            httpx.AsyncClient(
                # Pool timeout None: the semaphore and least-loaded shard choice keep waiters off
                # the pools, and a pool timeout firing would be misreported as a provider timeout.
                timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s,
                                      write=cfg.read_timeout_s, pool=None),
                limits=httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard),
                transport=self._transport,
                follow_redirects=False,
            )
            for _ in range(shards)
        ]
        # In-flight requests per shard. With at most max_concurrency in flight in total and
        # shards x per_shard >= max_concurrency, the least-loaded shard always has a free slot.
        self._load = [0] * shards
        self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
        self._loop = loop

    # ----- endpoint --------------------------------------------------------------------------

    def _resolve(self, candidate: Candidate) -> tuple[str, str] | str:
        """(chat-completions URL, api key), or the reason the endpoint is not configured."""
        env = os.environ if self._env is None else self._env
        base = self._base_url if self._base_url is not None else env.get(candidate.endpoint.base_url_env, "")
        key = self._api_key if self._api_key is not None else env.get(candidate.endpoint.api_key_env, "")
        missing = []
        if not base.strip():
            missing.append(candidate.endpoint.base_url_env)
        if self._api_key is None and not key.strip():
            missing.append(candidate.endpoint.api_key_env)
        if missing:
            return f"env var(s) {', '.join(missing)} not set for model {candidate.name!r}"
        base = base.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            return f"base URL for model {candidate.name!r} must start with http:// or https://, got {base!r}"
        return f"{base}/chat/completions", key.strip()

    # ----- the call --------------------------------------------------------------------------

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        start = time.perf_counter()
        budget = _budget_of(context)
        if budget is not None and (reason := budget.check()) is not None:
            return CandidateFailure(candidate.name, FailureKind.BUDGET, None, 0, reason)
        resolved = self._resolve(candidate)
        if isinstance(resolved, str):
            return CandidateFailure(candidate.name, FailureKind.NOT_CONFIGURED, None, 0, resolved)
        if self.closed():
            return CandidateFailure(candidate.name, FailureKind.NOT_CONFIGURED, None, 0, "client is closed")
        self._bind_loop()
        url, key = resolved
        body = request_body(candidate, query, context.task if context is not None else CallTask.HELP)
        headers = {"Authorization": f"Bearer {key}"} if key else {}

        last = _Attempt()
        for attempt in range(1, self.config.max_attempts + 1):
            async with self._semaphore:
                # Re-check after queueing: with many calls waiting on the semaphore, the budget
                # may have been spent while this one waited. Retries are not re-checked, since
                # failed attempts cost nothing and the call was already admitted.
                if attempt == 1 and budget is not None and (reason := budget.check()) is not None:
                    return CandidateFailure(candidate.name, FailureKind.BUDGET, None, 0, reason,
                                            time.perf_counter() - start)
                if self.closed():  # closed by another task while this call queued or backed off
                    return CandidateFailure(candidate.name, FailureKind.NOT_CONFIGURED, None, attempt - 1,
                                            "client was closed during the call", time.perf_counter() - start)
                last = await self._attempt(candidate, url, headers, body, start, attempt)
            if last.reply is not None:
                reply = last.reply
                if budget is not None:
                    budget.charge(candidate.cost_usd(reply.completion_tokens, reply.prompt_tokens,
                                                     self.config.include_prompt_cost))
                return reply
            assert last.kind is not None
            if not last.retryable or attempt == self.config.max_attempts:
                return CandidateFailure(candidate.name, last.kind, last.status, attempt, last.detail,
                                        time.perf_counter() - start)
            await self._sleep(self._delay(attempt, last.retry_after_s))
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        # The server's Retry-After replaces our backoff (it knows its own rate window), but is
        # capped so a hostile or buggy header cannot park a rollout for an hour.
        if retry_after_s is not None:
            return min(retry_after_s, self.config.max_retry_after_s)
        return self.config.backoff_s(attempt, self._rng)

    async def _attempt(self, candidate: Candidate, url: str, headers: dict[str, str], body: dict[str, Any],
                       start: float, attempt: int) -> _Attempt:
        shard = min(range(len(self._shards)), key=self._load.__getitem__)
        self._load[shard] += 1
        try:
            resp = await self._shards[shard].post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            return _Attempt(kind=FailureKind.TIMEOUT, detail=f"{type(exc).__name__}: {exc}".rstrip(": "),
                            retryable=True)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Attempt(kind=FailureKind.NOT_CONFIGURED, detail=f"bad endpoint URL {url!r}: {exc}")
        except httpx.DecodingError as exc:
            return _Attempt(kind=FailureKind.MALFORMED, detail=f"undecodable response: {exc}")
        except httpx.TransportError as exc:
            # ConnectError, ReadError, RemoteProtocolError (closed without a response), ...
            return _Attempt(kind=FailureKind.CONNECT, detail=f"{type(exc).__name__}: {exc}".rstrip(": "),
                            retryable=True)
        except httpx.HTTPError as exc:
            return _Attempt(kind=FailureKind.CONNECT, detail=f"{type(exc).__name__}: {exc}")
        finally:
            self._load[shard] -= 1

        status = resp.status_code
        if not 200 <= status < 300:
            retryable = status in _RETRYABLE_4XX or 500 <= status < 600
            return _Attempt(
                kind=FailureKind.HTTP_STATUS, status=status, retryable=retryable,
                retry_after_s=parse_retry_after(resp.headers.get("retry-after")) if retryable else None,
                detail=f"HTTP {status}: {resp.text[:_DETAIL_CHARS]}",
            )
        parsed = self._parse(resp.content, body["messages"])
        if isinstance(parsed, str):
            return _Attempt(kind=FailureKind.MALFORMED, status=status, detail=parsed)
        text, prompt_tokens, completion_tokens, estimated = parsed
        return _Attempt(reply=CandidateReply(
            model=candidate.name, text=text, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, latency_s=time.perf_counter() - start,
            attempts=attempt, usage_estimated=estimated, origin=CallOrigin.HTTP,
        ))

    def _parse(self, content: bytes, messages: list[dict[str, str]]) -> tuple[str, int, int, bool] | str:
        """(text, prompt_tokens, completion_tokens, usage_estimated), or why the body is not a completion."""
        try:
            data = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"body is not JSON ({exc}): {content[:_DETAIL_CHARS]!r}"
        if not isinstance(data, dict):
            return f"body is JSON {type(data).__name__}, not an object"
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return f"no choices in body (keys: {sorted(data)[:10]})"
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            return "choices[0].message.content is missing or not a string"

        usage = data.get("usage")
        prompt = _count_field(usage, "prompt_tokens")
        completion = _count_field(usage, "completion_tokens")
        estimated = prompt is None or completion is None
        if prompt is None:
            prompt = estimate_prompt_tokens(messages, self._count)
        if completion is None:
            completion = self._count(text)
        return text, prompt, completion, estimated


def _count_field(usage: object, name: str) -> int | None:
    if not isinstance(usage, dict):
        return None
    value = usage.get(name)
    # bool is an int subclass; a `true` token count is a broken server, not a count of 1.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _budget_of(context: CallContext | None) -> Budget | None:
    budget = context.budget if context is not None else None
    if budget is None:
        return None
    if not isinstance(budget, Budget):
        raise TypeError(f"CallContext.budget must have check() and charge(), got {type(budget).__name__}")
    return budget
