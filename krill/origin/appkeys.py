"""Typed keys for what the origin app holds, so other modules can add routes to it.

A module that extends the origin (seeding, deltas) gets the app from
``origin.server.create_app(config)`` and reads these, e.g.
``request.app[STORE].path(digest)``, ``app[TAG_MOVED].append(hook)`` or
``app[BLOB_PUSHED].append(hook)``.

This is the bottom of the origin's layering: it imports only modules that
import nothing of the origin (config, metrics, the metadata stores), so every
domain and route module can read the app through it without a cycle. A
service a module adds keeps its key beside it (``pullthrough.PULL_THROUGH``,
``seeding.SWARM_ENGINE_KEY``, ``deltas.DELTA_ENGINE``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.origin.config import OriginConfig
from krill.origin.gclock import GcLock
from krill.origin.metrics import OriginMetrics
from krill.origin.repositories import Repositories
from krill.origin.taghistory import TagHistory
from krill.origin.uploads import UploadSessions

__all__ = [
    "BLOB_PUSHED",
    "CONFIG",
    "GC_LOCK",
    "METRICS",
    "REPOSITORIES",
    "STORE",
    "TAG_HISTORY",
    "TAG_MOVED",
    "UPLOADS",
    "BlobPushedHook",
    "TagMovedHook",
]

# async (repo, tag, old digest or None for a new tag, new digest); see origin.tagging.
TagMovedHook = Callable[[str, str, Digest | None, Digest], Awaitable[None]]
# Called (synchronously; start background work, don't block) for each blob pushed.
BlobPushedHook = Callable[[Digest], None]

CONFIG = web.AppKey("krill_origin_config", OriginConfig)
# The signed-in user a request acts for (set by the auth middleware; absent: anonymous),
# so a user's upload sessions can be counted against their share (origin.uploads).
CALLER_USER = web.RequestKey("krill_origin_caller_user", str)
STORE = web.AppKey("krill_origin_store", BlobStore)
REPOSITORIES = web.AppKey("krill_origin_repositories", Repositories)
TAG_HISTORY = web.AppKey("krill_origin_tag_history", TagHistory)
TAG_MOVED: web.AppKey[list[TagMovedHook]] = web.AppKey("krill_origin_tag_moved")
BLOB_PUSHED: web.AppKey[list[BlobPushedHook]] = web.AppKey("krill_origin_blob_pushed")
GC_LOCK = web.AppKey("krill_origin_gc_lock", GcLock)
UPLOADS = web.AppKey("krill_origin_uploads", UploadSessions)
METRICS = web.AppKey("krill_origin_metrics", OriginMetrics)
