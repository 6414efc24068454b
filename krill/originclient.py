"""The client side of an origin (or a tracker's metainfo endpoint): one class, not a dozen copies.

Agents, trackers and tools all talk to an origin the same way: build a URL
from a base, GET it over a shared ``aiohttp.ClientSession``, read a bounded
body, look at the status. Written out at every call site, the
``/krill/v1/...`` and ``/v2/...`` paths drifted apart from the server's routes
and every copy needed its own body limit. ``OriginClient`` builds every URL
(Krill endpoints from ``krill.endpoints``, the registry API's blob and
manifest paths here) and reads bodies with ``krill.bodies.read_limited``.

Every request carries the ``X-Request-Id`` of the request it is made for
(``krill.requestid``), so the origin's log lines for an agent's pull share
the agent's id.

It does not decide what a failure means: ``get_bytes`` and ``open_blob`` raise
aiohttp's and ``BodyTooLarge`` exceptions as they come and return any status,
so each caller keeps its own error messages and outcomes (a 503 for the
registry endpoint, a delta miss, the next origin for the tracker). The one
exception is ``metainfo``, which is the same everywhere: it raises
``MetainfoError`` for anything but a checked torrent (``MetainfoNotFound`` when an
origin says it has no such blob).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs

from krill.bodies import BodyTooLarge, read_limited
from krill.digests import Digest
from krill.endpoints import DELTAS, METAINFO, Endpoint
from krill.metainfo import MAX_METAINFO_BYTES, MetainfoError, check_metainfo
from krill.requestcontext import request_id_headers

__all__ = ["Answer", "MetainfoNotFound", "OriginClient", "fetch_metainfo"]

# A delta lookup answers a few hundred bytes of JSON.
MAX_DELTA_ANSWER = 64 * 1024


class MetainfoNotFound(MetainfoError):
    """The server says it has no such blob: 404 with the registry code ``BLOB_UNKNOWN``.

    Only an origin answers that way (its store decides); a tracker's 404 means
    "no origin gave me metainfo", which may be an origin down, so it stays a
    plain ``MetainfoError``, and so does an origin that does not seed (404
    ``UNSUPPORTED``: it has no metainfo endpoint).
    """


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole (bounded) answer; ``body`` is empty for a status the caller did not want read."""

    url: str
    status: int
    content_type: str
    body: bytes
    challenge: str | None = None  # WWW-Authenticate of a 401: how the client may sign in
    link: str | None = None  # a paged list's next page (Link: <...>; rel="next")


