"""The fake server itself: protocol basics, keep-alive, counters, scripting, bounded shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from routerops.testing.fakeserver import FakeOpenAIServer, Fault, RequestInfo

MESSAGES = [{"role": "user", "content": "one two three four five"}]
# Generous bound on waits (see conftest.WAIT_S): far above loopback work, under the test timeout.
WAIT_S = 60.0


def scripted_error(status: int) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return {"error": {"message": f"scripted {status}", "type": kind, "code": None}}


def test_completion_shape_keep_alive_and_counters() -> None:
    with FakeOpenAIServer() as server, httpx.Client(base_url=server.base_url) as http:
        assert server.base_url.startswith("http://127.0.0.1:")
        for model in ("a", "b", "a"):
            resp = http.post("/chat/completions", json={"model": model, "messages": MESSAGES})
            assert resp.status_code == 200
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
            assert data["object"] == "chat.completion" and data["model"] == model
            assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                                     "total_tokens": 5 + len(text.split())}
        assert server.total_requests == 3 and server.completions == 3
        assert server.per_model == {"a": 2, "b": 1}
        assert server.requests == [("a", MESSAGES), ("b", MESSAGES), ("a", MESSAGES)]
        assert server.connections == 1  # keep-alive reused one socket
        server.reset()
        assert (server.total_requests, server.per_model, server.requests) == (0, {}, [])


def test_routes_and_bad_requests() -> None:
    with FakeOpenAIServer() as server, httpx.Client(base_url=server.base_url) as http:
        missing = http.post("/embeddings", json={})
        assert (missing.status_code, missing.json()) == (
            404, {"error": {"message": "no route /v1/embeddings", "type": "not_found", "code": None}})
        wrong_method = http.get("/chat/completions")
        assert (wrong_method.status_code, wrong_method.json()["error"]["message"]) == (405, "use POST")
        not_json = http.post("/chat/completions", content=b"{not json")
        assert not_json.status_code == 400
        assert not_json.json()["error"]["message"].startswith("bad request body: Expecting property name")
        no_messages = http.post("/chat/completions", json={"model": "m"})
        assert (no_messages.status_code, no_messages.json()["error"]["message"]) == (
            400, "bad request body: body must be an object with a messages list")
        assert server.per_model == {} and server.requests == []
        assert (server.total_requests, server.completions) == (4, 0)  # counted, but none was a completion


def test_scripted_faults_apply_in_order_then_normal() -> None:
    with FakeOpenAIServer(faults=[Fault.http_status(429, retry_after=3), None, Fault.no_usage()]) as server, \
            httpx.Client(base_url=server.base_url) as http:
        post = lambda: http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})  # noqa: E731
        limited = post()
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert limited.json() == scripted_error(429)
        assert post().json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
        assert "usage" not in post().json()
        assert post().json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
        server.push(Fault.malformed_json())
        truncated = post()
        assert truncated.status_code == 200
        with pytest.raises(json.JSONDecodeError, match=r"^Unterminated string starting at"):
            json.loads(truncated.content)
        assert (server.total_requests, server.completions) == (5, 3)


def test_per_request_callable_and_reply_function() -> None:
    def decide(info: RequestInfo) -> Fault | None:
        return Fault.http_status(503) if info.model == "flaky" else None

    def shout(info: RequestInfo) -> str:
        return f"{info.model} says {info.index} " + "word " * 20

    with FakeOpenAIServer(on_request=decide, reply=shout) as server, \
            httpx.Client(base_url=server.base_url) as http:
        flaky = http.post("/chat/completions", json={"model": "flaky", "messages": MESSAGES})
        assert (flaky.status_code, flaky.json()) == (503, scripted_error(503))
        data = http.post("/chat/completions",
                         json={"model": "m", "messages": MESSAGES, "max_tokens": 4}).json()
        assert data["choices"][0]["message"]["content"] == "m says 1 word"
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["completion_tokens"] == 4


def test_drop_closes_without_a_response() -> None:
    with FakeOpenAIServer(faults=[Fault.drop()]) as server, httpx.Client(base_url=server.base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match=r"^Server disconnected without sending a response\.$"):
            http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).status_code == 200
        assert (server.total_requests, server.completions, server.connections) == (2, 1, 2)


def test_requests_are_served_concurrently(gated_server: Callable[..., Any]) -> None:
    # The gate holds each request until all 10 are in flight together, which a server that served
    # one request at a time could never reach. That 10 requests of 0.2 s latency take ~0.2 s, not
    # 2 s, is a timing: bench/candidates.py measures it.
    server = gated_server(10, latency_s=0.2)
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=server.base_url, timeout=WAIT_S) as http:
            status = http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    assert not any(t.is_alive() for t in threads), "a client thread never got its reply"
    assert not server.timed_out, server.gate_message()
    assert statuses == [200] * 10
    assert (server.max_in_flight, server.total_requests, server.completions) == (10, 10, 10)


def test_shutdown_cancels_stalled_requests_in_flight(stall_forever: Fault) -> None:
    # The stalls outlast the test, so the connections can only end because stop() cancelled them.
    # How long stop() takes is a timing (bench/candidates.py); here a generous shutdown timeout.
    server = FakeOpenAIServer(faults=[stall_forever] * 3, shutdown_timeout_s=WAIT_S).start()
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        socks.append(sock)
    deadline = time.monotonic() + WAIT_S
    while server.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == 3, f"only {server.in_flight} of 3 requests reached the server in {WAIT_S:.0f} s"
    thread = server._thread
    assert thread is not None
    server.stop()
    assert not thread.is_alive()  # the loop stopped and its thread was joined
    assert (server.in_flight, server.completions) == (0, 0)
    for sock in socks:
        assert sock.recv(100) == b""  # closed by the server, no response
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
