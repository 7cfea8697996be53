"""OpenAIChatClient against the loopback fake server: success, retries, faults, budgets, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import re
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from routerops.candidates import (
    CallContext,
    CallResult,
    CallTask,
    CandidateFailure,
    CandidateReply,
    ClientConfig,
    FailureKind,
    OpenAIChatClient,
    RequestBudget,
    RunBudget,
    approx_token_count,
    candidate_messages,
    estimate_prompt_tokens,
    parse_retry_after,
)
from routerops.candidates.cache import cache_key
from routerops.pool import Candidate
from routerops.testing.fakeserver import (
    FakeOpenAIServer,
    Fault,
    RecordingSleep,
    RequestInfo,
    closed_port_url,
    default_reply,
)

MakeClient = Callable[..., OpenAIChatClient]
GatedFactory = Callable[..., Any]  # conftest.GatedServer, started
QUERY = "Who wrote The Old Man and the Sea?"


def error_body(status: int) -> str:
    """The fake server's body for a scripted status, as the client quotes it in `detail`."""
    kind = "rate_limit_error" if status == 429 else "server_error"
    return f'{{"error": {{"message": "scripted {status}", "type": "{kind}", "code": null}}}}'


def expected_text(candidate: Candidate, query: str = QUERY) -> str:
    """The fake server's deterministic reply to `query` (its default reply function)."""
    info = RequestInfo(index=0, model=candidate.provider_model_id, messages=candidate_messages(query), body={},
                       headers={})
    return default_reply(info)


def run_one(client: OpenAIChatClient, candidate: Candidate, query: str = QUERY,
            context: CallContext | None = None) -> CallResult:
    async def go() -> CallResult:
        async with client:
            return await client.call(candidate, query, context)

    return asyncio.run(go())


def test_a_baselines_call_sends_the_direct_answer_instruction(server: FakeOpenAIServer, make_client: MakeClient,
                                                             qwen: Candidate) -> None:
    result = run_one(make_client(), qwen, context=CallContext(task=CallTask.DIRECT))
    assert isinstance(result, CandidateReply)
    ((model, messages),) = server.requests
    assert model == qwen.provider_model_id
    assert messages == candidate_messages(QUERY, CallTask.DIRECT) != candidate_messages(QUERY)
    assert messages[0]["content"].endswith(f"in the form\nAnswer: <short answer>\n\nQuestion: {QUERY}")
    # the response cache keys on the message, so a baseline's reply never answers a router's call
    assert cache_key(qwen, QUERY, CallTask.DIRECT) != cache_key(qwen, QUERY)


def test_success_with_usage(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate) -> None:
    seen: list[RequestInfo] = []

    def record(info: RequestInfo) -> None:
        seen.append(info)

    server.on_request = record
    t0 = time.perf_counter()
    result = run_one(make_client(), qwen)
    outer = time.perf_counter() - t0

    assert isinstance(result, CandidateReply)
    assert result.model == qwen.name
    assert result.text == expected_text(qwen)
    assert (result.attempts, result.origin, result.usage_estimated) == (1, "http", False)
    assert result.completion_tokens == len(result.text.split())  # the server's usage, not our estimate
    assert result.prompt_tokens == sum(len(m["content"].split()) for m in candidate_messages(QUERY))
    # Wall time is not deterministic; what is: it is measured (positive) and within the call,
    # so never more than the time the test spent around it (perf_counter is monotonic).
    assert 0 < result.latency_s <= outer
    assert server.total_requests == 1 and server.per_model == {qwen.provider_model_id: 1}
    assert server.requests == [(qwen.provider_model_id, candidate_messages(QUERY))]
    body = seen[0].body
    assert body["model"] == qwen.provider_model_id
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (
        qwen.sampling.temperature, qwen.sampling.top_p, qwen.sampling.seed, qwen.max_tokens)
    assert seen[0].headers["authorization"] == "Bearer test-key"


OK = None  # a scripted normal reply


