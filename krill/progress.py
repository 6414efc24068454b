"""One status line for long CLI work, redrawn in place on a terminal and silent elsewhere.

``krill convert`` on a multi-gigabyte image and ``krill delta create`` on a big
layer run for minutes; without a sign of life a user cannot tell slow from
stuck. ``Progress`` writes one line to stderr (``\\r`` and erase, no scrolling),
at most every ``interval`` seconds on its clock so a loop over 1 MiB chunks
does not spend its time drawing, and clears it when the work is done so the
command's real output (stdout) is all that stays. When stderr is not a
terminal (CI logs, pipes, ``2>file``) it writes nothing at all: a log file
full of carriage returns helps nobody.

``ticking(label)`` covers work that reports nothing itself (the delta codec's
``create_delta``): a thread redraws ``label 12s`` until the block ends.

Updates may come from worker threads (conversion recompresses in one), so
drawing holds a lock.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from krill.clock import SYSTEM_CLOCK, Clock

__all__ = ["Progress", "format_bytes", "format_share"]

_ERASE = "\r\x1b[K"


def format_bytes(count: float) -> str:
    """``12.3 MB`` style (decimal units, as ``ls -h --si`` and registries show sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def format_share(done: int, total: int) -> str:
    """``12.3 MB of 40.0 MB (30%)``."""
    percent = 100 * done // total if total > 0 else 100
    return f"{format_bytes(done)} of {format_bytes(total)} ({percent}%)"


class Progress:
    """A status line on ``stream`` (stderr), drawn only when it is a terminal.

    As a context manager it erases its line when the block ends, however it ends.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        interval: float = 0.1,
        enabled: bool | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._interval = interval
        self.enabled = _is_terminal(self._stream) if enabled is None else enabled
        self._lock = threading.Lock()
        self._drawn_at: float | None = None
        self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()

    @classmethod
    def off(cls) -> Progress:
        """A Progress that never draws (library callers that did not ask for one)."""
        return cls(enabled=False)

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text``; skipped if the last draw was under ``interval`` ago (unless ``force``)."""
        if not self.enabled:
            return
        now = self._clock.monotonic()
        with self._lock:
            recent = self._drawn_at is not None and now - self._drawn_at < self._interval
            if recent and not force:
                return
            self._drawn_at = now
            self._shown = True
            self._stream.write(_ERASE + text)
            self._stream.flush()

    def clear(self) -> None:
        """Erase the line, so what the command prints next starts on a clean one."""
        if not self.enabled:
            return
        with self._lock:
            if self._shown:
                self._stream.write(_ERASE)
                self._stream.flush()
            self._shown = False
            self._drawn_at = None

    @contextlib.contextmanager
    def ticking(self, label: str, *, every: float = 1.0) -> Iterator[None]:
        """Redraw ``label <seconds>s`` every ``every`` seconds until the block ends."""
        if not self.enabled:
            yield
            return
        started = self._clock.monotonic()
        stop = threading.Event()

        def tick() -> None:
            while True:
                self.update(f"{label} {self._clock.monotonic() - started:.0f}s", force=True)
                if stop.wait(every):
                    return

        ticker = threading.Thread(target=tick, name="krill-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            self.clear()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
