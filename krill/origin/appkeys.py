"""Typed keys for what the origin app holds, so other modules can add routes to it.

A module that extends the origin (seeding, deltas) gets the app from
``origin.server.create_app(config)`` and reads these, e.g.
``request.app[STORE].path(digest)``, ``app[TAG_MOVED].append(hook)`` or
``app[BLOB_PUSHED].append(hook)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from krill.blobstore import BlobStore
from krill.digests import Digest

if TYPE_CHECKING:
    from krill.origin.config import OriginConfig
    from krill.origin.metrics import OriginMetrics
    from krill.origin.pullthrough import PullThrough
    from krill.origin.repositories import Repositories
    from krill.origin.tagging import TagMovedHook
    from krill.origin.taghistory import TagHistory
    from krill.origin.uploads import UploadSessions

CONFIG: web.AppKey[OriginConfig] = web.AppKey("krill_origin_config")
STORE = web.AppKey("krill_origin_store", BlobStore)
REPOSITORIES: web.AppKey[Repositories] = web.AppKey("krill_origin_repositories")
TAG_HISTORY: web.AppKey[TagHistory] = web.AppKey("krill_origin_tag_history")
TAG_MOVED: web.AppKey[list[TagMovedHook]] = web.AppKey("krill_origin_tag_moved")
# Called (synchronously; start background work, don't block) for each blob pushed.
BLOB_PUSHED: web.AppKey[list[Callable[[Digest], None]]] = web.AppKey("krill_origin_blob_pushed")
UPLOADS: web.AppKey[UploadSessions] = web.AppKey("krill_origin_uploads")
METRICS: web.AppKey[OriginMetrics] = web.AppKey("krill_origin_metrics")
# None unless the origin mirrors an upstream registry.
PULL_THROUGH: web.AppKey[PullThrough | None] = web.AppKey("krill_origin_pull_through")