_NOT_JSON = (r"body is not JSON \(.+\): b'" + re.escape('{"id": "chatcmpl-fake-0", "object": "chat.completion", ')
             + ".*")  # the body is cut at half its length, which includes a timestamp
_DISCONNECTED = re.escape("RemoteProtocolError: Server disconnected without sending a response.")
_NO_CONTENT = re.escape("choices[0].message.content is missing or not a string")


@pytest.mark.parametrize(
    ("faults", "kind", "status", "attempts", "detail"),
    [
        pytest.param([Fault.http_status(500)] * 3, FailureKind.HTTP_STATUS, 500, 3,
                     re.escape(f"HTTP 500: {error_body(500)}"), id="500-exhausts-attempts"),
        pytest.param([Fault.http_status(503)] * 3, FailureKind.HTTP_STATUS, 503, 3,
                     re.escape(f"HTTP 503: {error_body(503)}"), id="503-exhausts-attempts"),
        pytest.param([Fault.http_status(502), OK], None, None, 2, None, id="502-then-ok"),
        pytest.param([Fault.http_status(429), OK], None, None, 2, None, id="429-no-retry-after-then-ok"),
        pytest.param([Fault.http_status(408), OK], None, None, 2, None, id="408-retried"),
        pytest.param([Fault.http_status(409), OK], None, None, 2, None, id="409-retried"),
        *(pytest.param([Fault.http_status(code)], FailureKind.HTTP_STATUS, code, 1,
                       re.escape(f"HTTP {code}: {error_body(code)}"), id=f"{code}-at-once")
          for code in (400, 401, 403, 404, 422)),
        pytest.param([Fault.malformed_json()], FailureKind.MALFORMED, 200, 1, _NOT_JSON, id="truncated-json"),
        pytest.param([Fault.not_completion()], FailureKind.MALFORMED, 200, 1,
                     re.escape("no choices in body (keys: ['data', 'object'])"), id="json-without-choices"),
        pytest.param([Fault.not_completion({"choices": []})], FailureKind.MALFORMED, 200, 1,
                     re.escape("no choices in body (keys: ['choices'])"), id="empty-choices"),
        pytest.param([Fault.not_completion({"choices": [{"message": {"role": "assistant", "content": None}}]})],
                     FailureKind.MALFORMED, 200, 1, _NO_CONTENT, id="null-content"),
        pytest.param([Fault.not_completion({"choices": ["text"]})], FailureKind.MALFORMED, 200, 1, _NO_CONTENT,
                     id="choice-not-object"),
        pytest.param([Fault.not_completion([1, 2, 3])], FailureKind.MALFORMED, 200, 1,
                     re.escape("body is JSON list, not an object"), id="json-array"),
        pytest.param([Fault.not_completion("just a string")], FailureKind.MALFORMED, 200, 1,
                     re.escape("body is JSON str, not an object"), id="json-string"),
        pytest.param([Fault.drop(), OK], None, None, 2, None, id="dropped-then-ok"),
        pytest.param([Fault.drop()] * 3, FailureKind.CONNECT, None, 3, _DISCONNECTED, id="dropped-every-time"),
        pytest.param([Fault.http_status(500), Fault.drop(), Fault.http_status(400)], FailureKind.HTTP_STATUS,
                     400, 3, re.escape(f"HTTP 400: {error_body(400)}"), id="retry-then-permanent-4xx"),
    ],
)
def test_fault_table(
    server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate, sleeps: RecordingSleep,
    fast: ClientConfig, faults: list[Fault | None], kind: FailureKind | None, status: int | None, attempts: int,
    detail: str | None,
) -> None:
    server.push(*faults)
    result = run_one(make_client(), qwen)

    if kind is None:
        assert isinstance(result, CandidateReply), result
        assert result.text == expected_text(qwen)
        assert server.completions == 1
    else:
        assert isinstance(result, CandidateFailure), result
        assert (result.kind, result.status, result.model) == (kind, status, qwen.name), result.detail
        assert detail is not None and re.fullmatch(detail, result.detail, flags=re.DOTALL), result.detail
        assert server.completions == 0
    assert result.attempts == attempts
    assert server.total_requests == attempts  # one request per attempt, the same request each time
    assert server.requests == [(qwen.provider_model_id, candidate_messages(QUERY))] * attempts
    # One backoff between successive attempts, each exactly the full-jitter draw from the client's
    # seeded rng (make_client seeds it with 7); none of these faults carries a Retry-After.
    ref = random.Random(7)
    assert sleeps.delays == [fast.backoff_s(retry, ref) for retry in range(1, attempts)]


