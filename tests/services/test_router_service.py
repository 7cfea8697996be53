"""The packaged router over real HTTP: `bentoml serve` of the built Bento, the official openai client.

Every service here is started by the `serve` fixture from a scratch directory (never a checkout)
and stopped after the test. Nothing asserts timing: concurrency and shutdown are driven by a
loopback candidate server that holds requests until the test releases them.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import openai
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from routerops.candidates.types import CallOrigin
from routerops.packaging import load_package
from routerops.pool import load_pool
from routerops.rewards import CallUsage, cost_usd
from routerops.testing.fakeserver import FakeOpenAIServer, Fault

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the session fixture trains and packages once

QUESTION = "who wrote i will follow you into the dark"  # a question of the replay matrix (gold: Ben Gibbard)


def metric(text: str, name: str, **labels: str) -> float:
    """One Prometheus sample's value (0 when absent); BentoML's own labels are ignored."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric_name, _, rest = series.partition("{")
        got = sorted(p for p in rest.rstrip("}").split(",") if p)
        if metric_name == name and got == want:
            return float(value)
    return 0.0


def client(svc, key) -> OpenAI:
    return OpenAI(base_url=f"{svc.base_url}/v1", api_key=key.secret, max_retries=0, timeout=120)


def assert_bill_is_exact(bill: dict, pool) -> None:
    usages = [CallUsage(c["model"], c["completion_tokens"], c["prompt_tokens"]) for c in bill["calls"]
              if c["outcome"] in {o.value for o in (CallOrigin.REPLAY_PRIOR, CallOrigin.REPLAY_RECORDED,
                                                     CallOrigin.HTTP, CallOrigin.CACHE)}]
    assert bill["total_usd"] == pytest.approx(cost_usd(usages, pool), rel=1e-12, abs=0)
    assert bill["total_usd"] == pytest.approx(sum(c["usd"] for c in bill["calls"]), rel=1e-12, abs=0)


def test_sync_async_and_streaming_clients_get_answers_with_exact_bills(packaged, serve, key) -> None:
    svc = serve()
    pool = load_pool(packaged.project / "pool.yaml")
    model = packaged.record.model_tag
    c = client(svc, key)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": QUESTION}]
    raw = c.chat.completions.with_raw_response.create(model=model, messages=messages)
    resp = raw.parse()
    bill = resp.model_extra["routerops"]
    assert resp.object == "chat.completion" and resp.model == model and resp.choices[0].message.role == "assistant"
    assert isinstance(resp.choices[0].message.content, str)
    assert bill["router_version"] == packaged.record.version and bill["ignored_messages"] == 3
    assert (bill["pool_snapshot"], bill["pricing_id"]) == (pool.snapshot_id, pool.pricing.id)
    assert_bill_is_exact(bill, pool)
    assert raw.headers["x-routerops-router-version"] == packaged.record.version
    assert float(raw.headers["x-routerops-cost-usd"]) == pytest.approx(bill["total_usd"], abs=1e-10)
    assert re.fullmatch(r"episode;dur=\d+\.\d{3}", raw.headers["server-timing"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0
    # Greedy router, deterministic replay pool: the same question gets the same episode every time.
    again = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}])
    assert again.choices[0].message.content == resp.choices[0].message.content
    assert again.model_extra["routerops"]["calls"] == bill["calls"]
    assert again.model_extra["routerops"]["ignored_messages"] == 0

    async def ask_async() -> list:
        ac = AsyncOpenAI(base_url=f"{svc.base_url}/v1", api_key=key.secret, max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(ac.chat.completions.create(
                model=model, messages=[{"role": "user", "content": QUESTION}]) for _ in range(3)))
        finally:
            await ac.close()

    for r in asyncio.run(ask_async()):
        assert r.choices[0].message.content == resp.choices[0].message.content

    stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == resp.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == resp.usage.total_tokens
    finish = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["routerops"]["calls"] == bill["calls"]
    no_usage = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                              stream=True))
    assert all(ch.usage is None for ch in no_usage)

    models = c.models.list()
    assert [m.id for m in models.data] == [model]


def test_the_bento_runs_its_own_code_not_the_checkouts(packaged, serve, key, repo_root) -> None:
    svc = serve()
    line = next(ln for ln in svc.log_tail().splitlines() if "with code from" in ln)
    code_dir = line.split("with code from ", 1)[1].split(";", 1)[0]
    assert code_dir.startswith(str(packaged.home / "bentos")) and code_dir.endswith("/src/routerops")
    assert not code_dir.startswith(str(repo_root)) and not code_dir.startswith(str(packaged.project) + "/routerops")


