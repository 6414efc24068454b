"""Which log format a process writes (``--log-format`` / ``KRILL_LOG_FORMAT``), and nothing else.

``krill.cli`` checks the choice for every command; keeping it apart from
``krill.logs`` (which imports ``logging``, ``json`` and the request context to
format lines) lets a command that configures no logging, ``krill delta apply``
(timed by its users, issue 15), start without loading them for the check.
``krill.logs`` re-exports these names.
"""

from __future__ import annotations

import os
from enum import StrEnum

__all__ = ["ENV_LOG_FORMAT", "LOG_LEVELS", "LogFormat", "log_format_from_env"]

ENV_LOG_FORMAT = "KRILL_LOG_FORMAT"

# The levels every service's ``log_level`` takes (``logging``'s names, lower case).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def log_format_from_env() -> LogFormat:
    """``KRILL_LOG_FORMAT`` (text when unset); an unknown value is a ValueError naming both."""
    value = os.environ.get(ENV_LOG_FORMAT, LogFormat.TEXT).strip().lower()
    try:
        return LogFormat(value)
    except ValueError:
        choices = ", ".join(f.value for f in LogFormat)
        raise ValueError(f"{ENV_LOG_FORMAT}={value!r} is not a log format ({choices})") from None
