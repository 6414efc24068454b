"""``krill <command>`` loads only that command's module: ``krill delta apply`` is timed by
its users (a delta must beat a full download, issue 15), and the services' modules (aiohttp,
libtorrent, the encoder) were ~0.2 s of its start."""

from __future__ import annotations

import subprocess
import sys

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


def test_delta_apply_loads_neither_the_services_nor_the_encoder() -> None:
    probe = (
        "import sys, krill.cli as c\n"
        "c.build_parser(c.named_command(['delta', 'apply', 'a', 'b', 'c']))\n"
        "from krill.delta import apply_delta\n"
        "heavy = ['aiohttp', 'libtorrent', 'asyncio', 'hdiffpatch', 'krill.delta.encode']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


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
