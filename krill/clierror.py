"""The errors ``krill`` shows the user as one line: ``CliError`` and ``ConfigError``.

They live apart from ``krill.cli`` (which imports every subcommand module) so
that subcommands can import them at the top of their modules without a cycle.
``ConfigError`` is defined here, not in ``krill.config`` (which re-exports it),
so that ``krill.cli`` can catch it without loading the config loader (tomllib:
~7 ms of every ``krill delta apply``'s start, issue 15).
"""

from __future__ import annotations

__all__ = ["CliError", "ConfigError"]


class CliError(Exception):
    """A failure to report to the user as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says why."""
