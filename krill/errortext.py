"""An exception as one phrase a reader can act on, for logs and readiness details.

``repr`` of aiohttp's errors is their constructor's arguments
(``ClientConnectorError(ConnectionKey(host='127.0.0.1', port=43597, is_ssl=False,
ssl=True, proxy=None, ...)``), which buries the one fact that matters;
``str`` alone loses the kind (a bare ``''`` for a TimeoutError). The kind and
its message together read as a sentence: ``ClientConnectorError: Cannot connect
to host 127.0.0.1:43597 ssl:default [Connect call failed ...]``.
"""

from __future__ import annotations

__all__ = ["error_text"]


def error_text(exc: BaseException) -> str:
    """``Kind: message``, or just ``Kind`` when the exception says nothing more."""
    message = str(exc).strip()
    kind = type(exc).__name__
    return f"{kind}: {message}" if message else kind