def test_429_retry_after_with_the_real_sleep(server: FakeOpenAIServer, qwen: Candidate, fast: ClientConfig) -> None:
    """The default path: the client waits the Retry-After with a real `asyncio.sleep` (wrapped here
    only to record what it was asked for), then retries the same request once. How long the wait
    really takes is a timing, measured in bench/candidates.py."""
    seen: list[RequestInfo] = []

    def first_is_rate_limited(info: RequestInfo) -> Fault | None:
        seen.append(info)
        return Fault.http_status(429, retry_after="0.1") if info.index == 0 else None

    asked: list[float] = []

    async def real_sleep(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(seconds)

    server.on_request = first_is_rate_limited
    result = run_one(OpenAIChatClient(fast, base_url=server.base_url, api_key="k", sleep=real_sleep), qwen)

    assert isinstance(result, CandidateReply)
    assert (result.attempts, result.text) == (2, expected_text(qwen))
    assert asked == [0.1]  # the honoured Retry-After, not a backoff draw
    assert [info.index for info in seen] == [0, 1]  # the retry came after the 429, and only one
    assert seen[1].body == seen[0].body
    assert (server.total_requests, server.completions) == (2, 1)


@pytest.mark.parametrize(
    ("retry_after", "expected_sleep"),
    [
        pytest.param("1", 1.0, id="delta-seconds"),
        pytest.param("0.25", 0.25, id="fractional-seconds"),
        pytest.param("120", 2.0, id="capped-by-max_retry_after_s"),
        pytest.param("0", 0.0, id="zero"),
    ],
)
def test_retry_after_delay(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate,
                           sleeps: RecordingSleep, retry_after: str, expected_sleep: float) -> None:
    server.push(Fault.http_status(429, retry_after=retry_after))
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply) and result.attempts == 2
    assert sleeps.delays == [expected_sleep]  # the header value, parsed exactly, or the cap


def test_retry_after_http_date_and_garbage() -> None:
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(7.0)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
    assert parse_retry_after("3", now=now.timestamp()) == 3.0
    for bad in (None, "", "soon", "-5", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_backoff_is_full_jitter_from_the_injected_rng(server: FakeOpenAIServer, make_client: MakeClient,
                                                      qwen: Candidate, sleeps: RecordingSleep,
                                                      fast: ClientConfig) -> None:
    config = dataclasses.replace(fast, max_attempts=5, backoff_base_s=0.1, backoff_max_s=0.3)
    server.push(*[Fault.http_status(503)] * 5)
    result = run_one(make_client(config, rng=random.Random(123)), qwen)
    assert isinstance(result, CandidateFailure) and result.attempts == 5

    ref = random.Random(123)
    ceilings = [0.1, 0.2, 0.3, 0.3]  # base * 2**(retry-1), capped at backoff_max_s
    assert sleeps.delays == [pytest.approx(ref.uniform(0, c)) for c in ceilings]

    no_jitter = dataclasses.replace(config, jitter=False)
    assert [no_jitter.backoff_s(r, random.Random(0)) for r in (1, 2, 3, 4)] == ceilings


def test_stall_past_read_timeout_is_retried_then_times_out(server: FakeOpenAIServer, make_client: MakeClient,
                                                           qwen: Candidate, fast: ClientConfig,
                                                           sleeps: RecordingSleep, stall_forever: Fault) -> None:
    # Both requests stall past the test timeout, so the only way the call can end is the client's
    # read timeout; its 0.3 s is short to keep the test quick, not because the test times it
    # (bench/candidates.py does).
    server.push(stall_forever, stall_forever)
    result = run_one(make_client(dataclasses.replace(fast, max_attempts=2, read_timeout_s=0.3)), qwen)

    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.TIMEOUT, None, 2)
    assert result.detail == "ReadTimeout"  # httpx's read timeout carries no message
    assert (server.total_requests, server.completions) == (2, 0)
    assert len(sleeps.delays) == 1  # one backoff between the two attempts


