"""Shared fixtures: the repo's pool, a loopback fake server, and fast, deterministic clients."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from routerops.candidates.client import ClientConfig, OpenAIChatClient
from routerops.pool import Candidate, Pool, load_pool
from routerops.testing.fakeserver import FakeOpenAIServer, RecordingSleep

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
    """Timeouts and backoff small enough that every retry test finishes well under a second."""
    return ClientConfig(
        max_concurrency=8,
        connect_timeout_s=0.5,
        read_timeout_s=0.3,
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
