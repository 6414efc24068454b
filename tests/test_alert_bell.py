"""libtorrent rings the event loop through a socket when it has alerts (krill.alertbell)."""

from __future__ import annotations

import asyncio
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


async def test_the_bell_rings_when_libtorrent_queues_an_alert() -> None:
    session = quiet_session()
    bell = AlertBell(session)
    try:
        session.pop_alerts()
        await bell.wait(0)  # whatever rang while the session started
        session.post_session_stats()
        async with asyncio.timeout(_BOUND):
            await bell.wait(60)
        assert any(isinstance(a, lt.session_stats_alert) for a in session.pop_alerts())
    finally:
        bell.close()


async def test_alerts_queued_after_a_pop_ring_the_next_wait() -> None:
    """The pump's order (wait, then pop) never leaves an alert unnoticed."""
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
    bell.close()
    left, right = socket.socketpair()  # likely reuses the numbers just closed
    left.setblocking(False)
    try:
        for _ in range(3):
            session.post_session_stats()
            await asyncio.to_thread(session.wait_for_alert, 5000)
            session.pop_alerts()
        await asyncio.sleep(0.1)
        try:
            stray = left.recv(16)
        except BlockingIOError:
            stray = b""
        assert stray == b""
    finally:
        left.close()
        right.close()
