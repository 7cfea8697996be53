"""A loopback OpenAI-compatible server (chat and text completions) for tests and benchmarks.

Plain asyncio streams and a deliberately small HTTP/1.1 subset (Content-Length bodies,
keep-alive, no chunked requests), so that it starts in milliseconds, has no dependencies and can
misbehave on purpose in ways a real framework would not let it: drop the connection mid-request,
send a truncated JSON body with 200, stall past any client timeout.

The server runs its own event loop in a daemon thread, so synchronous tests and `asyncio.run`
tests can both use it. Latency is an `asyncio.sleep`, so thousands of concurrent slow requests
cost no threads. For benchmarks, run it in a separate process (`python -m
routerops.testing.fakeserver`) so it does not compete with the client for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "FakeOpenAIServer",
    "Fault",
    "RecordingSleep",
    "RequestInfo",
    "closed_port_url",
    "default_reply",
    "word_count",
]

FaultKind = Literal["status", "stall", "malformed_json", "not_completion", "no_usage", "drop"]

# Request heads above this are refused; real chat requests carry a handful of short headers.
_MAX_HEAD_BYTES = 64 * 1024
# Bodies above this are refused: far above any prompt a test sends, small enough to be harmless.
_MAX_BODY_BYTES = 16 * 1024 * 1024
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour for one request. Build with the class methods."""

    kind: FaultKind
    status: int = 200
    retry_after: str | None = None
    seconds: float = 0.0
    payload: Any = None

    @classmethod
    def http_status(cls, status: int, retry_after: str | float | None = None) -> Fault:
        """Reply with this status and an OpenAI-style error body (optionally with Retry-After)."""
        return cls("status", status=status, retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def stall(cls, seconds: float = 30.0) -> Fault:
        """Hold the request this long before replying normally; the client should time out first."""
        return cls("stall", seconds=seconds)

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 with a body that is not valid JSON (a truncated completion)."""
        return cls("malformed_json")

    @classmethod
    def not_completion(cls, payload: Any = None) -> Fault:
        """200 with valid JSON that is not a chat completion (default: an object without choices)."""
        return cls("not_completion", payload={"object": "list", "data": []} if payload is None else payload)

    @classmethod
    def no_usage(cls) -> Fault:
        """A normal completion without the `usage` object (some servers omit it)."""
        return cls("no_usage")

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection after reading the request, without sending anything."""
        return cls("drop")


@dataclass(frozen=True)
class RequestInfo:
    """What a per-request callable and the reply function see."""

    index: int                 # 0-based, over all completion requests since start/reset
    model: str
    messages: list[dict[str, Any]]  # empty on /v1/completions (see body["prompt"])
    body: dict[str, Any]
    headers: dict[str, str]    # lower-cased names
    endpoint: Literal["chat", "text"] = "chat"


def word_count(text: str) -> int:
    """The server's own token count: whitespace words. Deterministic and dependency-free."""
    return len(text.split())


def default_reply(req: RequestInfo) -> str:
    """Deterministic in the request content (not its index), so cached and live replies agree."""
    last = str(req.messages[-1].get("content", "")) if req.messages else ""
    tail = " ".join(last.split()[-12:])
    return f"Answer from {req.model}: {tail}"


@dataclass
class _Stats:
    total_requests: int = 0
    per_model: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    completions: int = 0


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# How often a held request looks at its event: 5 ms keeps a release prompt and the loop idle.
_HOLD_POLL_S = 0.005


class FakeOpenAIServer:
    """Context manager: a chat-completions server on 127.0.0.1:<ephemeral port>.

    Faults: `faults` (and later `push(...)`) queue one Fault per successive request, `None`
    meaning a normal reply; when `on_request` is given it decides instead, per request. With
    `hold` (a threading.Event) every request waits, without blocking the server, until the event
    is set: a test keeps requests in flight for exactly as long as it needs, whatever the speed.
    Counters and the request log are safe to read from any thread. With `tokenize` (the
    server's tokenizer: text to token ids) a text completion asked for `return_token_ids` (vLLM's
    extension) carries `choices[0].token_ids`, the tokenize of its text; without it the server is
    one that lacks the extension and ignores the flag.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        faults: Iterable[Fault | None] = (),
        on_request: Callable[[RequestInfo], Fault | None] | None = None,
        reply: Callable[[RequestInfo], str] = default_reply,
        port: int = 0,
        shutdown_timeout_s: float = 5.0,
        log_requests: bool = True,
        hold: threading.Event | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
    ) -> None:
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.latency_s = latency_s
        self.hold = hold
        self.on_request = on_request
        self.reply = reply
        self.tokenize = tokenize
        self._requested_port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        # A long benchmark would otherwise keep every prompt in memory.
        self._log_requests = log_requests
        self._faults: collections.deque[Fault | None] = collections.deque(faults)
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.port: int = 0

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="fake-openai-server", daemon=True)
        self._thread.start()
        # Binding a loopback port takes milliseconds; 10 s only guards against a wedged host.
        if not self._ready.wait(10.0):
            raise RuntimeError("fake server did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError(f"fake server failed to start: {self._startup_error}") from self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener, cancel every open connection (stalls included) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(self._shutdown_timeout_s)
            except Exception:  # a failed tidy-up must not hide the test's own result
                pass
            loop.call_soon_threadsafe(loop.stop)
        thread.join(self._shutdown_timeout_s)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ----- scripting and counters ------------------------------------------------------------

    def push(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests (in order); `None` queues a normal reply."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Zero the counters and the request log and drop queued faults."""
        with self._lock:
            self._faults.clear()
            connections = self._stats.connections
            self._stats = _Stats(connections=connections)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return self._stats.total_requests

    @property
    def completions(self) -> int:
        """Requests answered with a normal (2xx, well-formed) completion."""
        with self._lock:
            return self._stats.completions

    @property
    def per_model(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats.per_model)

    @property
    def requests(self) -> list[tuple[str, list[dict[str, Any]]]]:
        with self._lock:
            return list(self._stats.requests)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._stats.in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._stats.max_in_flight

    @property
    def connections(self) -> int:
        """TCP connections accepted so far: shows whether the client reuses keep-alive sockets."""
        with self._lock:
            return self._stats.connections

    # ----- event loop side -------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self._requested_port, limit=_MAX_HEAD_BYTES)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start() in the caller's thread
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._shutdown_timeout_s)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), self._shutdown_timeout_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._stats.connections += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):  # the peer may already be gone
                pass

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # client closed between requests: the normal end of keep-alive
        except asyncio.LimitOverrunError:
            await self._send_json(writer, 431, {"error": {"message": "request head too large"}}, close=True)
            return False
        try:
            method, path, headers = _parse_head(head)
            body = await _read_body(reader, headers)
        except _BadRequest as exc:
            await self._send_json(writer, exc.status, _error(exc.message, "invalid_request_error"), close=True)
            return False
        keep_alive = headers.get("connection", "").lower() != "close"

        with self._lock:
            self._stats.total_requests += 1
        path = path.split("?", 1)[0].rstrip("/")
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "text"}.get(path)
        if endpoint is None:
            await self._send_json(writer, 404, _error(f"no route {path}", "not_found"), close=not keep_alive)
            return keep_alive
        if method != "POST":
            await self._send_json(writer, 405, _error("use POST", "invalid_request_error"), close=not keep_alive)
            return keep_alive
        try:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise ValueError("body must be an object")
            if endpoint == "chat" and not isinstance(parsed.get("messages"), list):
                raise ValueError("body must be an object with a messages list")
            prompt = parsed.get("prompt")
            if endpoint == "text" and not (isinstance(prompt, str) or (
                    isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))):
                raise ValueError("prompt must be a string or a list of token ids")
        except ValueError as exc:
            await self._send_json(writer, 400, _error(f"bad request body: {exc}", "invalid_request_error"),
                                  close=not keep_alive)
            return keep_alive

        model = str(parsed.get("model", ""))
        messages: list[dict[str, Any]] = parsed.get("messages", []) if endpoint == "chat" else []
        with self._lock:
            index = sum(self._stats.per_model.values())
            self._stats.per_model[model] += 1
            if self._log_requests:
                self._stats.requests.append((model, messages))
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
            queued = self._faults.popleft() if self._faults and self.on_request is None else None
        try:
            info = RequestInfo(index=index, model=model, messages=messages, body=parsed, headers=headers,
                               endpoint=endpoint)  # type: ignore[arg-type]
            fault = self.on_request(info) if self.on_request is not None else queued
            return await self._respond(writer, info, fault, keep_alive)
        finally:
            with self._lock:
                self._stats.in_flight -= 1

    async def _respond(
        self, writer: asyncio.StreamWriter, info: RequestInfo, fault: Fault | None, keep_alive: bool
    ) -> bool:
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(_HOLD_POLL_S)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        elif self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

        if fault is not None and fault.kind == "drop":
            return False  # the caller closes the socket without a byte of response
        if fault is not None and fault.kind == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            kind = "rate_limit_error" if fault.status == 429 else "server_error"
            await self._send_json(writer, fault.status, _error(f"scripted {fault.status}", kind),
                                  extra_headers=extra, close=not keep_alive)
            return keep_alive
        if fault is not None and fault.kind == "malformed_json":
            full = json.dumps(self._completion(info, with_usage=True)).encode()
            await self._send_raw(writer, 200, full[: len(full) // 2], close=not keep_alive)
            return keep_alive
        if fault is not None and fault.kind == "not_completion":
            await self._send_json(writer, 200, fault.payload, close=not keep_alive)
            return keep_alive

        completion = self._completion(info, with_usage=fault is None or fault.kind != "no_usage")
        with self._lock:
            self._stats.completions += 1
        await self._send_json(writer, 200, completion, close=not keep_alive)
        return keep_alive

    def _completion(self, info: RequestInfo, *, with_usage: bool) -> dict[str, Any]:
        if info.endpoint == "text":
            return self._text_completion(info, with_usage=with_usage)
        text = self.reply(info)
        words = text.split()
        finish = "stop"
        max_tokens = info.body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            # Our "tokens" are words, so truncation honours max_tokens the way a real server would.
            text, words, finish = " ".join(words[:max_tokens]), words[:max_tokens], "length"
        prompt_tokens = sum(word_count(str(m.get("content", ""))) for m in info.messages)
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake-{info.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": info.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
        }
        if with_usage:
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                            "total_tokens": prompt_tokens + len(words)}
        return out

    def _text_completion(self, info: RequestInfo, *, with_usage: bool) -> dict[str, Any]:
        """/v1/completions the way vLLM answers it: the reply is cut at the first stop string,
        which is kept only with `include_stop_str_in_output` and named in `stop_reason`; with
        `return_token_ids` and a `tokenize`, the choice carries the ids of its text."""
        text = self.reply(info)
        finish, stop_reason = "length", None
        cuts = [(text.find(s), s) for s in info.body.get("stop") or [] if isinstance(s, str) and s in text]
        if cuts:
            at, stop_reason = min(cuts)
            text = text[: at + (len(stop_reason) if info.body.get("include_stop_str_in_output") else 0)]
            finish = "stop"
        words = text.split()
        max_tokens = info.body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            text, words, finish, stop_reason = " ".join(words[:max_tokens]), words[:max_tokens], "length", None
        prompt = info.body.get("prompt")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else word_count(str(prompt))
        out: dict[str, Any] = {
            "id": f"cmpl-fake-{info.index}", "object": "text_completion", "created": int(time.time()),
            "model": info.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason}],
        }
        if self.tokenize is not None and info.body.get("return_token_ids") is True:
            out["choices"][0]["token_ids"] = list(self.tokenize(text))
        if with_usage:
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                            "total_tokens": prompt_tokens + len(words)}
        return out

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, obj: Any, *,
                         extra_headers: dict[str, str] | None = None, close: bool = False) -> None:
        await self._send_raw(writer, status, json.dumps(obj).encode(), extra_headers=extra_headers, close=close)

    async def _send_raw(self, writer: asyncio.StreamWriter, status: int, body: bytes, *,
                        extra_headers: dict[str, str] | None = None, close: bool = False) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None}}


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, path, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise _BadRequest(400, f"unsupported version {version}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > _MAX_BODY_BYTES:
        raise _BadRequest(413, f"Content-Length {length} out of range")
    return await reader.readexactly(length) if length else b""


class RecordingSleep:
    """Drop-in for `asyncio.sleep` in clients under test: records each delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)  # still a suspension point, as the real sleep is


def closed_port_url() -> str:
    """A base URL on a loopback port nothing listens on (bound, then released): connects are refused.

    Another process could grab the port in between; on a test host that window is negligible.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted; prints the base URL on the first line of stdout (for benchmarks)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    args = ap.parse_args(argv)
    with FakeOpenAIServer(latency_s=args.latency, port=args.port, log_requests=False) as server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()


@contextlib.contextmanager
def subprocess_server(latency_s: float) -> Iterator[str]:
    """A FakeOpenAIServer in its own process (benchmarks: the client under test keeps the GIL and
    a core to itself). Yields the base URL; the server is terminated on exit."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "routerops.testing.fakeserver", "--latency", str(latency_s)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"fake server did not start (exit code {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
