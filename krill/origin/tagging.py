"""Moving a tag: the link, the durable history line, then the ``TAG_MOVED`` hooks.

``app[TAG_MOVED]`` is a list of async callbacks other modules append to
(e.g. the delta engine, from ``delta_routes.setup(app)``), each an
``appkeys.TagMovedHook``::

    async def on_tag_moved(repo: str, tag: str, old: Digest | None, new: Digest) -> None

They are called, in order, after a manifest PUT or an upstream refresh has
moved ``repo:tag`` from ``old`` (None for a new tag) to ``new``, with the
manifest already stored and linked. They are awaited before the PUT is
answered, so a callback must be quick: schedule long work (computing deltas)
as its own task. An exception in one is logged and does not fail the push.

The link and the history line are fsynced, so they are written in a thread
(off the event loop), one tag change at a time (``TAG_LOCK``) so two moves
of one tag cannot interleave their read of the old value and their write.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from krill.digests import Digest
from krill.origin.appkeys import REPOSITORIES, TAG_HISTORY, TAG_MOVED

__all__ = ["TAG_LOCK", "delete_tag", "move_tag"]

log = logging.getLogger(__name__)

TAG_LOCK = threading.Lock()


def _set_and_record(app: web.Application, repo: str, tag: str, digest: Digest) -> Digest | None:
    with TAG_LOCK:
        old = app[REPOSITORIES].set_tag(repo, tag, digest)
        if old != digest:
            app[TAG_HISTORY].record(repo, tag, old, digest)
        return old


def _delete_and_record(app: web.Application, repo: str, tag: str) -> Digest | None:
    with TAG_LOCK:
        old = app[REPOSITORIES].delete_tag(repo, tag)
        if old is not None:
            app[TAG_HISTORY].record(repo, tag, old, None)
        return old


async def move_tag(app: web.Application, repo: str, tag: str, digest: Digest) -> Digest | None:
    """Point ``repo:tag`` at ``digest``; record and announce it if it moved. Return the old one."""
    old = await asyncio.to_thread(_set_and_record, app, repo, tag, digest)
    if old == digest:
        return old
    for hook in app[TAG_MOVED]:
        try:
            await hook(repo, tag, old, digest)
        except Exception:
            log.exception("tag.hook_failed repo=%s tag=%s hook=%r", repo, tag, hook)
    return old


async def delete_tag(app: web.Application, repo: str, tag: str) -> Digest | None:
    """Remove ``repo:tag`` and record it; return what it pointed at (None: no such tag)."""
    return await asyncio.to_thread(_delete_and_record, app, repo, tag)
