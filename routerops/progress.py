"""Progress of long work that a person can read wherever it goes.

On a terminal the bar redraws in place (tqdm). Anywhere else (CI, a log file, Prefect's logs) a
redrawn bar becomes one line per update (a warm start once wrote over a thousand), so instead a
few summary lines are printed: at the start, at each quarter, and at the end.

`$ROUTEROPS_PROGRESS` overrides the choice: `bar`, `lines` or `off`. The pipeline flow sets `bar`
for the stages it runs when its own output is a terminal (their output is piped through it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Literal, Protocol

from tqdm import tqdm

__all__ = ["PROGRESS_ENV", "Bar", "Mode", "progress", "progress_mode"]

PROGRESS_ENV = "ROUTEROPS_PROGRESS"
Mode = Literal["bar", "lines", "off"]
_MARKS = 4  # summary lines at 25 %, 50 %, 75 % and 100 %


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, **values: object) -> object: ...

    def close(self) -> None: ...


def progress_mode(stream: IO[str] | None = None) -> Mode:
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced  # type: ignore[return-value]
    if forced:
        raise ValueError(f"{PROGRESS_ENV}={forced!r}: expected bar, lines or off")
    s = stream or sys.stderr
    return "bar" if s.isatty() else "lines"


class _Lines:
    """A few plain lines instead of a redrawn bar."""

    def __init__(self, total: int, desc: str, stream: IO[str], initial: int = 0) -> None:
        self.total, self.desc, self.stream = max(0, total), desc, stream
        self.n = initial
        self.postfix = ""
        self._start = time.monotonic()
        self._next_mark = self._mark_after(initial)
        self._closed = False
        self._write(f"{self.desc}: {self.n}/{self.total} to do" + (" (resumed)" if initial else ""))

    def _mark_after(self, n: int) -> int:
        """Index of the next quarter mark above n."""
        if not self.total:
            return _MARKS + 1
        return next((k for k in range(1, _MARKS + 1) if n < self.total * k / _MARKS), _MARKS + 1)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self) -> str:
        elapsed = int(time.monotonic() - self._start)
        pct = 100 * self.n / self.total if self.total else 100.0
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {pct:3.0f}% ({self.n}/{self.total}), {elapsed // 60}:{elapsed % 60:02d} elapsed{tail}"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._next_mark <= _MARKS and self.n >= self.total * self._next_mark / _MARKS:
            self._next_mark = self._mark_after(self.n)
            self._write(self._line())

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._next_mark <= _MARKS:  # stopped early: say where
            self._write(self._line() + " (stopped)")


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: object) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, *, enabled: bool = True, initial: int = 0, leave: bool = False,
             stream: IO[str] | None = None) -> Bar:
    """A bar for `total` units of work named `desc` (see the module docstring)."""
    s = stream or sys.stderr
    mode = progress_mode(s) if enabled else "off"
    if mode == "off":
        return _Off()
    if mode == "lines":
        return _Lines(total, desc, s, initial)
    bar: Bar = tqdm(total=total, desc=desc, initial=initial, leave=leave, file=s)
    return bar
