"""The Helm chart passes only flags the krill CLI accepts.

No helm binary is packaged here, so this checks the contract that breaks
most often: a flag renamed in the CLI but not in the chart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from krill.cli import build_parser

CHART = Path(__file__).resolve().parent.parent / "helm" / "krill"
_ARG = re.compile(r"^\s*- (--?[a-z][a-z0-9-]*|[a-z][a-z-]*)(?:=|$)")


def _container_args(template: Path) -> list[list[str]]:
    """Each container's ``args`` list (flags and words, values dropped)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in template.read_text().splitlines():
        if line.strip() == "args:":
            current = []
            blocks.append(current)
            continue
        if current is None:
            continue
        match = _ARG.match(line)
        if match:
            current.append(match.group(1))
        elif not line.strip().startswith("{{"):
            current = None
    return blocks


def _options_of(words: list[str]) -> set[str]:
    """The option strings argparse accepts for the (sub)command ``words`` names."""
    parser = build_parser()
    for word in words:
        subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = subparsers.choices[word]
    return {opt for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("template", sorted(CHART.glob("templates/*.yaml")), ids=lambda p: p.name)
def test_chart_flags_exist_in_cli(template: Path) -> None:
    for args in _container_args(template):
        words = [a for a in args if not a.startswith("-")]
        flags = [a for a in args if a.startswith("-")]
        accepted = _options_of(words)
        unknown = [f for f in flags if f not in accepted]
        assert not unknown, f"{template.name}: krill {' '.join(words)} has no {unknown}"


def test_every_service_is_in_the_chart() -> None:
    text = "".join(p.read_text() for p in CHART.glob("templates/*.yaml"))
    for kind in ("StatefulSet", "Deployment", "DaemonSet"):
        assert f"kind: {kind}" in text
    for command in ("- origin", "- tracker", "- agent", "- containerd-config"):
        assert command in text
