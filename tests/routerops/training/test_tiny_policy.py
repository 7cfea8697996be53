from __future__ import annotations

import asyncio

import pytest

from routerops.training.tiny_policy import BatchedGenerator


class Tok:
    pad_token_id = 0
    eos_token_id = 0


async def many(gen: BatchedGenerator, n: int) -> list[object]:
    return await asyncio.wait_for(
        asyncio.gather(*(gen.generate([1, 2, 3], max_new_tokens=4, stop=["</answer>"]) for _ in range(n)),
                       return_exceptions=True), timeout=10)


def test_concurrent_requests_share_one_batch() -> None:
    gen = BatchedGenerator(object(), Tok(), max_batch=64)
    sizes: list[int] = []
    gen._run = lambda batch: (sizes.append(len(batch)) or [f"out{i}" for i in range(len(batch))])  # type: ignore[method-assign]
    outs = asyncio.run(many(gen, 12))
    assert sizes == [12] and outs == [f"out{i}" for i in range(12)]


def test_a_failing_batch_fails_its_episodes() -> None:
    gen = BatchedGenerator(object(), Tok())

    def boom(batch):
        raise ValueError("model exploded")

    gen._run = boom  # type: ignore[method-assign]
    outs = asyncio.run(many(gen, 5))
    assert all(isinstance(o, ValueError) for o in outs)


class Abort(BaseException):
    """Like pytest's own `Failed` (a test timeout): a BaseException asyncio keeps in the task."""


@pytest.mark.parametrize("exc", [Abort("timeout"), asyncio.CancelledError()])
def test_any_abort_in_the_flusher_reaches_every_episode(exc) -> None:
    # Before the fix, such an exception ended the flusher task and left every episode waiting on
    # its future forever: a test timeout became a hang.
    gen = BatchedGenerator(object(), Tok())

    def abort(batch):
        raise exc

    gen._run = abort  # type: ignore[method-assign]

    async def go():
        results = await many(gen, 4)
        # the flusher task itself ended with the original exception
        assert gen._flusher is not None and gen._flusher.done()
        return results

    outs = asyncio.run(go())
    assert all(isinstance(o, RuntimeError) and "generation aborted" in str(o) for o in outs)
