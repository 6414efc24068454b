"""The distribution spec's error codes, as exceptions that render themselves.

Raise ``RegistryError`` anywhere in a handler; ``error_middleware`` turns it
(and aiohttp's own HTTP errors) into the spec's JSON body with the matching
status, so clients like containerd and skopeo show the user a real reason.

Two cases the spec's code list does not cover:

- A path no route matches: ``NAME_UNKNOWN`` only for a repository path
  (``/v2/<name>/manifests|blobs|tags|referrers/...``); any other path gets
  404 with ``UNSUPPORTED`` and a message naming the path, since nothing in
  it was a repository name.
- A full disk (``ENOSPC``, ``EDQUOT`` from any handler): 507 with code
  ``UNAVAILABLE`` and a message saying so, logged as a warning without a
  traceback. It is the operator's to fix, not a bug, and a client told
  "unexpected error, report it" would not know that freeing space and
  pushing again is the way out. Whatever was being written is discarded by
  its writer (``krill.blobstore``), so nothing partial is left.
- A bug (any other exception): the traceback is logged and the client gets
  500 with code ``UNKNOWN``. ``UNKNOWN`` is not in the spec's list; it is
  what CNCF distribution itself answers for unexpected errors, so clients
  already render it. A response already under way is not replaced (its
  connection is closed instead).
"""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# Sent with every registry API response, errors included (clients probe /v2/ for it).
API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}

# code -> (HTTP status, message)
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "RANGE_INVALID": (416, "requested range not satisfiable"),
    "UNAVAILABLE": (503, "service unavailable"),
    "UNKNOWN": (500, "unknown error"),  # not a spec code: see the module docstring
}

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_INSUFFICIENT_STORAGE = 507

_REPOSITORY_PATH_RE = re.compile(r"^/v2/.+/(manifests|blobs|tags|referrers)(/|$)")


class RegistryError(Exception):
    """An error the client should see as the spec's JSON body."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_status, default_message = CODES[code]
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def response(self, *, head: bool = False) -> web.Response:
        return error_response(
            self.code, self.message, status=self.status, detail=self.detail,
            headers=self.headers, head=head,
        )


def error_response(
    code: str,
    message: str,
    *,
    status: int,
    detail: Any = None,
    headers: dict[str, str] | None = None,
    head: bool = False,
) -> web.Response:
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    body = json.dumps({"errors": [entry]}).encode()
    all_headers = {**API_HEADERS, **(headers or {})}
    return web.Response(
        status=status,
        body=None if head else body,
        content_type="application/json",
        headers=all_headers,
    )


_HTTP_STATUS_CODES = {
    400: "UNSUPPORTED",
    404: "NAME_UNKNOWN",
    405: "UNSUPPORTED",
    413: "SIZE_INVALID",
}


def _not_found(request: web.Request, head: bool) -> web.Response:
    if _REPOSITORY_PATH_RE.match(request.path):
        return error_response(
            "NAME_UNKNOWN", CODES["NAME_UNKNOWN"][1], status=404, head=head
        )
    where = (
        "Krill's metainfo and piece endpoints answer on an origin that seeds (one started "
        "with --tracker)"
        if request.path.startswith("/krill/v1/")
        else "the registry API lives under /v2/"
    )
    return error_response(
        "UNSUPPORTED", f"no such endpoint: {request.path[:200]}; {where}", status=404, head=head
    )


def _response_started(request: web.Request) -> bool:
    """Whether headers or body already went out (then no error response can follow)."""
    return request.writer is not None and request.writer.output_size > 0


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render RegistryError and aiohttp's HTTP errors as the spec's JSON."""
    head = request.method == "HEAD"
    try:
        return await handler(request)
    except RegistryError as exc:
        log.info(
            "request.error method=%s path=%s code=%s status=%d",
            request.method, request.path, exc.code, exc.status,
        )
        if _response_started(request):
            raise
        return exc.response(head=head)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404 and request.match_info.route.resource is None:
            return _not_found(request, head)
        code = _HTTP_STATUS_CODES.get(exc.status, "UNSUPPORTED")
        return error_response(
            code, exc.reason or CODES[code][1], status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}, head=head,
        )
    except ConnectionError:
        raise  # the client went away: nobody to answer
    except OSError as exc:
        if exc.errno not in _DISK_FULL or _response_started(request):
            return _crashed(request, head)
        log.warning(
            "request.disk_full method=%s path=%s error=%s",
            request.method, request.path[:200], exc.strerror,
        )
        return error_response(
            "UNAVAILABLE",
            f"the server's disk is full ({exc.strerror}); nothing was stored: "
            "free space on it (or grow its volume) and retry",
            status=_INSUFFICIENT_STORAGE,
            head=head,
        )
    except Exception:
        return _crashed(request, head)


def _crashed(request: web.Request, head: bool) -> web.Response:
    """A bug: the traceback goes to the log (call from an ``except`` block), the client
    gets a 500, or a cut connection when the response was already under way."""
    log.exception("request.crashed method=%s path=%s", request.method, request.path[:200])
    if _response_started(request):
        raise  # the exception being handled by our caller
    return error_response(
        "UNKNOWN",
        "the server hit an unexpected error (it is logged); retry, and report it if "
        "it persists",
        status=500,
        head=head,
    )
