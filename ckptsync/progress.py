"""Progress on long work: a bar on a terminal, nothing otherwise (tqdm), and byte counts for people.

tqdm is imported by the first bar, so that commands that show none do not pay for it.
A line written to the terminal while bars are shown goes through :func:`bars_aside`,
so that it is never printed over a bar.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO


class ProgressBar:
    """A thread-safe byte counter shown as a bar when stderr is a terminal."""

    def __init__(self, total: int, desc: str, *, enabled: bool | None = None) -> None:
        from tqdm import tqdm

        # tqdm's monitor thread only adjusts miniters for slow loops; a bar updated per chunk needs none.
        tqdm.monitor_interval = 0
        show = sys.stderr.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._bar = tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show, leave=False, file=sys.stderr
        )

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        with self._lock:
            self._bar.set_description(desc)

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


Callback = Callable[[int], None]


@contextlib.contextmanager
def bars_aside(stream: IO[str]) -> Iterator[None]:
    """While the body writes whole lines to ``stream``, the bars on the terminal are cleared; then drawn again below them."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)  # no bar was made before tqdm was imported
    if tqdm is None:
        yield
        return
    with tqdm.external_write_mode(file=stream):
        yield


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