def test_stall_then_recovery(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate,
                             stall_forever: Fault, read_timeouts: Callable[..., Any]) -> None:
    # A short read timeout for the stalled first request only; the retry waits generously, so its
    # reply arrives however loaded the machine is.
    server.push(stall_forever, OK)
    transport = read_timeouts(0.3)
    result = run_one(make_client(transport=transport), qwen)
    assert isinstance(result, CandidateReply)
    assert (result.attempts, result.text) == (2, expected_text(qwen))
    assert transport.requests == 2
    assert (server.total_requests, server.completions) == (2, 1)


def test_missing_usage_is_estimated_locally(server: FakeOpenAIServer, make_client: MakeClient,
                                            qwen: Candidate) -> None:
    server.push(Fault.no_usage())
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply)
    assert result.usage_estimated is True
    assert result.text == expected_text(qwen)
    assert result.completion_tokens == approx_token_count(expected_text(qwen))
    assert result.prompt_tokens == estimate_prompt_tokens(candidate_messages(QUERY))
    # The estimate by hand: ceil(UTF-8 bytes / 4) per message, 4 framing tokens each, 3 priming.
    content = candidate_messages(QUERY)[0]["content"]
    assert result.prompt_tokens == -(-len(content.encode()) // 4) + 4 + 3


def test_missing_usage_uses_the_injected_token_counter(server: FakeOpenAIServer, make_client: MakeClient,
                                                       qwen: Candidate) -> None:
    server.push(Fault.no_usage())
    result = run_one(make_client(token_counter=lambda text: len(text.split())), qwen)
    assert isinstance(result, CandidateReply) and result.usage_estimated
    assert result.completion_tokens == len(expected_text(qwen).split())
    assert result.prompt_tokens == len(candidate_messages(QUERY)[0]["content"].split()) + 4 + 3


def test_partial_usage_is_completed_and_flagged(server: FakeOpenAIServer, make_client: MakeClient,
                                                qwen: Candidate) -> None:
    server.push(Fault.not_completion({
        "choices": [{"message": {"role": "assistant", "content": "Hemingway"}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": True},
    }))
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply) and result.usage_estimated
    assert (result.prompt_tokens, result.completion_tokens) == (40, approx_token_count("Hemingway"))


def test_dead_endpoint_fails_with_connect_after_every_attempt(qwen: Candidate, sleeps: RecordingSleep,
                                                              fast: ClientConfig) -> None:
    # A refused connect fails at once, so the call ends after its attempts and the (recorded)
    # backoffs between them; how long that takes in real time is in bench/candidates.py.
    client = OpenAIChatClient(fast, base_url=closed_port_url(), api_key="k", sleep=sleeps, rng=random.Random(3))
    result = run_one(client, qwen)
    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.CONNECT, None, fast.max_attempts)
    assert result.detail == "ConnectError: All connection attempts failed"
    ref = random.Random(3)
    assert sleeps.delays == [fast.backoff_s(retry, ref) for retry in range(1, fast.max_attempts)]


def test_env_resolution(server: FakeOpenAIServer, qwen: Candidate, fast: ClientConfig) -> None:
    ep = qwen.endpoint
    base, key = ep.base_url_env, ep.api_key_env
    not_set = "env var(s) {} not set for model 'Qwen2.5-7B-Instruct'"
    cases: list[tuple[dict[str, str], str | None]] = [
        ({}, not_set.format(f"{base}, {key}")),
        ({base: server.base_url}, not_set.format(key)),
        ({key: "k"}, not_set.format(base)),
        ({base: "  ", key: "k"}, not_set.format(base)),
        ({base: "ftp://example.invalid", key: "k"},
         "base URL for model 'Qwen2.5-7B-Instruct' must start with http:// or https://, got 'ftp://example.invalid'"),
        ({base: server.base_url + "/", key: "k"}, None),
    ]
    for env, detail in cases:
        result = run_one(OpenAIChatClient(fast, env=env), qwen)
        if detail is None:
            assert isinstance(result, CandidateReply), (env, result)
        else:
            assert isinstance(result, CandidateFailure), (env, result)
            assert (result.kind, result.status, result.attempts, result.detail) == (
                FailureKind.NOT_CONFIGURED, None, 0, detail), env
    assert server.total_requests == 1  # only the configured case reached the server


def test_empty_explicit_api_key_sends_no_authorization(server: FakeOpenAIServer, make_client: MakeClient,
                                                       qwen: Candidate) -> None:
    headers: list[dict[str, str]] = []
    server.on_request = lambda info: headers.append(info.headers)  # type: ignore[func-returns-value]
    assert isinstance(run_one(make_client(api_key=""), qwen), CandidateReply)
    assert "authorization" not in headers[0]


def test_request_budget_refusal_makes_no_http_call(server: FakeOpenAIServer, make_client: MakeClient,
                                                   qwen: Candidate) -> None:
    result = run_one(make_client(), qwen, context=CallContext(budget=RequestBudget(0.0)))
    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.BUDGET, None, 0)
    assert result.detail == "request budget spent: $0.000000 of $0.000000"
    assert server.total_requests == 0


