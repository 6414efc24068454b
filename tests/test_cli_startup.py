"""``krill <command>`` loads only that command's module: ``krill delta apply`` is timed by
its users (a delta must beat a full download, issue 15), and the services' modules (aiohttp,
libtorrent, the encoder) were ~0.2 s of its start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krill.cli import COMMAND_MODULES, build_parser, main, named_command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["delta", "apply", "a", "b", "c"], "delta"),
        (["--log-format", "json", "agent", "--help"], "agent"),
        (["--log-format=json", "origin"], "origin"),
        (["--help"], None),
        (["--version"], None),
        (["dleta", "apply"], None),  # a typo: the whole parser names the choices
        ([], None),
    ],
)
def test_named_command(argv: list[str], expected: str | None) -> None:
    assert named_command(argv) == expected


def _loaded_by_delta_apply(modules: list[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds once ``krill delta apply``'s parser is
    built and ``apply_delta`` imported (what the command loads before its first op)."""
    probe = (
        "import sys, krill.cli as c\n"
        "c.build_parser(c.named_command(['delta', 'apply', 'a', 'b', 'c']))\n"
        "from krill.delta import apply_delta\n"
        f"print(' '.join(m for m in {modules!r} if m in sys.modules))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()


def test_delta_apply_loads_neither_the_services_nor_the_encoder() -> None:
    heavy = ["aiohttp", "libtorrent", "asyncio", "hdiffpatch", "krill.delta.encode"]
    assert _loaded_by_delta_apply(heavy) == []


def test_delta_apply_loads_no_other_recipe_machinery_nor_the_status_line() -> None:
    """zlib's restart points load with the first gzip-zlib recipe that has them (~5 ms)."""
    assert _loaded_by_delta_apply(["krill.delta.zlibrestarts", "krill.progress"]) == []


def test_delta_apply_loads_the_binary_diff_decoders_with_their_first_op() -> None:
    """A delta of zstd ops alone (data and script layers) never loads them (~2.5 ms)."""
    decoders = ["bsdiff4", "krill.delta.hdiff", "krill.delta.elf"]
    assert _loaded_by_delta_apply(decoders) == []


def test_delta_apply_loads_neither_the_config_loader_nor_the_log_setup() -> None:
    """krill.cli catches ConfigError and checks --log-format without them (tomllib ~7 ms)."""
    assert _loaded_by_delta_apply(["krill.config", "tomllib", "krill.logs"]) == []


def test_config_error_is_one_class_wherever_it_is_imported_from() -> None:
    from krill.clierror import ConfigError
    from krill.config import ConfigError as ConfigErrorFromConfig

    assert ConfigErrorFromConfig is ConfigError


def test_a_config_error_is_one_line_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "tracker.toml"  # fails in load_config, before anything listens
    assert main(["tracker", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"krill tracker: error: config file {missing} does not exist\n"
    )


def test_help_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in COMMAND_MODULES:
        assert command in listed


def test_a_mistyped_command_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dleta", "apply"])
    assert exit_.value.code == 2
    assert "delta" in capsys.readouterr().err


def test_one_command_parser_parses_as_the_whole_one() -> None:
    argv = ["delta", "apply", "--workers", "2", "a", "b", "c"]
    assert vars(build_parser("delta").parse_args(argv)).keys() == vars(
        build_parser().parse_args(argv)
    ).keys()
