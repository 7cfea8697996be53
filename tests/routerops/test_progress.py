"""Progress: a redrawn bar on a terminal, a few plain lines anywhere else."""

from __future__ import annotations

import io
import re

import pytest

from routerops.progress import PROGRESS_ENV, progress, progress_mode


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(text: str) -> list[str]:
    # elapsed time is the one part that depends on the clock
    return [re.sub(r"\d+:\d\d elapsed", "T elapsed", line) for line in text.splitlines()]


def test_without_a_terminal_a_bar_prints_its_start_and_each_quarter(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    bar = progress(10, "grpo", stream=out)
    for step in range(10):
        bar.set_postfix(reward=f"{step / 10:.1f}")
        bar.update(1)
    bar.close()
    assert _lines(out.getvalue()) == [
        "grpo: 0/10 to do",
        "grpo:  30% (3/10), T elapsed, reward=0.2",
        "grpo:  50% (5/10), T elapsed, reward=0.4",
        "grpo:  80% (8/10), T elapsed, reward=0.7",
        "grpo: 100% (10/10), T elapsed, reward=0.9",
    ]


def test_a_resumed_bar_starts_where_it_was_and_a_stopped_one_says_so(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    bar = progress(8, "grpo", initial=4, stream=out)
    bar.update(1)
    bar.close()
    bar.close()  # idempotent
    assert _lines(out.getvalue()) == ["grpo: 4/8 to do (resumed)", "grpo:  62% (5/8), T elapsed (stopped)"]


def test_a_thousand_updates_make_five_lines(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    bar = progress(1000, "warm start", stream=out)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 5


@pytest.mark.parametrize(("env", "tty", "mode"), [
    (None, False, "lines"), (None, True, "bar"), ("bar", False, "bar"), ("off", True, "off"), ("LINES", True, "lines"),
])
def test_mode_follows_the_terminal_unless_the_env_var_says(monkeypatch, env, tty, mode) -> None:
    if env is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(PROGRESS_ENV, env)
    assert progress_mode(Tty() if tty else io.StringIO()) == mode


def test_an_unknown_mode_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    with pytest.raises(ValueError, match=r"^ROUTEROPS_PROGRESS='fancy': expected bar, lines or off$"):
        progress(1, "x", stream=io.StringIO())


def test_off_and_disabled_print_nothing(monkeypatch) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "off")
    out = io.StringIO()
    progress(3, "x", stream=out).update(3)
    monkeypatch.delenv(PROGRESS_ENV)
    bar = progress(3, "y", enabled=False, stream=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
