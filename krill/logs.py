"""Structured log lines: ``ts level logger event key=value ...``.

Library code logs through ``logging`` with an event name and key=value pairs
in the message; only the CLI configures handlers (never ``print``).
"""

from __future__ import annotations

import logging
import sys
import time


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} "
        line += record.getMessage()
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "info") -> None:
    """Send structured lines to stderr; call once from a CLI entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request; keep it at warning unless asked.
    logging.getLogger("aiohttp.access").setLevel(
        logging.INFO if level.lower() == "debug" else logging.WARNING
    )
