"""``/auth/token`` on the agent's registry endpoint: the origin's token endpoint, forwarded.

When the agent refuses a private repository with 401, its challenge names
this endpoint as the realm rather than the origin's: containerd on a node
may not be able to reach (or resolve) the origin's address, but it always
reaches the agent it is configured to pull through. The request (query,
form body, ``Authorization``) goes to the origin unchanged and its answer
(status, token JSON, challenge) comes back unchanged; the agent reads
neither the password nor the token, and logs neither.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs, web

from krill.bodies import BodyTooLarge, read_limited
from krill.errortext import error_text
from krill.originclient import OriginClient
from krill.registry_errors import RegistryError
from krill.requestcontext import request_id_headers

__all__ = ["TOKEN_PATH", "forward_token_request"]

log = logging.getLogger(__name__)

TOKEN_PATH = "/auth/token"
# A token request is a short form; a token answer is a few hundred bytes of JSON.
MAX_TOKEN_BYTES = 64 * 1024
_FORWARDED = (hdrs.AUTHORIZATION, hdrs.CONTENT_TYPE, hdrs.ACCEPT)
_RETURNED = (hdrs.CONTENT_TYPE, hdrs.CACHE_CONTROL, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER)


async def forward_token_request(request: web.Request, origin: OriginClient) -> web.Response:
    """Ask the origin's ``/auth/token`` what ``request`` asks; answer what it answers."""
    if not origin.configured:
        raise RegistryError("UNAVAILABLE", "this agent has no origin configured")
    try:
        body = await read_limited(request.content, MAX_TOKEN_BYTES, "token request")
    except BodyTooLarge as exc:
        raise RegistryError("SIZE_INVALID", str(exc), status=413) from None
    headers = {**request_id_headers(), **_copied(request.headers, _FORWARDED)}
    url = origin.base_url + TOKEN_PATH
    try:
        async with origin.session.request(
            request.method, url, params=request.rel_url.query, data=body or None,
            headers=headers, allow_redirects=False,
        ) as answer:  # fmt: skip
            payload = await read_limited(answer.content, MAX_TOKEN_BYTES, "token answer")
            return web.Response(
                status=answer.status, body=payload, headers=_copied(answer.headers, _RETURNED)
            )
    except (aiohttp.ClientError, TimeoutError, OSError, BodyTooLarge) as exc:
        log.warning("token.origin_unreachable url=%s error=%r", url, error_text(exc))
        raise RegistryError(
            "UNAVAILABLE", f"the origin {origin.base_url} did not answer the token request"
        ) from None


def _copied(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}