@pytest.fixture(scope="module")
def routed(packaged) -> str:
    """A test question whose evaluated episode called a candidate first (greedy decoding: the
    first turn depends on the prompt alone, so it routes again whenever it is asked)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(packaged.project / "artifacts" / "evaluation" / "trajectories.parquet").to_pylist()
    return next(r["question"] for r in rows if r["system"] == "router" and r["calls"]
                and r["calls"][0]["origin"] != "unknown_model")


def _post(svc, body: bytes | dict, key=None, **headers: str) -> httpx.Response:
    h = {"content-type": "application/json", **headers}
    if key is not None:
        h["authorization"] = f"Bearer {key.secret}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{svc.base_url}/v1/chat/completions", content=data, headers=h, timeout=120)


def test_bad_requests_get_openai_errors_with_exact_messages(packaged, serve, key) -> None:
    svc = serve()
    model = packaged.record.model_tag
    user = [{"role": "user", "content": QUESTION}]
    long_question = "why " * 3000
    cases = [
        (b"{not json", 400, None, "the request body is not valid JSON: Expecting property name enclosed in double "
                                  "quotes: line 1 column 2 (char 1)"),
        (b"[1, 2]", 400, None, "the request body must be a JSON object"),
        ({"model": model}, 400, "messages", "messages: Field required"),
        ({"model": model, "messages": []}, 400, "messages", "messages: List should have at least 1 item after "
                                                            "validation, not 0"),
        ({"model": model, "messages": [{"role": "system", "content": "x"}]}, 400, "messages",
         "messages has no user message: the question is the last user message"),
        ({"model": model, "messages": [{"role": "user", "content": "   "}]}, 400, "messages",
         "the last user message is empty: there is no question to answer"),
        ({"model": model, "messages": [{"role": "user", "content": long_question}]}, 400, "messages",
         "the question makes a router prompt of {tokens} tokens; this router takes at most 2048 (shorten the question)"),
        ({"model": "gpt-9", "messages": user}, 404, "model",
         f"the model 'gpt-9' does not exist; this service serves '{model}'"),
        ({"model": model, "messages": user, "n": 2}, 400, "n",
         "n: Value error, n must be 1 (one routed answer per request), got 2"),
        ({"model": model, "messages": user, "temperature": "hot"}, 400, "temperature",
         "temperature: Input should be a valid number, unable to parse string as a number"),
        ({"model": model, "messages": user, "frobnicate": 1}, 400, "frobnicate",
         "frobnicate: Extra inputs are not permitted"),
        ({"model": model, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role",
         "messages.0.role: Input should be 'system', 'developer', 'user', 'assistant' or 'tool'"),
        ({"model": model, "messages": user, "routerops": {"max_usd": -1}}, 400, "routerops.max_usd",
         "routerops.max_usd: Input should be greater than or equal to 0"),
        ({"model": model, "messages": user, "routerops": {"route_to": ["GPT-9"]}}, 400, "routerops.route_to",
         "route_to names 'GPT-9', not in the pool (Qwen2.5-7B-Instruct, LLaMA-3.1-8B-Instruct, "
         "LLaMA-3.1-70B-Instruct, Mistral-7B-Instruct, Mixtral-8x22B-Instruct, Gemma-2-27B-Instruct)"),
    ]
    for body, status, param, message in cases:
        r = _post(svc, body, key)
        err = r.json()["error"]
        if "{tokens}" in message:
            tokens = int(err["message"].split(" tokens;")[0].rsplit(" ", 1)[1])
            assert tokens > 2048
            message = message.format(tokens=tokens)
            assert err["code"] == "context_length_exceeded"
        assert (r.status_code, err["message"], err["param"], err["type"]) == (status, message, param,
                                                                              "invalid_request_error"), body
    unknown_path = httpx.get(f"{svc.base_url}/v1/nothing", timeout=30)
    assert (unknown_path.status_code, unknown_path.json()["error"]) == (404, {
        "message": "unknown endpoint /v1/nothing: this service serves /v1/chat/completions and /v1/models",
        "type": "invalid_request_error", "param": None, "code": "unknown_url"})
    # the official client raises its typed errors on the same replies
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(svc, key).chat.completions.create(model="gpt-9", messages=user)


def test_missing_wrong_and_revoked_keys_get_401(packaged, serve, keys, key) -> None:
    svc = serve()
    body = {"model": packaged.record.model_tag, "messages": [{"role": "user", "content": QUESTION}]}
    other = keys.create("revoked")
    keys.revoke(other.record.key_id)
    missing = _post(svc, body)
    wrong = _post(svc, body, authorization="Bearer rk-00000000-" + "x" * 43)
    revoked = _post(svc, body, other)
    assert [(r.status_code, r.json()["error"]["code"]) for r in (missing, wrong, revoked)] == [
        (401, "invalid_api_key")] * 3
    assert missing.json()["error"]["message"] == ("missing API key: send `Authorization: Bearer <key>` (create one "
                                                  "with `routerops keys create`)")
    assert wrong.json()["error"]["message"] == revoked.json()["error"]["message"] == "incorrect or revoked API key"
    with pytest.raises(openai.AuthenticationError, match="incorrect or revoked API key"):
        OpenAI(base_url=f"{svc.base_url}/v1", api_key="rk-nope", max_retries=0).chat.completions.create(
            model=packaged.record.model_tag, messages=[{"role": "user", "content": QUESTION}])
    assert _post(svc, body, key).status_code == 200


def test_a_keys_budget_caps_its_requests_and_stays_exhausted_after_a_restart(packaged, serve, keys, routed) -> None:
    pool = load_pool(packaged.project / "pool.yaml")
    body = {"model": packaged.record.model_tag, "messages": [{"role": "user", "content": routed}]}
    svc = serve()
    probe = keys.create("probe")
    first = _post(svc, body, probe).json()["routerops"]["calls"][0]
    assert first["usd"] > 0  # the episode's first call is paid
    budget = first["usd"] / 2  # the first call is admitted (nothing spent yet) and crosses the budget
    limited = keys.create("limited", budget_usd=budget)
    r = _post(svc, body, limited)
    bill = r.json()["routerops"]
    assert r.status_code == 200 and bill["budget_usd"] == pytest.approx(budget)
    assert_bill_is_exact(bill, pool)
    assert (bill["calls"][0]["model"], bill["calls"][0]["usd"]) == (first["model"], first["usd"])
    assert {(c["outcome"], c["failure"]) for c in bill["calls"][1:]} <= {("failed", "budget")}  # all refused
    spent = keys.get(limited.record.key_id)
    assert spent.spent_usd == pytest.approx(bill["total_usd"]) and spent.exhausted and spent.requests == 1
    quota = _post(svc, body, limited)
    assert (quota.status_code, quota.json()["error"]["code"], quota.headers["x-should-retry"]) == (
        429, "insufficient_quota", "false")
    assert quota.json()["error"]["message"] == (f"API key {limited.record.key_id!r} has spent ${spent.spent_usd:.6f} "
                                                f"of its ${budget:.6f} budget")
    svc.stop()
    restarted = serve()
    again = _post(restarted, body, limited)
    assert (again.status_code, again.json()["error"]["message"]) == (429, quota.json()["error"]["message"])
    assert keys.get(limited.record.key_id).spent_usd == pytest.approx(spent.spent_usd)


def test_a_request_budget_refuses_calls_and_says_so(packaged, serve, key) -> None:
    svc = serve()
    r = _post(svc, {"model": packaged.record.model_tag, "messages": [{"role": "user", "content": QUESTION}],
                    "routerops": {"max_usd": 0}}, key)
    bill = r.json()["routerops"]
    assert r.status_code == 200 and bill["total_usd"] == 0.0 and bill["budget_usd"] == 0.0
    assert bill["budget_refusals"] == len(bill["calls"]) >= 1
    assert {(c["outcome"], c["failure"]) for c in bill["calls"]} == {("failed", "budget")}
    assert bill["calls"][0]["detail"] == "request budget spent: $0.000000 of $0.000000"


def test_route_to_restricts_the_candidates(packaged, serve, key) -> None:
    svc = serve()
    r = _post(svc, {"model": packaged.record.model_tag, "messages": [{"role": "user", "content": QUESTION}],
                    "routerops": {"route_to": ["Qwen2.5-7B-Instruct"]}}, key)
    calls = r.json()["routerops"]["calls"]
    assert r.status_code == 200
    # only Qwen can be called; anything else the router names is an unknown model, at zero cost
    assert all(c["model"] == "Qwen2.5-7B-Instruct" or (c["outcome"], c["usd"]) == ("unknown_model", 0.0)
               for c in calls)


def _held_candidates(hold: threading.Event) -> FakeOpenAIServer:
    return FakeOpenAIServer(hold=hold).start()


def _candidate_env(server: FakeOpenAIServer) -> dict[str, str]:
    return {"ROUTEROPS_CANDIDATE_BASE_URL": server.base_url, "ROUTEROPS_CANDIDATE_API_KEY": "k"}


def _wait_for(predicate, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.02)


def test_a_flood_beyond_the_limit_gets_429_with_retry_after_and_no_500(packaged, openai_packaged, serve, key,
                                                                        routed) -> None:
    hold = threading.Event()
    fake = _held_candidates(hold)
    try:
        limit = yaml.safe_load((packaged.project / "params-openai.yaml").read_text())["serve"]["max_concurrency"]
        assert limit == 2
        svc = serve(bento=openai_packaged.bento_tag, env=_candidate_env(fake))
        body = {"model": openai_packaged.model_tag, "messages": [{"role": "user", "content": routed}]}
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(_post(svc, body, key)))
                   for _ in range(limit)]
        for t in threads:
            t.start()
        _wait_for(lambda: fake.in_flight == limit, "two requests held at the candidate")
        refused = [_post(svc, body, key) for _ in range(6)]
        assert {(r.status_code, r.headers.get("retry-after"), r.json()["error"]["code"]) for r in refused} == {
            (429, "1", "rate_limit_exceeded")}
        hold.set()
        for t in threads:
            t.join(timeout=120)
        assert [r.status_code for r in results] == [200, 200]
        assert refused[0].json()["error"]["message"] == ("the router is answering 2 requests, its limit; retry "
                                                         "after 1 s")
        metrics = httpx.get(f"{svc.base_url}/metrics", timeout=30).text
        assert metric(metrics, "routerops_refusals_total", reason="overload") == 6
        assert metric(metrics, "routerops_requests_total", status="429") == 6
        assert metric(metrics, "routerops_requests_total", status="200") == 2
        assert metric(metrics, "routerops_requests_total", status="500") == 0
    finally:
        hold.set()
        fake.stop()


def test_a_candidate_outage_is_a_typed_error_with_the_partial_bill(packaged, openai_packaged, serve, key,
                                                                   routed) -> None:
    pool = load_pool(packaged.project / "pool.yaml")
    fake = FakeOpenAIServer(on_request=lambda req: Fault.http_status(503)).start()  # every candidate is down
    try:
        svc = serve(bento=openai_packaged.bento_tag, env=_candidate_env(fake))
        r = _post(svc, {"model": openai_packaged.model_tag, "messages": [{"role": "user", "content": routed}]}, key)
        err = r.json()
        assert (r.status_code, err["error"]["type"], err["error"]["code"]) == (502, "upstream_error", "http_status")
        bill = err["routerops"]
        failed = [c for c in bill["calls"] if c["outcome"] == "failed"]
        assert len(failed) == fake.total_requests >= 1  # one attempt per call (params max_attempts 1)
        assert {(c["failure"], c["usd"]) for c in failed} == {("http_status", 0.0)}
        first = failed[0]
        assert err["error"]["message"] == (
            f"candidate {first['model']} failed during the episode (http_status: {first['detail']}); "
            f"{len(failed)} of {len(bill['calls'])} calls failed, the bill covers the calls made")
        assert_bill_is_exact(bill, pool)
        assert float(r.headers["x-routerops-cost-usd"]) == pytest.approx(bill["total_usd"], abs=1e-10)
    finally:
        fake.stop()


def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(packaged, openai_packaged, serve, keys,
                                                                       key, routed) -> None:
    hold = threading.Event()
    fake = _held_candidates(hold)
    try:
        svc = serve(bento=openai_packaged.bento_tag, env=_candidate_env(fake))
        body = {"model": openai_packaged.model_tag, "messages": [{"role": "user", "content": routed}]}
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(_post(svc, body, key)))
        worker.start()
        _wait_for(lambda: fake.in_flight == 1, "the request held at the candidate")
        svc.terminate()
        _wait_for(lambda: "SIGTERM: finishing 1 request(s) in flight, refusing new ones" in svc.log_tail(),
                  "the worker to log the SIGTERM")
        late: list[httpx.Response | httpx.TransportError] = []

        def send_late() -> None:
            try:
                late.append(_post(svc, body, key))
            except httpx.TransportError as exc:  # queued on the listen socket, reset at exit
                late.append(exc)

        latecomer = threading.Thread(target=send_late)
        latecomer.start()
        hold.set()
        worker.join(timeout=120)
        latecomer.join(timeout=120)
        assert [r.status_code for r in first] == [200]
        assert svc.wait(timeout_s=120) == 0
        # The late request was refused, whichever way it met the stopping server: by the service
        # (503, Retry-After) if the worker still read it, else by the reset of its queued connection.
        [outcome] = late
        if isinstance(outcome, httpx.Response):
            assert (outcome.status_code, outcome.headers["retry-after"], outcome.json()["error"]["code"]) == (
                503, "1", "service_unavailable")
        else:
            assert isinstance(outcome, (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)), outcome
        # every candidate request the fake saw was the first request's (max_attempts 1: one per call)
        assert fake.total_requests == sum(c["outcome"] == "http" for c in first[0].json()["routerops"]["calls"]) >= 1
        assert keys.get(key.record.key_id).requests == 1  # the finished request was billed, the late one not
    finally:
        hold.set()
        fake.stop()


def test_metrics_count_what_the_test_sent(packaged, serve, key) -> None:
    svc = serve()
    body = {"model": packaged.record.model_tag, "messages": [{"role": "user", "content": QUESTION}]}
    bills = [_post(svc, body, key).json()["routerops"] for _ in range(3)]
    assert _post(svc, {**body, "model": "gpt-9"}, key).status_code == 404
    assert _post(svc, body).status_code == 401
    text = httpx.get(f"{svc.base_url}/metrics", timeout=30).text
    assert metric(text, "routerops_requests_total", status="200") == 3
    assert metric(text, "routerops_requests_total", status="404") == 1
    assert metric(text, "routerops_requests_total", status="401") == 1
    assert metric(text, "routerops_refusals_total", reason="model_not_found") == 1
    assert metric(text, "routerops_refusals_total", reason="auth") == 1
    # one request at a time: every policy batch held one episode, one batch per router turn
    batches = metric(text, "routerops_policy_batch_size_count")
    assert batches == metric(text, "routerops_policy_batch_size_sum") == sum(b["turns"] for b in bills)
    per_model: dict[str, float] = {}
    for bill in bills:
        for c in bill["calls"]:
            per_model[c["model"]] = per_model.get(c["model"], 0.0) + c["usd"]
    for model, usd in per_model.items():
        assert metric(text, "routerops_candidate_usd_total", model=model) == pytest.approx(usd, rel=1e-9)
    assert metric(text, "routerops_key_spend_usd_total", key_id=key.record.key_id) == pytest.approx(
        sum(b["total_usd"] for b in bills), rel=1e-9)
    assert httpx.get(f"{svc.base_url}/readyz", timeout=30).status_code == 200


def test_the_stored_model_is_the_package_it_records(packaged) -> None:
    loaded = load_package(packaged.home / "models" / packaged.record.model_tag.replace(":", "/"))  # verifies hashes
    assert loaded.record == packaged.record
    assert loaded.params.router_limits().max_tokens_per_turn == loaded.params.train_router.local.max_tokens_per_turn


def test_packaging_the_same_inputs_keeps_the_version_and_a_new_price_makes_a_new_one(packaged, tmp_path) -> None:
    from routerops.config import load_params
    from stages.package_router import Inputs, run

    params = load_params(packaged.project / "params.yaml")
    inputs = Inputs.of_project(packaged.project, params)
    assert run(params, inputs).record.version == packaged.record.version
    pricier = tmp_path / "pool.yaml"
    pricier.write_text(inputs.pool_file.read_text().replace("output_usd_per_mtok: 1.20", "output_usd_per_mtok: 2.40"))
    changed = run(params, Inputs(load_pool(pricier), pricier, inputs.params_file, inputs.root))
    assert changed.record.version != packaged.record.version
    assert changed.record.labels["pricing_id"] != packaged.record.labels["pricing_id"]
    assert changed.record.files["router/model.safetensors"] == packaged.record.files["router/model.safetensors"]
