"""``X-Request-Id``: one id per request, in every log line it causes, on every service.

A pull that is slow or fails crosses three processes (containerd -> agent ->
origin); without a shared id the agent's and the origin's log lines for it can
only be matched by time and digest. ``install_request_ids(app)`` gives each
request an id: the client's ``X-Request-Id`` when it sent a sane one (so a
caller's own id carries through), else a new random one. The id is

* put in the ``request_id`` context variable (``krill.requestcontext``) for
  the handler and every task it starts (asyncio copies the context), so
  ``krill.logs`` adds it to each log record;
* echoed in the response's ``X-Request-Id`` header (streamed answers too: it is
  set as the response is prepared);
* sent on by ``krill.originclient.OriginClient`` with every request the agent
  makes to the origin on the request's behalf, so the origin logs the same id.

A blob fetch shared by several requests (single-flight) runs in the task of the
request that started it and logs that request's id.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from krill.requestcontext import HEADER, bind_request_id, id_for_request, unbind_request_id

__all__ = ["install_request_ids", "request_id_middleware"]

_REQUEST_KEY = web.RequestKey("request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = id_for_request(request.headers.get(HEADER))
    request[_REQUEST_KEY] = request_id
    # A token reset, not ``bound_request_id``: no generator object per request.
    token = bind_request_id(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as error:  # raised answers (404, 401...) carry it too
        error.headers[HEADER] = request_id
        raise
    finally:
        unbind_request_id(token)
    if not response.prepared:
        response.headers[HEADER] = request_id
    return response


async def _echo(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # Streamed answers (prepared inside their handler) and aiohttp's own 500
    # for an exception: the answers the middleware cannot reach.
    if HEADER not in response.headers:
        request_id = request.get(_REQUEST_KEY)
        if request_id is not None:
            response.headers[HEADER] = request_id


def install_request_ids(app: web.Application) -> None:
    """Give ``app``'s requests ids: outermost middleware, echoed in every response.

    Call before the app starts (its middleware list is frozen then).
    """
    app.middlewares.insert(0, request_id_middleware)
    app.on_response_prepare.append(_echo)
