"""Progress bars that stay readable in log files: a tqdm bar on a terminal, periodic plain lines elsewhere.

A tqdm bar redraws itself with ``\\r`` on every update; written to a file or a pipe (a cluster job's log, a
Ray worker's output, ``make demo > log``) that is one line fragment per update: hundreds of KB for a long
loop. `progress_bar` returns tqdm only when its stream is a terminal; otherwise `PlainProgress`, which writes
a whole line every `PLAIN_EVERY_FRACTION` of the total or `PLAIN_EVERY_S` seconds, whichever comes first, and
one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

PLAIN_EVERY_FRACTION = 0.1
PLAIN_EVERY_S = 30.0


class PlainProgress:
    """The part of tqdm's interface this project uses (``update``, ``set_description``, ``set_postfix``,
    ``close``, iteration, ``with``), written as plain lines: ``desc: 40/100 img (40%), 12 s, 3.3 img/s``."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        file: IO[str] | None = None,
        every_fraction: float = PLAIN_EVERY_FRACTION,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.every_fraction, self.every_s = every_fraction, every_s
        self.n, self.postfix = 0, ""
        self.start = self.last_time = time.monotonic()
        self.last_n = 0
        self.closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc + ': ' if self.desc else ''}{done} {self.unit}{share}, {elapsed:.0f} s{rate}{postfix}"

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self.last_time, self.last_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = max(1, int(self.total * self.every_fraction)) if self.total else None
        if (step is not None and self.n // step > self.last_n // step) or now - self.last_time >= self.every_s:
            self._emit()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._emit()
        self.closed = True

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    total: int | None,
    desc: str = "",
    unit: str = "it",
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    iterable: Iterable | None = None,
) -> tqdm | PlainProgress:
    """A tqdm bar when `file` (default stderr) is a terminal, else `PlainProgress`; disabled: a silent tqdm.
    With `iterable`, iterate over the result to advance it."""
    file = file if file is not None else sys.stderr
    if not enabled or _is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, disable=not enabled)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, file=file)


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
