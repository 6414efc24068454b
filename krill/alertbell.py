"""Wake the event loop when libtorrent has alerts, with no thread waiting for them.

libtorrent queues alerts and offers two ways to learn of them: block in
``session.wait_for_alert`` (a thread must do that for an asyncio program), or
``set_alert_fd``: libtorrent writes one byte to a file descriptor whenever its
queue stops being empty. ``AlertBell`` uses the second with a socket pair whose
reading end the event loop watches, so a batch of alerts costs one wake-up of
the loop instead of a worker thread's wake-up, a future handed across threads
and then the loop's wake-up (in the herd benchmark, 16 nodes on 2 cores, those
hand-offs were a measurable share of the machine's context switches).

libtorrent writes without blocking (both ends are non-blocking; a full socket
just drops the byte, and one unread byte already rings the bell), and it never
writes to the descriptor once ``close`` has returned: ``close`` first tells
libtorrent to stop, then closes the sockets, so a reused descriptor number
can never receive a stray byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import libtorrent as lt


class AlertBell:
    """Rings when ``session`` has queued alerts since the last ``wait``."""

    def __init__(self, session: lt.session) -> None:
        self._session = session
        self._loop = asyncio.get_running_loop()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._rung = asyncio.Event()
        self._closed = False
        # Rings at once if alerts are already queued: the byte waits in the socket
        # until the loop watches it (next line).
        session.set_alert_fd(self._writer.fileno())
        self._loop.add_reader(self._reader.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._reader.recv(4096):
                pass
        self._rung.set()

    @property
    def descriptor(self) -> int:
        """The descriptor libtorrent writes to (-1 once closed)."""
        return self._writer.fileno()

    def ring(self) -> None:
        """Wake a ``wait`` now (to stop the pump without waiting out its timeout)."""
        self._rung.set()

    async def wait(self, at_most: float) -> None:
        """Until alerts were queued since the last ``wait`` returned, or ``at_most`` s.

        Pop the alerts after this returns: a byte that arrives meanwhile rings
        the next ``wait`` at once, so no alert is ever left unnoticed.
        """
        if not self._rung.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most):
                    await self._rung.wait()
        self._rung.clear()

    def close(self) -> None:
        """Stop libtorrent writing, then close both ends (in that order, see above).

        Safe to call again."""
        if self._closed:
            return
        self._closed = True
        self._session.set_alert_fd(-1)
        self._loop.remove_reader(self._reader.fileno())
        self._reader.close()
        self._writer.close()
