"""``krill delta create|apply``: the codec on its own, for users and benchmarks.

``create`` on a big layer takes minutes; on a terminal a status line counts
the seconds of each phase (``krill.progress``), elsewhere nothing is drawn.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import get_args

from krill.clierror import CliError, unwritable
from krill.delta.apply import apply_delta
from krill.delta.format import DeltaFormatError
from krill.delta.options import DiffEngine, EncodeOptions
from krill.delta.recipes import RecipeError
from krill.malloctuning import keep_freed_memory

_DEFAULTS = EncodeOptions()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "delta",
        help="create or apply a layer delta",
        description="Create or apply a Krill layer delta. BASE and TARGET are layer blobs "
        "exactly as a registry stores them (gzip, zstd or plain tar).",
    )
    commands = parser.add_subparsers(dest="delta_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="write a delta rebuilding TARGET from BASE")
    create.add_argument("base", type=Path, metavar="BASE")
    create.add_argument("target", type=Path, metavar="TARGET")
    create.add_argument("out", type=Path, metavar="OUT")
    create.add_argument(
        "--level",
        type=int,
        default=_DEFAULTS.content_level,
        help="zstd level for file contents (default %(default)s)",
    )
    create.add_argument(
        "--bsdiff-max",
        type=int,
        default=_DEFAULTS.bsdiff_max_bytes,
        help="largest stretch one binary-diff op covers, bytes; bigger files are diffed in "
        "segments of at most this (default %(default)s)",
    )
    create.add_argument(
        "--engine",
        choices=get_args(DiffEngine),
        default=_DEFAULTS.diff_engine,
        help="binary-diff engine for changed binaries (default %(default)s)",
    )
    create.add_argument("--workers", type=int, default=_DEFAULTS.workers)
    create.add_argument(
        "--no-verify", action="store_true", help="skip rebuilding TARGET from the delta to check it"
    )
    create.set_defaults(func=run_create)
    apply = commands.add_parser("apply", help="rebuild the target layer from BASE and DELTA")
    apply.add_argument("base", type=Path, metavar="BASE")
    apply.add_argument("delta", type=Path, metavar="DELTA")
    apply.add_argument("out", type=Path, metavar="OUT")
    apply.add_argument("--workers", type=int, default=None)
    apply.set_defaults(func=run_apply)


# zstd's levels (backports.zstd's CompressionParameter.compression_level.bounds()): the
# negative ones are its fast levels. Spelled here so `krill delta apply` need not load zstd.
_ZSTD_LEVELS = range(-131072, 23)


def _check_files(out: Path, *inputs: Path) -> None:
    """Inputs that exist, and an OUT that can be written without destroying one of them."""
    for path in inputs:
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    if out.is_dir():
        raise CliError(f"OUT {out} is a directory; give the path of the file to write")
    if not out.parent.is_dir():
        raise CliError(f"OUT's directory {out.parent} does not exist")
    for path in inputs:
        if out.exists() and out.samefile(path):
            raise CliError(f"OUT {out} is the input {path}: writing it would destroy the input")


def _out_failure(exc: Exception, out: Path, *inputs: Path) -> CliError | None:
    """An OSError about OUT's directory (where OUT is built in a temporary file, then
    renamed) as one line naming OUT; None for any other error."""
    if not isinstance(exc, OSError):
        return None
    return unwritable(exc, out.parent, f"OUT {out}", inputs)


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise CliError(f"--workers must be at least 1, got {workers}")


def run_create(args: argparse.Namespace) -> int:

    _check_files(args.out, args.base, args.target)
    _check_workers(args.workers)
    if args.level not in _ZSTD_LEVELS:
        raise CliError(f"--level must be a zstd level, 1-22 (or negative for its fast ones), "
                       f"got {args.level}")
    try:
        options = EncodeOptions(
            content_level=args.level,
            bsdiff_max_bytes=args.bsdiff_max,
            diff_engine=args.engine,
            workers=args.workers,
        )
    except ValueError as exc:
        raise CliError(f"--bsdiff-max: {exc}") from None
    # The encoder and the status line load here, not with the module: `krill delta apply`
    # never needs them.
    from krill.delta.encode import create_delta
    from krill.progress import Progress

    started = time.monotonic()
    progress = Progress()
    published = False  # create_delta renames OUT into place only once it is complete
    try:
        with progress.ticking(f"creating the delta of {args.target.name}"):
            result = create_delta(args.base, args.target, args.out, options)
        published = True
        if not args.no_verify:
            with progress.ticking("verifying: rebuilding the target from the delta"):
                _verify(args.base, args.out)
    except RecipeError as exc:
        raise CliError(f"no delta for {args.target}: {exc}") from exc
    except (DeltaFormatError, OSError) as exc:
        if published:  # a delta that does not rebuild its target is not left behind
            args.out.unlink(missing_ok=True)
        failure = _out_failure(exc, args.out, args.base, args.target)
        raise failure or CliError(f"delta failed: {exc}") from exc
    percent = 100.0 * result.size / max(1, result.target_size)
    sys.stdout.write(
        f"{args.out}: {result.size} bytes ({percent:.1f}% of the "
        f"{result.target_size}-byte target), "
        f"recipe {result.recipe.describe()}, {time.monotonic() - started:.1f}s\n"
    )
    return 0


def _verify(base: Path, delta: Path) -> None:
    """Rebuild the target from the new delta into a throwaway file: publish only what works."""
    scratch = delta.with_name(f".{delta.name}.verify")
    try:
        apply_delta(base, delta, scratch)
    finally:
        scratch.unlink(missing_ok=True)


def run_apply(args: argparse.Namespace) -> int:

    _check_files(args.out, args.base, args.delta)
    _check_workers(args.workers)
    keep_freed_memory()  # before the rebuild's threads start: krill/malloctuning.py
    started = time.monotonic()
    try:
        result = apply_delta(args.base, args.delta, args.out, workers=args.workers)
    except (DeltaFormatError, RecipeError, OSError) as exc:
        failure = _out_failure(exc, args.out, args.base, args.delta)
        raise failure or CliError(f"cannot apply {args.delta}: {exc}") from exc
    sys.stdout.write(
        f"{result.path}: {result.size} bytes, {result.digest} (verified), "
        f"tar {result.tar_size} bytes, {time.monotonic() - started:.3f}s\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m krill.delta.cli``: the same commands without loading every service's CLI."""

    parser = argparse.ArgumentParser(prog="krill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        sys.stderr.write(f"krill delta: error: {exc}\n")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