def test_run_budget_refuses_once_spent(server: FakeOpenAIServer, make_client: MakeClient,
                                       qwen: Candidate) -> None:
    run = RunBudget(1e-9)  # any successful call spends more than this

    async def go() -> list[CallResult]:
        async with make_client() as client:
            out = []
            for _ in range(3):
                out.append(await client.call(qwen, QUERY, CallContext(budget=RequestBudget(None, run=run))))
            return out

    first, second, third = asyncio.run(go())
    assert isinstance(first, CandidateReply)
    assert run.spent_usd == pytest.approx(qwen.cost_usd(first.completion_tokens))
    for refused in (second, third):
        assert isinstance(refused, CandidateFailure)
        assert (refused.kind, refused.attempts) == (FailureKind.BUDGET, 0)
        assert refused.detail == f"run budget spent: ${run.spent_usd:.6f} of $0.000000"
    assert server.total_requests == 1
    assert run.refusals == 2


def test_budget_is_charged_the_pool_price(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate,
                                          fast: ClientConfig) -> None:
    completion_only = RequestBudget(None)
    reply = run_one(make_client(), qwen, context=CallContext(budget=completion_only))
    assert isinstance(reply, CandidateReply)
    assert completion_only.spent_usd == pytest.approx(reply.completion_tokens * 0.30 / 1e6)

    with_prompt = RequestBudget(None)
    config = dataclasses.replace(fast, include_prompt_cost=True)
    reply = run_one(make_client(config), qwen, context=CallContext(budget=with_prompt))
    assert isinstance(reply, CandidateReply)
    assert with_prompt.spent_usd == pytest.approx((reply.completion_tokens + reply.prompt_tokens) * 0.30 / 1e6)


def test_failures_are_not_charged(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate) -> None:
    budget = RequestBudget(1.0)
    server.push(Fault.http_status(400))
    result = run_one(make_client(), qwen, context=CallContext(budget=budget))
    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.HTTP_STATUS, 400, 1)
    assert budget.spent_usd == 0.0 and budget.calls == 0


