"""The origin replicas sharing one bucket, which of them are alive, and which owns a blob.

With ``replicas`` set (a comma-separated list of the replicas' base URLs, or
``dns+http://NAME:PORT``, the headless Service whose addresses are the
replicas, resolved again every ``REFRESH`` seconds) and ``replica_url`` (this
origin's own URL as the others reach it), each origin probes every
replica's ``/ready`` every ``REFRESH`` seconds. A blob's owner is the
rendezvous-hash owner (``krill.rendezvous``) of its digest among the live
replicas, this origin always counted live. The owner is the one replica that
copies the blob into its local cache and seeds it into the swarm; the others
answer from the bucket without caching it, and send metainfo requests to the
owner (``origin.storage_seeding``), so a herd pulling through several
origins costs the origins about one copy of the blob. A replica that stops
answering ``/ready`` drops out at the next probe, and its blobs go to the
next in each ranking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from krill.digests import Digest
from krill.rendezvous import rank
from krill.replicas import parse_replicas, resolve_replicas

__all__ = ["REFRESH", "REPLICAS", "ReplicaSet", "install_replicas", "parse_replicas"]

log = logging.getLogger(__name__)

# Seconds between probes of the replicas' /ready (and DNS lookups of a headless Service).
REFRESH = 5.0
PROBE_TIMEOUT = 2.0


class ReplicaSet:
    """The replicas, their liveness, and the owner of each blob among the live ones."""

    def __init__(self, me: str, members: list[str], dns: URL | None = None) -> None:
        self.me = me.rstrip("/")
        self.members = sorted({*members, self.me})
        self.dns = dns
        self.live: set[str] = set(self.members)  # until the first probe says otherwise
        # For requests to other replicas (probes, forwarded metainfo), while the app runs.
        self.session: aiohttp.ClientSession | None = None

    def ranking(self, digest: Digest) -> list[str]:
        """The live replicas, the blob's owner first."""
        return rank(str(digest), self.live | {self.me})

    def owns(self, digest: Digest) -> bool:
        return self.ranking(digest)[0] == self.me

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        """Resolve the Service (if any), then probe every replica's /ready once."""
        if self.dns is not None:
            self.members = sorted({*await resolve_replicas(self.dns), self.me})
        others = [m for m in self.members if m != self.me]
        answers = await asyncio.gather(*(_ready(session, m) for m in others))
        live = {self.me} | {m for m, ok in zip(others, answers, strict=True) if ok}
        if live != self.live:
            log.info("origin.replicas_live live=%s", ",".join(sorted(live)))
        self.live = live


async def _ready(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/ready") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


REPLICAS = web.AppKey("krill_origin_replicas", ReplicaSet)


def install_replicas(
    app: web.Application, spec: str, me: str, tls: ssl.SSLContext | None = None
) -> None:
    """Probe the replicas for the app's lifetime; ``app[REPLICAS]`` says who owns what.

    ``tls``: how to reach replicas serving https (``auth_tls.replica_ssl_context``).
    """
    members, dns = parse_replicas(spec)
    replicas = ReplicaSet(me, members, dns)
    app[REPLICAS] = replicas

    async def probe(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
        session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        replicas.session = session

        async def loop() -> None:
            while True:
                try:
                    await replicas.refresh(session)
                except Exception:
                    log.exception("origin.replicas_probe_failed")
                await asyncio.sleep(REFRESH)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        replicas.session = None
        await session.close()

    app.cleanup_ctx.append(probe)
