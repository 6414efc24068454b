"""What the origin needs to be ready: a writable store, its bucket answering when
its storage is one, and the tracker it seeds through answering when one is
configured (``krill.readiness`` runs them).

The bucket check lists at most one key, the request the origin makes at start
to tell a missing bucket or refused credentials from a working one, once (no
retries: the probe says what it sees now). It is not required: a store that
is away is away for every replica alike, and each still serves what its
cache holds (pushes and the rest get 503 and are retried); unready, every
replica would leave its Services and drop the others from its replica set,
a total outage where there was a partial one.

The tracker check asks ``/health`` at the tracker's base URL (``config.tracker``
is its announce URL). Without a tracker the origin does not seed, so the check
is ``skipped``. It is not required either: an origin whose tracker is down still
takes pushes and serves pulls (nodes fall back to HTTP), and an unready origin
would leave its Services, turning a slower swarm into a registry outage.

A failed check that is not required shows as status ``degraded`` (still 200).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from krill.origin.appkeys import CONFIG, STORE
from krill.origin.storage import OBJECT_STORE, ObjectStore
from krill.readiness import Check, Skipped, serves_health, store_writable
from krill.tls import ClientTls, client_ssl_context

__all__ = ["origin_checks"]


def origin_checks(app: web.Application) -> list[Check]:
    return [
        Check("store", lambda: store_writable(app[STORE])),
        Check("bucket", lambda: bucket_reachable(app.get(OBJECT_STORE)), required=False),
        Check(
            "tracker",
            lambda: _tracker_reachable(app[CONFIG].tracker, app[CONFIG].tracker_ca),
            required=False,
        ),
    ]


async def bucket_reachable(objects: ObjectStore | None) -> str:
    if objects is None:
        raise Skipped("storage is a local directory")
    await objects.backend.client.check_bucket(once=True)
    return f"{objects.backend.description} answered"


async def _tracker_reachable(announce_url: str | None, ca: Path | None) -> str:
    if not announce_url:
        raise Skipped("no tracker configured (the origin does not seed)")
    base = announce_url.rstrip("/").removesuffix("/announce")
    # A session per probe: readiness is asked every few seconds at most, and the
    # origin has no client session of its own to borrow.
    tls = client_ssl_context(ClientTls(ca=ca))
    connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await serves_health(session, base)