class OriginClient:
    """Requests to one server at ``base_url`` over a session the caller owns (and closes)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    @property
    def configured(self) -> bool:
        """False for an empty base URL (no origin set): there is nobody to ask."""
        return bool(self.base_url)

    # ---- URLs ---------------------------------------------------------------

    def url(self, endpoint: Endpoint, digest: Digest | str) -> str:
        return endpoint.url(self.base_url, digest)

    def blob_url(self, repository: str, digest: Digest | str) -> str:
        return f"{self.base_url}/v2/{repository}/blobs/{digest}"

    def manifest_url(self, repository: str, reference: str) -> str:
        return f"{self.base_url}/v2/{repository}/manifests/{reference}"

    # ---- requests -----------------------------------------------------------

    async def get_bytes(
        self,
        url: str,
        *,
        limit: int,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: int | None = None,
        seconds: float | None = None,
    ) -> Answer:
        """GET ``url`` and read at most ``limit`` bytes of its body (``what`` names it in errors).

        With ``ok`` set, a different status is returned without reading its body.
        ``seconds`` bounds one server's answer (a client of several replicas
        bounds each, so a hung one leaves time to ask the next).
        Raises ``BodyTooLarge``, ``aiohttp.ClientError``, ``TimeoutError``, ``OSError``.
        """
        headers = {**request_id_headers(), **(headers or {})}
        async with (
            asyncio.timeout(seconds),
            self.session.get(url, params=params, headers=headers) as response,
        ):
            content_type = response.headers.get("Content-Type", "")
            challenge = response.headers.get(hdrs.WWW_AUTHENTICATE)
            link = response.headers.get(hdrs.LINK)
            if ok is not None and response.status != ok:
                return Answer(url, response.status, content_type, b"", challenge, link)
            body = await read_limited(
                response.content, limit, what, declared=response.content_length
            )
            return Answer(url, response.status, content_type, body, challenge, link)

    def described(self) -> str:
        """The server(s) this client asks, for a message to a user."""
        return f"the origin {self.base_url}"

    async def head(self, url: str, *, authorization: str | None = None) -> tuple[int, str | None]:
        """``HEAD url`` as a client (its ``Authorization``, or none): the status and challenge.

        The agent asks this way whether a client may read a manifest or blob
        (``agent.access``); the node's own credentials are not added to a
        request that carries a client's, and a client without one is asked
        about anonymously (the node credential is only for ``/krill/v1/``
        and for fetching).
        """
        headers = request_id_headers()
        if authorization:
            headers[hdrs.AUTHORIZATION] = authorization
        # middlewares=(): the session's (the node's credentials) must not speak for the client.
        async with self.session.head(
            url, headers=headers, allow_redirects=False, middlewares=()
        ) as response:
            return response.status, response.headers.get(hdrs.WWW_AUTHENTICATE)

    async def open_blob(
        self,
        repository: str,
        digest: Digest,
        *,
        offset: int = 0,
        timeouts: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Start ``GET /v2/<repository>/blobs/<digest>`` (``Range`` from ``offset``); any status.

        ``timeouts`` replaces the session's per-phase limits (a blob streams for
        long, so its total is usually unbounded). The caller streams the body
        and must release the response.
        """
        headers = request_id_headers()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self.blob_url(repository, digest)
        if timeouts is None:
            return await self.session.get(url, headers=headers)
        return await self.session.get(url, headers=headers, timeout=timeouts)

    async def lookup_delta(self, target: Digest, have: Iterable[Digest], repository: str) -> Answer:
        """``GET /krill/v1/deltas/<target>?have=...&repo=...``; the body is read only on 200."""
        params = {"have": ",".join(str(b) for b in have), "repo": repository}
        return await self.get_bytes(
            self.url(DELTAS, target),
            limit=MAX_DELTA_ANSWER,
            what="delta lookup answer",
            params=params,
            ok=200,
        )

    async def metainfo(self, digest: Digest) -> bytes:
        """The blob's torrent from ``/krill/v1/metainfo/<digest>``, checked against the digest.

        Raises MetainfoError with the server's status and message when it fails,
        so the caller can say which server lacked the blob.
        """
        url = self.url(METAINFO, digest)
        try:
            answer = await self.get_bytes(url, limit=MAX_METAINFO_BYTES, what=f"GET {url} answer")
        except BodyTooLarge as exc:
            raise MetainfoError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MetainfoError(f"GET {url} failed: {exc!r}") from exc
        if answer.status != 200:
            detail = answer.body[:200].decode(errors="replace")
            failure = MetainfoNotFound if _blob_unknown(answer) else MetainfoError
            raise failure(f"GET {url} answered {answer.status}: {detail}")
        check_metainfo(answer.body, digest)
        return answer.body


def _blob_unknown(answer: Answer) -> bool:
    """Whether ``answer`` is the registry's 404 ``BLOB_UNKNOWN``."""
    if answer.status != 404:
        return False
    try:
        errors = json.loads(answer.body)["errors"]
        return any(error.get("code") == "BLOB_UNKNOWN" for error in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


async def fetch_metainfo(session: aiohttp.ClientSession, base_url: str, digest: Digest) -> bytes:
    """GET ``{base_url}/krill/v1/metainfo/<digest>`` (origin or tracker) and check it.

    Raises MetainfoError with the server's status and message when it fails,
    so the caller can say which server lacked the blob. The same call as
    ``OriginClient.metainfo`` for code that holds a session and a URL rather
    than a client.
    """
    return await OriginClient(session, base_url).metainfo(digest)
