"""``NAME:VALUE`` line files: the origin's htpasswd and the tracker's announce_keys.

Both are one entry a line, blank lines and ``#`` comments skipped, and every
mistake is reported as ``FILE:LINE`` so the user can find it; neither message
may quote the value (a password hash, an announce key), so callers name only
the line and the name. Read once here, so the two files follow the same rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from krill.config import ConfigError

__all__ = ["colon_lines"]


def colon_lines(path: Path, what: str, expected: str) -> Iterator[tuple[str, str, str]]:
    """(``FILE:LINE``, name, value) for each entry of ``path``.

    ConfigError "cannot read {what} ..." when the file cannot be read, and
    "FILE:LINE: expected {expected}" for a line without a name and a colon.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name:
            raise ConfigError(f"{path}:{number}: expected {expected}")
        yield f"{path}:{number}", name, value
