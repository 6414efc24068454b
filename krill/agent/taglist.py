"""``GET /v2/<name>/tags/list`` on the agent: the origin's answer, under the client's name.

containerd never lists tags, but ``skopeo inspect`` does (and fails without
them), as do tools that pick the newest tag. Nothing is cached: a tag list is
small and is asked for rarely, and an old one would hide a tag just pushed.

The origin names the repository as it stores it (``docker.io/library/alpine``
for ``library/alpine?ns=docker.io``, ``agent.namespaces``); the answer carries
the client's name, and a next-page ``Link`` the client's path and ``ns``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from krill.agent.origins import ask_origin
from krill.originclient import Answer, OriginClient
from krill.registry_errors import RegistryError

__all__ = ["MAX_TAG_LIST_BYTES", "fetch_tag_list", "tag_list_response"]

MAX_TAG_LIST_BYTES = 16 << 20  # ~300,000 tags of 50 characters


async def fetch_tag_list(
    origin: OriginClient,
    repository: str,
    query: Mapping[str, str],
    authorization: str | None,
    seconds: float,
) -> Answer:
    """The origin's answer to the tag list of ``repository`` (``n``/``last`` passed on)."""
    url = f"{origin.base_url}/v2/{repository}/tags/list"
    params = {key: query[key] for key in ("n", "last") if key in query}
    headers = {"Authorization": authorization} if authorization else {}
    too_large = RegistryError("UNAVAILABLE", "the origin's tag list is too large", status=502)
    return await ask_origin(
        origin, url, what="tag list", limit=MAX_TAG_LIST_BYTES, seconds=seconds,
        headers=headers, params=params, too_large=too_large,
    )  # fmt: skip


def tag_list_response(
    answer: Answer, name: str, ns: str | None, headers: Mapping[str, str]
) -> web.Response:
    """The client's answer from the origin's 200 (other statuses are the caller's)."""
    try:
        tags = json.loads(answer.body).get("tags") or []
    except (ValueError, AttributeError):
        raise RegistryError(
            "UNAVAILABLE", "the origin's tag list is not the JSON it should be", status=502
        ) from None
    extra = dict(headers)
    link = answer.link
    if link is not None and "?" in link:  # </v2/<origin name>/tags/list?n=..&last=..>; rel=..
        query = dict(parse_qsl(link.split("?", 1)[1].split(">", 1)[0]))
        if ns:
            query["ns"] = ns
        extra["Link"] = f'</v2/{name}/tags/list?{urlencode(query)}>; rel="next"'
    return web.json_response({"name": name, "tags": tags}, headers=extra)
