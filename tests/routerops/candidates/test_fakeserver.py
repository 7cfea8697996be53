"""The fake server itself: protocol basics, keep-alive, counters, scripting, bounded shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from routerops.testing.fakeserver import FakeOpenAIServer, Fault, RequestInfo

pytestmark = pytest.mark.timeout(30)

MESSAGES = [{"role": "user", "content": "one two three four five"}]


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
        assert http.post("/embeddings", json={}).status_code == 404
        assert http.get("/chat/completions").status_code == 405
        assert http.post("/chat/completions", content=b"{not json").status_code == 400
        assert http.post("/chat/completions", json={"model": "m"}).status_code == 400
        assert server.per_model == {}


def test_scripted_faults_apply_in_order_then_normal() -> None:
    with FakeOpenAIServer(faults=[Fault.http_status(429, retry_after=3), None, Fault.no_usage()]) as server, \
            httpx.Client(base_url=server.base_url) as http:
        post = lambda: http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})  # noqa: E731
        limited = post()
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert "error" in limited.json()
        assert "usage" in post().json()
        assert "usage" not in post().json()
        assert "usage" in post().json()
        server.push(Fault.malformed_json())
        with pytest.raises(json.JSONDecodeError):
            json.loads(post().content)


def test_per_request_callable_and_reply_function() -> None:
    def decide(info: RequestInfo) -> Fault | None:
        return Fault.http_status(503) if info.model == "flaky" else None

    def shout(info: RequestInfo) -> str:
        return f"{info.model} says {info.index} " + "word " * 20

    with FakeOpenAIServer(on_request=decide, reply=shout) as server, \
            httpx.Client(base_url=server.base_url) as http:
        assert http.post("/chat/completions", json={"model": "flaky", "messages": MESSAGES}).status_code == 503
        data = http.post("/chat/completions",
                         json={"model": "m", "messages": MESSAGES, "max_tokens": 4}).json()
        assert data["choices"][0]["message"]["content"] == "m says 1 word"
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["completion_tokens"] == 4


def test_drop_closes_without_a_response() -> None:
    with FakeOpenAIServer(faults=[Fault.drop()]) as server, httpx.Client(base_url=server.base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).status_code == 200


def test_latency_is_concurrent_not_serial() -> None:
    with FakeOpenAIServer(latency_s=0.2) as server:
        def one() -> None:
            with httpx.Client(base_url=server.base_url) as http:
                http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})

        threads = [threading.Thread(target=one) for _ in range(10)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - t0 < 1.0  # 10 x 0.2 s would be 2 s if serialized
        assert server.max_in_flight == 10


def test_shutdown_is_bounded_with_stalled_requests_in_flight() -> None:
    server = FakeOpenAIServer(faults=[Fault.stall(60)] * 3).start()
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        socks.append(sock)
    deadline = time.monotonic() + 2
    while server.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == 3
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 2.0
    for sock in socks:
        assert sock.recv(100) == b""  # closed by the server, no response
        sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)