def test_concurrency_limit_is_reached_and_never_exceeded(make_client: MakeClient, qwen: Candidate,
                                                         fast: ClientConfig, gated_server: GatedFactory) -> None:
    # The gate holds every request until 4 are in flight at once: reaching it proves the client
    # used its 4 slots together; the semaphore makes 4 an upper bound. That 32 calls through 4
    # slots take 8 round trips of server latency is a timing: bench/candidates.py.
    config = dataclasses.replace(fast, max_concurrency=4)
    gated = gated_server(4)

    async def go() -> list[CallResult]:
        async with make_client(config, base_url=gated.base_url) as client:
            return await asyncio.gather(*(client.call(qwen, f"{QUERY} #{i}") for i in range(32)))

    results = asyncio.run(go())
    assert not gated.timed_out, gated.gate_message()
    assert [r.text if isinstance(r, CandidateReply) else r for r in results] == [
        expected_text(qwen, f"{QUERY} #{i}") for i in range(32)]
    assert (gated.total_requests, gated.completions) == (32, 32)
    assert gated.max_in_flight == 4
    # Keep-alive: one connection per slot, reused. The gate forced 4 open at once and the pool
    # holds at most 4 (a reopen would need a connection idle past httpx's 5 s keep-alive expiry
    # in the middle of a burst).
    assert gated.connections == 4


def test_concurrency_limit_holds_across_pool_shards(make_client: MakeClient, qwen: Candidate,
                                                    fast: ClientConfig, gated_server: GatedFactory) -> None:
    config = dataclasses.replace(fast, max_concurrency=10, connections_per_pool=4)  # 3 pools of 4
    gated = gated_server(10)

    async def go() -> list[CallResult]:
        async with make_client(config, base_url=gated.base_url) as client:
            return await asyncio.gather(*(client.call(qwen, f"{QUERY} #{i}") for i in range(60)))

    results = asyncio.run(go())
    assert not gated.timed_out, gated.gate_message()
    assert [r.text if isinstance(r, CandidateReply) else r for r in results] == [
        expected_text(qwen, f"{QUERY} #{i}") for i in range(60)]
    assert (gated.total_requests, gated.completions) == (60, 60)
    assert gated.max_in_flight == 10
    # At least 10 sockets (10 in flight at the gate), never more than the pools' combined size;
    # the exact count depends on which shard each later request lands on, i.e. on completion order.
    assert 10 <= gated.connections <= 12


def test_client_survives_reuse_across_event_loops(server: FakeOpenAIServer, make_client: MakeClient,
                                                  qwen: Candidate) -> None:
    client = make_client()  # built outside any loop, used by two successive asyncio.run calls
    first = asyncio.run(client.call(qwen, QUERY))

    async def call_and_close() -> CallResult:
        async with client:
            return await client.call(qwen, QUERY)

    second = asyncio.run(call_and_close())
    assert isinstance(first, CandidateReply) and isinstance(second, CandidateReply)
    with warnings.catch_warnings():
        # The first loop's keep-alive sockets could not be closed from the second loop; they are
        # released on collection. Collect here so the warning does not surface in a later test.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert server.total_requests == 2


def test_closed_client_fails_without_raising(make_client: MakeClient, qwen: Candidate) -> None:
    async def go() -> CallResult:
        client = make_client()
        await client.aclose()
        await client.aclose()  # idempotent
        return await client.call(qwen, QUERY)

    result = asyncio.run(go())
    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts, result.detail) == (
        FailureKind.NOT_CONFIGURED, None, 0, "client is closed")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_concurrency": 0}, "max_concurrency must be >= 1, got 0"),
    ({"connections_per_pool": 0}, "connections_per_pool must be >= 1, got 0"),
    ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
    ({"read_timeout_s": 0}, "read_timeout_s must be > 0, got 0"),
    ({"connect_timeout_s": -1}, "connect_timeout_s must be > 0, got -1"),
    ({"backoff_base_s": -0.1}, "backoff_base_s must be >= 0, got -0.1"),
    ({"max_retry_after_s": -1}, "max_retry_after_s must be >= 0, got -1"),
])
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ClientConfig(**kwargs)
