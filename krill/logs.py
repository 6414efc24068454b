"""Structured log lines: ``ts level logger event key=value ...``, or one JSON object a line.

Library code logs through ``logging`` with an event name and key=value pairs
in the message; only the CLI configures handlers (never ``print``).

Two formats (``LogFormat``), chosen by ``krill --log-format`` or the
``KRILL_LOG_FORMAT`` environment variable:

* ``text``: ``2026-12-05T07:00:00.123Z info krill.agent.fetcher fetch.done digest=...``,
  for a person at a terminal;
* ``json``: ``{"time": ..., "level": ..., "logger": ..., "message": ...,
  "request_id": ...}`` per line, for a log pipeline (Loki, Elasticsearch) that
  should not have to parse the text.

Both carry the id of the HTTP request the line was logged for
(``krill.requestid``): ``request_id=...`` at the end of a text line, the
``request_id`` key (null outside a request) in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from krill.logformat import ENV_LOG_FORMAT, LogFormat, log_format_from_env
from krill.requestcontext import current_request_id

__all__ = ["ENV_LOG_FORMAT", "LogFormat", "log_format_from_env", "setup_logging"]


def _timestamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id as it is logged (in its task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname.lower()} {record.name} "
        line += record.getMessage()
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line += f" request_id={request_id}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", log_format: LogFormat | None = None) -> None:
    """Send structured lines to stderr; call once from a CLI entry point.

    Without ``log_format`` the format comes from ``KRILL_LOG_FORMAT`` (which
    ``krill --log-format`` sets, so the services ``krill up`` starts log alike).
    """
    chosen = log_format or log_format_from_env()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if chosen is LogFormat.JSON else _LineFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request; keep it at warning unless asked.
    logging.getLogger("aiohttp.access").setLevel(
        logging.INFO if level.lower() == "debug" else logging.WARNING
    )
