"""OpenAIChatClient against the loopback fake server: success, retries, faults, budgets, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
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
from routerops.pool import Candidate
from routerops.testing.fakeserver import FakeOpenAIServer, Fault, RecordingSleep, RequestInfo, closed_port_url

pytestmark = pytest.mark.timeout(30)

MakeClient = Callable[..., OpenAIChatClient]
QUERY = "Who wrote The Old Man and the Sea?"


def run_one(client: OpenAIChatClient, candidate: Candidate, query: str = QUERY,
            context: CallContext | None = None) -> CallResult:
    async def go() -> CallResult:
        async with client:
            return await client.call(candidate, query, context)

    return asyncio.run(go())


def test_success_with_usage(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate) -> None:
    seen: list[RequestInfo] = []

    def record(info: RequestInfo) -> None:
        seen.append(info)

    server.on_request = record
    result = run_one(make_client(), qwen)

    assert isinstance(result, CandidateReply)
    assert result.model == qwen.name
    assert result.text.startswith(f"Answer from {qwen.provider_model_id}")
    assert (result.attempts, result.origin, result.usage_estimated) == (1, "http", False)
    assert result.completion_tokens == len(result.text.split())  # the server's usage, not our estimate
    assert result.prompt_tokens == sum(len(m["content"].split()) for m in candidate_messages(QUERY))
    assert result.latency_s > 0
    assert server.total_requests == 1 and server.per_model == {qwen.provider_model_id: 1}
    assert server.requests == [(qwen.provider_model_id, candidate_messages(QUERY))]
    body = seen[0].body
    assert body["model"] == qwen.provider_model_id
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (
        qwen.sampling.temperature, qwen.sampling.top_p, qwen.sampling.seed, qwen.max_tokens)
    assert seen[0].headers["authorization"] == "Bearer test-key"


OK = None  # a scripted normal reply


@pytest.mark.parametrize(
    ("faults", "kind", "status", "attempts", "requests"),
    [
        pytest.param([Fault.http_status(500)] * 3, FailureKind.HTTP_STATUS, 500, 3, 3, id="500-exhausts-attempts"),
        pytest.param([Fault.http_status(503)] * 3, FailureKind.HTTP_STATUS, 503, 3, 3, id="503-exhausts-attempts"),
        pytest.param([Fault.http_status(502), OK], None, None, 2, 2, id="502-then-ok"),
        pytest.param([Fault.http_status(429), OK], None, None, 2, 2, id="429-no-retry-after-then-ok"),
        pytest.param([Fault.http_status(408), OK], None, None, 2, 2, id="408-retried"),
        pytest.param([Fault.http_status(409), OK], None, None, 2, 2, id="409-retried"),
        pytest.param([Fault.http_status(400)], FailureKind.HTTP_STATUS, 400, 1, 1, id="400-at-once"),
        pytest.param([Fault.http_status(401)], FailureKind.HTTP_STATUS, 401, 1, 1, id="401-at-once"),
        pytest.param([Fault.http_status(403)], FailureKind.HTTP_STATUS, 403, 1, 1, id="403-at-once"),
        pytest.param([Fault.http_status(404)], FailureKind.HTTP_STATUS, 404, 1, 1, id="404-at-once"),
        pytest.param([Fault.http_status(422)], FailureKind.HTTP_STATUS, 422, 1, 1, id="422-at-once"),
        pytest.param([Fault.malformed_json()], FailureKind.MALFORMED, 200, 1, 1, id="truncated-json"),
        pytest.param([Fault.not_completion()], FailureKind.MALFORMED, 200, 1, 1, id="json-without-choices"),
        pytest.param([Fault.not_completion({"choices": []})], FailureKind.MALFORMED, 200, 1, 1,
                     id="empty-choices"),
        pytest.param([Fault.not_completion({"choices": [{"message": {"role": "assistant", "content": None}}]})],
                     FailureKind.MALFORMED, 200, 1, 1, id="null-content"),
        pytest.param([Fault.not_completion({"choices": ["text"]})], FailureKind.MALFORMED, 200, 1, 1,
                     id="choice-not-object"),
        pytest.param([Fault.not_completion([1, 2, 3])], FailureKind.MALFORMED, 200, 1, 1, id="json-array"),
        pytest.param([Fault.not_completion("just a string")], FailureKind.MALFORMED, 200, 1, 1,
                     id="json-string"),
        pytest.param([Fault.drop(), OK], None, None, 2, 2, id="dropped-then-ok"),
        pytest.param([Fault.drop()] * 3, FailureKind.CONNECT, None, 3, 3, id="dropped-every-time"),
        pytest.param([Fault.http_status(500), Fault.drop(), Fault.http_status(400)], FailureKind.HTTP_STATUS,
                     400, 3, 3, id="retry-then-permanent-4xx"),
    ],
)
def test_fault_table(
    server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate, sleeps: RecordingSleep,
    faults: list[Fault | None], kind: FailureKind | None, status: int | None, attempts: int, requests: int,
) -> None:
    server.push(*faults)
    result = run_one(make_client(), qwen)

    if kind is None:
        assert isinstance(result, CandidateReply), result
    else:
        assert isinstance(result, CandidateFailure), result
        assert (result.kind, result.status) == (kind, status), result.detail
        assert result.detail
    assert result.attempts == attempts
    assert server.total_requests == requests
    assert len(sleeps.delays) == attempts - 1  # one backoff between successive attempts


def test_429_retry_after_is_honoured_in_real_time(server: FakeOpenAIServer, qwen: Candidate,
                                                   fast: ClientConfig) -> None:
    server.push(Fault.http_status(429, retry_after=1))
    client = OpenAIChatClient(fast, base_url=server.base_url, api_key="k")  # real asyncio.sleep
    t0 = time.perf_counter()
    result = run_one(client, qwen)
    elapsed = time.perf_counter() - t0

    assert isinstance(result, CandidateReply)
    assert result.attempts == 2
    assert 1.0 <= elapsed < 3.0
    assert result.latency_s >= 1.0


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
    assert sleeps.delays == [pytest.approx(expected_sleep)]


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
                                                           qwen: Candidate, fast: ClientConfig) -> None:
    server.push(Fault.stall(30), Fault.stall(30))
    t0 = time.perf_counter()
    result = run_one(make_client(dataclasses.replace(fast, max_attempts=2)), qwen)
    elapsed = time.perf_counter() - t0

    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.TIMEOUT, None, 2)
    assert server.total_requests == 2
    assert 0.6 <= elapsed < 2.0  # two read timeouts of 0.3 s, nothing more


def test_stall_then_recovery(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate) -> None:
    server.push(Fault.stall(30), OK)
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply) and result.attempts == 2


def test_missing_usage_is_estimated_locally(server: FakeOpenAIServer, make_client: MakeClient,
                                            qwen: Candidate) -> None:
    server.push(Fault.no_usage())
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply)
    assert result.usage_estimated is True
    assert result.completion_tokens == approx_token_count(result.text) > 0
    assert result.prompt_tokens == estimate_prompt_tokens(candidate_messages(QUERY)) > 0


def test_missing_usage_uses_the_injected_token_counter(server: FakeOpenAIServer, make_client: MakeClient,
                                                       qwen: Candidate) -> None:
    server.push(Fault.no_usage())
    result = run_one(make_client(token_counter=lambda text: len(text.split())), qwen)
    assert isinstance(result, CandidateReply) and result.usage_estimated
    assert result.completion_tokens == len(result.text.split())


def test_partial_usage_is_completed_and_flagged(server: FakeOpenAIServer, make_client: MakeClient,
                                                qwen: Candidate) -> None:
    server.push(Fault.not_completion({
        "choices": [{"message": {"role": "assistant", "content": "Hemingway"}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": True},
    }))
    result = run_one(make_client(), qwen)
    assert isinstance(result, CandidateReply) and result.usage_estimated
    assert (result.prompt_tokens, result.completion_tokens) == (40, approx_token_count("Hemingway"))


def test_dead_endpoint_fails_with_connect_in_bounded_time(qwen: Candidate, sleeps: RecordingSleep,
                                                          fast: ClientConfig) -> None:
    client = OpenAIChatClient(fast, base_url=closed_port_url(), api_key="k", sleep=sleeps)
    t0 = time.perf_counter()
    result = run_one(client, qwen)
    assert isinstance(result, CandidateFailure)
    assert (result.kind, result.status, result.attempts) == (FailureKind.CONNECT, None, fast.max_attempts)
    assert time.perf_counter() - t0 < 2.0


def test_env_resolution(server: FakeOpenAIServer, qwen: Candidate, fast: ClientConfig) -> None:
    ep = qwen.endpoint
    cases: list[tuple[dict[str, str], FailureKind | None, str]] = [
        ({}, FailureKind.NOT_CONFIGURED, ep.base_url_env),
        ({ep.base_url_env: server.base_url}, FailureKind.NOT_CONFIGURED, ep.api_key_env),
        ({ep.api_key_env: "k"}, FailureKind.NOT_CONFIGURED, ep.base_url_env),
        ({ep.base_url_env: "  ", ep.api_key_env: "k"}, FailureKind.NOT_CONFIGURED, ep.base_url_env),
        ({ep.base_url_env: "ftp://example.invalid", ep.api_key_env: "k"}, FailureKind.NOT_CONFIGURED, "http"),
        ({ep.base_url_env: server.base_url + "/", ep.api_key_env: "k"}, None, ""),
    ]
    for env, kind, mentioned in cases:
        result = run_one(OpenAIChatClient(fast, env=env), qwen)
        if kind is None:
            assert isinstance(result, CandidateReply), (env, result)
        else:
            assert isinstance(result, CandidateFailure) and result.kind is kind, (env, result)
            assert result.attempts == 0 and mentioned in result.detail
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
    assert (result.kind, result.attempts) == (FailureKind.BUDGET, 0)
    assert "request budget" in result.detail
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
        assert isinstance(refused, CandidateFailure) and refused.kind is FailureKind.BUDGET
        assert "run budget" in refused.detail
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
    assert budget.spent_usd == 0.0 and budget.calls == 0


def test_concurrency_limit_is_respected(server: FakeOpenAIServer, make_client: MakeClient, qwen: Candidate,
                                        fast: ClientConfig) -> None:
    server.latency_s = 0.05
    config = dataclasses.replace(fast, max_concurrency=4)

    async def go() -> list[CallResult]:
        async with make_client(config) as client:
            return await asyncio.gather(*(client.call(qwen, f"{QUERY} #{i}") for i in range(32)))

    t0 = time.perf_counter()
    results = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    assert all(isinstance(r, CandidateReply) for r in results)
    assert server.total_requests == 32
    assert server.max_in_flight == 4
    assert server.connections <= 4  # keep-alive: one connection per slot, reused
    assert elapsed >= 32 / 4 * 0.05 * 0.9


def test_concurrency_limit_holds_across_pool_shards(server: FakeOpenAIServer, make_client: MakeClient,
                                                    qwen: Candidate, fast: ClientConfig) -> None:
    server.latency_s = 0.05
    config = dataclasses.replace(fast, max_concurrency=10, connections_per_pool=4)  # 3 pools of 4

    async def go() -> list[CallResult]:
        async with make_client(config) as client:
            return await asyncio.gather(*(client.call(qwen, f"{QUERY} #{i}") for i in range(60)))

    results = asyncio.run(go())
    assert all(isinstance(r, CandidateReply) for r in results)
    assert server.max_in_flight == 10
    assert server.connections <= 12  # never more than the pools' combined size


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
    assert isinstance(result, CandidateFailure) and result.kind is FailureKind.NOT_CONFIGURED


def test_config_validation() -> None:
    bad: list[dict[str, Any]] = [
        {"max_concurrency": 0}, {"connections_per_pool": 0}, {"max_attempts": 0}, {"read_timeout_s": 0},
        {"connect_timeout_s": -1}, {"backoff_base_s": -0.1}, {"max_retry_after_s": -1},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            ClientConfig(**kwargs)
