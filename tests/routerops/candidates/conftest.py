"""Shared fixtures: the repo's pool, a loopback fake server, and deterministic clients.

No test here depends on how fast the machine is or how it schedules threads: timeouts on replies
a test expects are generous (`WAIT_S`), short timeouts are used only against requests that can
never be answered (a stall longer than the test timeout), and concurrency is proven by a gate in
the server, not by elapsed time. Timings live in bench/candidates.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from routerops.candidates.client import ClientConfig, OpenAIChatClient
from routerops.pool import Candidate, Pool, load_pool
from routerops.testing.fakeserver import FakeOpenAIServer, Fault, RecordingSleep, RequestInfo

# A generous bound for anything a test waits on (a reply, a gate, a subprocess): far above what
# loopback work takes on a loaded machine, well under pytest-timeout's 180 s per test, so a
# broken behaviour fails with a clear message instead of a timeout.
WAIT_S = 60.0
# A stall no client may outwait: longer than the test timeout, so a stalled request can only
# end by the client timing out (or the server stopping, which cancels it).
FOREVER_S = 3600.0

# tests/routerops/candidates/conftest.py -> the repo root is three levels up.
POOL_FILE = Path(__file__).resolve().parents[3] / "pool.yaml"

MakeClient = Callable[..., OpenAIChatClient]


@pytest.fixture(scope="session")
def pool() -> Pool:
    return load_pool(POOL_FILE)


@pytest.fixture(scope="session")
def pool_file() -> Path:
    return POOL_FILE


@pytest.fixture
def qwen(pool: Pool) -> Candidate:
    return pool.get("Qwen2.5-7B-Instruct")


@pytest.fixture
def fast() -> ClientConfig:
    """Small backoff (tests record sleeps rather than wait them anyway) and generous timeouts:
    a reply the test expects must never time out, however loaded the machine. Tests that need
    a timeout to fire shorten it against a request that is never answered."""
    return ClientConfig(
        max_concurrency=8,
        connect_timeout_s=WAIT_S,
        read_timeout_s=WAIT_S,
        max_attempts=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_retry_after_s=2.0,
    )


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(server: FakeOpenAIServer, sleeps: RecordingSleep, fast: ClientConfig) -> MakeClient:
    """Client factory aimed at the fake server, with recorded (instant) sleeps and a seeded rng.

    Build the client inside the test's event loop (`asyncio.run`) and close it there.
    """

    def make(config: ClientConfig | None = None, **kwargs: object) -> OpenAIChatClient:
        opts: dict[str, object] = {"base_url": server.base_url, "api_key": "test-key",
                                   "rng": random.Random(7), "sleep": sleeps}
        opts.update(kwargs)
        return OpenAIChatClient(config or fast, **opts)  # type: ignore[arg-type]

    return make


class GatedServer(FakeOpenAIServer):
    """A fake server that holds every request until `gate` of them are in flight at once, then
    lets all requests through (the gate stays open).

    Reaching the gate proves that the client had `gate` requests on the wire together, whatever
    the speed or thread scheduling of the machine; a client that cannot get there is released
    after `WAIT_S` with `timed_out` set, and the test fails on it. The wait is an override of the
    server's async reply step because FakeOpenAIServer's own hooks (`on_request`, `reply`) are
    synchronous and run on the server's event loop, where blocking would stall every request.
    """

    def __init__(self, gate: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.opened = False
        self.timed_out = False

    async def _respond(self, writer: asyncio.StreamWriter, info: RequestInfo, fault: Fault | None,
                       keep_alive: bool) -> bool:
        deadline = time.monotonic() + WAIT_S
        while not self.opened:
            if self.in_flight >= self.gate:
                self.opened = True
            elif time.monotonic() > deadline:
                self.timed_out = self.opened = True
            else:
                await asyncio.sleep(0.005)
        return await super()._respond(writer, info, fault, keep_alive)

    def gate_message(self) -> str:
        return (f"the server never had {self.gate} requests in flight at once within {WAIT_S:.0f} s "
                f"(at most {self.max_in_flight})")


class ReadTimeouts(httpx.AsyncBaseTransport):
    """A real HTTP transport whose read timeout is set per request, in order: `timeouts[i]` for
    the i-th request, the client's own (generous) timeout after the list runs out.

    Lets one call time out fast on a stalled first attempt and still wait generously for the
    reply to its retry, which a single ClientConfig.read_timeout_s cannot express.
    """

    def __init__(self, *timeouts: float) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._timeouts = list(timeouts)
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.requests < len(self._timeouts):
            timeout = dict(request.extensions.get("timeout", {}))
            timeout["read"] = self._timeouts[self.requests]
            request.extensions["timeout"] = timeout
        self.requests += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


# Test modules here cannot import from this conftest (pytest's importlib mode, no packages under
# tests/), so the helpers reach them as fixtures.


@pytest.fixture
def gated_server() -> Iterator[Callable[..., GatedServer]]:
    """Factory: `gated_server(gate, **FakeOpenAIServer kwargs)` starts a GatedServer, stopped after the test."""
    started: list[GatedServer] = []

    def start(gate: int, **kwargs: Any) -> GatedServer:
        srv = GatedServer(gate, **kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def stall_forever() -> Fault:
    """A stall that outlasts the test (FOREVER_S): only a client timeout or a server stop ends it."""
    return Fault.stall(FOREVER_S)


@pytest.fixture
def read_timeouts() -> Callable[..., ReadTimeouts]:
    """Factory for the per-request read-timeout transport (see ReadTimeouts)."""
    return ReadTimeouts
