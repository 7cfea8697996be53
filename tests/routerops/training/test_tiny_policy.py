from __future__ import annotations

import asyncio

import pytest

from routerops.training.tiny_policy import BatchedGenerator

# A bound on a hang, not a speed: `_run` is faked, so a batch takes microseconds; before the
# abort fix a flusher failure left the episodes waiting forever, and this turns that into a
# TimeoutError well inside pytest-timeout's 180 s.
HANG_S = 60


class Tok:
    pad_token_id = 0
    eos_token_id = 0


async def many(gen: BatchedGenerator, n: int) -> list[object]:
    return await asyncio.wait_for(
        asyncio.gather(*(gen.generate([1, 2, 3], max_new_tokens=4, stop=["</answer>"]) for _ in range(n)),
                       return_exceptions=True), timeout=HANG_S)


def test_concurrent_requests_share_one_batch() -> None:
    # Deterministic, not a race: gather starts all 12 generate calls before the flusher task
    # (created by the first of them) first runs, because asyncio runs ready callbacks in FIFO order.
    gen = BatchedGenerator(object(), Tok(), max_batch=64)
    sizes: list[int] = []
    gen._run = lambda batch: (sizes.append(len(batch)) or [f"out{i}" for i in range(len(batch))])  # type: ignore[method-assign]
    outs = asyncio.run(many(gen, 12))
    assert sizes == [12] and outs == [f"out{i}" for i in range(12)]


def test_batches_are_capped_at_max_batch() -> None:
    gen = BatchedGenerator(object(), Tok(), max_batch=5)
    sizes: list[int] = []
    gen._run = lambda batch: (sizes.append(len(batch)) or [len(sizes)] * len(batch))  # type: ignore[method-assign]
    outs = asyncio.run(many(gen, 12))
    assert sizes == [5, 5, 2]  # one flush, in request order
    assert gen.batches == {5: 2, 2: 1}  # what a server exports as its batch-size histogram
    assert outs == [1] * 5 + [2] * 5 + [3] * 2


def test_a_failing_batch_fails_its_episodes() -> None:
    gen = BatchedGenerator(object(), Tok())

    def boom(batch):
        raise ValueError("model exploded")

    gen._run = boom  # type: ignore[method-assign]
    outs = asyncio.run(many(gen, 5))
    assert len(outs) == 5
    assert all(type(o) is ValueError and str(o) == "model exploded" for o in outs)
    assert all(o is outs[0] for o in outs)  # the batch's one error, handed to each of its episodes


class Abort(BaseException):
    """Like pytest's own `Failed` (a test timeout): a BaseException asyncio keeps in the task."""


@pytest.mark.parametrize("exc", [Abort("timeout"), asyncio.CancelledError()], ids=["abort", "cancelled"])
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
        flusher = gen._flusher
        assert flusher is not None and flusher.done()
        if isinstance(exc, asyncio.CancelledError):
            assert flusher.cancelled()
        else:
            assert flusher.exception() is exc
        return results

    outs = asyncio.run(go())
    assert len(outs) == 4
    assert all(type(o) is RuntimeError and str(o) == f"generation aborted: {exc!r}" for o in outs)
