"""Tags list and catalog, with the spec's ``n``/``last`` pagination and ``Link`` header."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from krill.origin.appkeys import REPOSITORIES
from krill.registry_errors import RegistryError
from krill.registry_params import API_HEADERS, parse_count, repo_name


def paginate(request: web.Request, items: list[str], path: str) -> tuple[list[str], dict[str, str]]:
    """Items after ``last``, at most ``n``; a ``Link`` to the next page when more remain."""
    last = request.query.get("last")
    if last:
        items = [item for item in items if item > last]
    count = parse_count(request)
    headers = dict(API_HEADERS)
    if count is not None and len(items) > count:
        items = items[:count]
        if items:
            query = urlencode({"n": count, "last": items[-1]})
            headers["Link"] = f'<{path}?{query}>; rel="next"'
    return items, headers


async def list_tags(request: web.Request) -> web.Response:
    repo = repo_name(request)
    repos = request.app[REPOSITORIES]
    if not repos.exists(repo):
        raise RegistryError(
            "NAME_UNKNOWN", f"repository {repo} is not known", detail={"name": repo}
        )
    tags, headers = paginate(request, repos.tags(repo), f"/v2/{repo}/tags/list")
    return web.json_response({"name": repo, "tags": tags}, headers=headers)


async def catalog(request: web.Request) -> web.Response:
    names, headers = paginate(request, list(request.app[REPOSITORIES].names()), "/v2/_catalog")
    return web.json_response({"repositories": names}, headers=headers)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v2/_catalog", catalog, name="catalog"),
        web.get("/v2/{name:.+}/tags/list", list_tags, name="tags"),
    ]
