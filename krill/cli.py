"""The ``krill`` command: one entry point, a subcommand per service or tool.

Each subcommand lives in the module that owns it and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed args, returning an exit code). Errors meant for the user are raised
as ``CliError`` (or ``ConfigError``) and shown as one readable line.

``--log-format`` is global (``krill --log-format json agent ...``): it is
written to ``KRILL_LOG_FORMAT`` in this process's environment, where each
service's ``setup_logging`` reads it and where the services ``krill up``
starts as subprocesses inherit it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from krill import __version__
from krill.clierror import CliError, ConfigError, user_error_in
from krill.logformat import ENV_LOG_FORMAT, LogFormat, log_format_from_env

# Each subcommand and the module that registers it, in the order ``krill --help`` lists them.
COMMAND_MODULES = {
    "origin": "krill.origin.cli",
    "tracker": "krill.tracker.cli",
    "agent": "krill.agent.cli",
    "up": "krill.up",
    "delta": "krill.delta.cli",
    "convert": "krill.convert",
}


def named_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, or None when it names none we know (or asks for help).

    Only that subcommand's module is then loaded: the services' modules pull in aiohttp,
    libtorrent and the rest, ~0.2 s that ``krill delta apply`` (timed by its users: a delta
    must beat a download) should not pay.
    """
    words = iter(argv)
    for word in words:
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMAND_MODULES else None
        elif not word.startswith("--log-format="):
            return None  # --help, --version or a mistake: the whole parser answers
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``krill`` parser, with every subcommand or just ``only``."""
    parser = argparse.ArgumentParser(
        prog="krill",
        description="Peer-to-peer container-layer distribution that ships only what changed.",
    )
    parser.add_argument("--version", action="version", version=f"krill {__version__}")
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=None,
        help=f"log lines as text or one JSON object each (default: ${ENV_LOG_FORMAT} or text)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, module in COMMAND_MODULES.items():
        if only is None or command == only:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(named_command(argv))
    args = parser.parse_args(argv)
    if args.log_format is not None:
        os.environ[ENV_LOG_FORMAT] = args.log_format
    try:
        log_format_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError) as exc:
        return _show_error(args.command, exc)
    except BaseExceptionGroup as group:
        error = user_error_in(group)
        if error is None:
            raise
        return _show_error(args.command, error)
    except KeyboardInterrupt:
        return 130


def _show_error(command: str, exc: CliError | ConfigError) -> int:
    """One line on stderr; the exit status: the CliError's code, 2 for a setting.

    With ``--log-format json`` the line is a JSON log object instead of text: every other
    line on stderr is one, and a log pipeline must be able to parse the line that says why
    the process stopped. Its ``message`` is the text line, word for word.
    """
    line = f"krill {command}: error: {exc}"
    if log_format_from_env() is LogFormat.JSON:
        _log_error_as_json(line)
    else:
        sys.stderr.write(line + "\n")
    return getattr(exc, "code", 2)


def _log_error_as_json(line: str) -> None:
    """``line`` as one error-level JSON log object, through ``krill.logs``'s own formatter
    (so it has the shape of every other line, whether or not the command set up logging).

    Logging is set up for this one record and then put back: ``main`` also runs inside
    tests and tools, whose handlers and levels must survive it. ``krill.logs`` loads only
    here, on the error path of a JSON-logging process (issue 15: not at every start).
    """
    import logging

    from krill.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("error", LogFormat.JSON)
        logging.getLogger("krill.cli").error(line)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run() -> NoReturn:
    """The ``krill`` console script: ``main``, then exit.

    Everything is frozen out of the garbage collector first: the interpreter's
    last collection at exit then skips every object (module tables, the
    codec's dataclasses) instead of walking them, ~15 ms of a ``krill delta
    apply``, whose wall time decides when a delta beats a full pull.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
