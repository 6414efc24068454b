"""The ``krill`` command: one entry point, a subcommand per service or tool.

Each subcommand lives in the module that owns it and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed args, returning an exit code). Errors meant for the user are raised
as ``CliError`` (or ``ConfigError``) and shown as one readable line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from krill import __version__
from krill.config import ConfigError

# Subcommand modules, in the order ``krill --help`` lists them.
COMMAND_MODULES = (
    "origin.cli",
    "tracker.cli",
    "agent.cli",
    "krill.up",
    "krill.delta.cli",
    "krill.convert",
)


class CliError(Exception):
    """A failure to report to the user as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krill",
        description="Peer-to-peer container-layer distribution that ships only what changed.",
    )
    parser.add_argument("--version", action="version", version=f"krill {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError) as exc:
        sys.stderr.write(f"krill {args.command}: error: {exc}\n")
        return getattr(exc, "code", 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the importable module's main, so CliError raised by subcommands (which import
    # krill.cli, not __main__) is the class main() catches under `python -m krill.cli`.
    from krill.cli import main as _main

    sys.exit(_main())
