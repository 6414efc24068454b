"""libtorrent rings the event loop through a socket when it has alerts (krill.alertbell)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import libtorrent as lt

from krill.alertbell import AlertBell

# Generous bound: a bell that does not ring makes ``wait`` sleep its full minute
# and the test fail here, whatever the machine's speed.
_BOUND = 20.0


def quiet_session() -> lt.session:
    return lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": int(lt.alert.category_t.stats_notification),
        }
    )


async def test_the_bell_rings_each_time_libtorrent_queues_alerts_after_a_pop() -> None:
    """The pump's order (wait, then pop) never leaves an alert unnoticed. A ring may
    be stale (a byte from before the last pop) and find nothing new: wait again."""
    session = quiet_session()
    bell = AlertBell(session)
    try:
        for _ in range(3):
            session.post_session_stats()
            async with asyncio.timeout(_BOUND):
                await bell.wait(60)
                while not any(isinstance(a, lt.session_stats_alert) for a in session.pop_alerts()):
                    await bell.wait(60)
    finally:
        bell.close()


async def test_ring_wakes_a_waiter_without_an_alert() -> None:
    session = quiet_session()
    bell = AlertBell(session)
    try:
        session.pop_alerts()
        await bell.wait(0)
        waiter = asyncio.create_task(bell.wait(60))
        await asyncio.sleep(0)
        bell.ring()
        async with asyncio.timeout(_BOUND):
            await waiter
    finally:
        bell.close()


async def test_after_close_libtorrent_no_longer_writes_to_the_old_descriptor() -> None:
    """A descriptor number is reused by the next socket or file opened: a late byte
    from libtorrent would land in it."""
    session = quiet_session()
    bell = AlertBell(session)
    old_writer = bell.descriptor
    bell.close()
    bell.close()  # safe twice
    # Linux hands out the lowest free numbers, so the old writer's number comes back
    # within a few sockets (other threads of this process may take a few first).
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        while not any(old_writer in (a.fileno(), b.fileno()) for a, b in pairs):
            assert len(pairs) < 100, f"descriptor {old_writer} was never handed out again"
            pairs.append(socket.socketpair())
        for _ in range(3):
            session.post_session_stats()
            await asyncio.to_thread(session.wait_for_alert, 5000)
            session.pop_alerts()
        await asyncio.sleep(0.1)
        for a, b in pairs:
            for end in (a, b):
                end.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    assert end.recv(16) == b"", "libtorrent wrote to a closed bell's number"
    finally:
        for a, b in pairs:
            a.close()
            b.close()
