"""The alert pump: one task that hands libtorrent's alerts to their handlers in batches.

libtorrent is blocking C++ with an alert queue. The pump waits on an
``AlertBell`` (libtorrent writes a byte to a socket the event loop watches:
no thread blocks on the queue), pops every queued alert, dispatches each,
then does the housekeeping between batches (flushes for waiting readers;
every second, stats and seed expiry).

A busy download queues an alert per piece, so the pump pauses between
batches: one wake-up per ``_MIN_ALERT_BATCH_SECONDS``, not one per piece
(16 nodes on 2 cores spent ~10 % of the machine's CPU waking the event loop
once per piece). The pause is on the engine's clock and is skipped or cut
short whenever an alert is urgent (``hurry``, ``urgent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping

import libtorrent as lt

from krill.alertbell import AlertBell
from krill.clock import Clock

__all__ = ["AlertPump"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# How often the pump asks libtorrent for session counters and torrent states.
_TICK_SECONDS = 1.0
# How long the pump sleeps when no alert comes: it also asks for stats every tick,
# and asks for cache flushes a streaming reader waits for, so shorter while one waits.
# (Real time, not the engine's clock: it is how often libtorrent is looked at.)
_ALERT_WAIT_SECONDS = 0.2
_ALERT_WAIT_READERS_SECONDS = 0.05
# At most this often the pump handles a batch of alerts (see the module doc). A
# streaming reader learns of new bytes at most this much later, which costs a pull
# nothing: the end is not batched (``urgent``) and the reader's lag leaves by
# sendfile at loopback speed. Each batch costs the loop more than its alerts (the
# pause, the bell, housekeeping, the reader it wakes): 25 ms here and a flush for
# readers every 50 ms (download._MIN_FLUSH_INTERVAL) cost 16 agents 2.8 CPU-s per
# GiB pulled in their event loops, 100 ms and 250 ms 2.0 (docs/profile-agent.md).
_MIN_ALERT_BATCH_SECONDS = 0.1


class AlertPump:
    """Pops libtorrent's alerts in batches; ``hurry`` cuts the pause between them short."""

    def __init__(
        self,
        clock: Clock,
        handlers: Mapping[type[lt.alert], Callable[[lt.alert], None]],
        housekeep: Callable[[float, bool], None],
        urgent: Callable[[], bool],
        readers_waiting: Callable[[], bool],
    ) -> None:
        """``handlers``: the handler of each alert type (``alerts.AlertHandlers.table``;
        other alerts are dropped), looked up here, one call per alert, since a busy
        download queues one per piece; ``housekeep(now, tick)`` runs after each
        batch; while ``urgent()`` the pump does not pause (a removal's alert is
        awaited, or a download's last pieces are arriving); while
        ``readers_waiting()`` it looks at libtorrent more often."""
        self._clock = clock
        self._handlers = handlers
        self._housekeep = housekeep
        self._urgent = urgent
        self._readers_waiting = readers_waiting
        self._stopping = False
        self._hurried = False
        self._pausing: asyncio.Timeout | None = None
        self._bell: AlertBell | None = None

    def hurry(self) -> None:
        """Skip or end the current pause between batches (a hurry asked for during a
        batch counts for the next pause)."""
        self._hurried = True
        pausing, self._pausing = self._pausing, None
        if pausing is not None:
            pausing.reschedule(asyncio.get_running_loop().time())

    def stop(self) -> None:
        """``run`` returns at once (it is never cancelled mid-batch)."""
        self._stopping = True
        self.hurry()
        if self._bell is not None:
            self._bell.ring()

    async def run(self, session: lt.session, bell: AlertBell) -> None:
        self._bell = bell
        next_tick = -math.inf
        batch_start = -math.inf
        while not self._stopping:
            # Not while a removal is under way (a finished download's publishing waits
            # for that alert), nor while a download is down to its last few pieces (the
            # last one's alert starts its publishing).
            pause = batch_start + _MIN_ALERT_BATCH_SECONDS - self._clock.monotonic()
            if pause > 0 and not self._urgent():
                await self._pause_unless_hurried(pause)
            waiting = self._readers_waiting()
            await bell.wait(_ALERT_WAIT_READERS_SECONDS if waiting else _ALERT_WAIT_SECONDS)
            batch_start = self._clock.monotonic()
            handlers = self._handlers
            for alert in session.pop_alerts():
                handler = handlers.get(type(alert))
                if handler is None:
                    continue
                try:
                    handler(alert)
                except Exception:
                    log.exception("swarm.alert_error alert=%s", type(alert).__name__)
            now = self._clock.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = now + _TICK_SECONDS
            try:
                self._housekeep(now, tick)
            except Exception:  # one bad handle must not stop the pump every download waits on
                log.exception("swarm.housekeeping_error")
        # Drain what is left so nothing waits on an alert that will never be read.
        for alert in session.pop_alerts():
            handler = self._handlers.get(type(alert))
            if handler is not None:
                with contextlib.suppress(Exception):
                    handler(alert)

    async def _pause_unless_hurried(self, seconds: float) -> None:
        """The pump's pause between batches, cut short when a removal begins (a
        publishing download waits for that removal's alert; measured: every publish
        waited out a whole pause, ~25 ms, before this), when ``fetch_stats`` asks
        for counters, or when the engine stops."""
        if not self._hurried and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None) as pausing:
                    self._pausing = pausing
                    try:
                        await self._clock.sleep(seconds)
                    finally:
                        self._pausing = None
        self._hurried = False  # a hurry asked for during the batch counts too
