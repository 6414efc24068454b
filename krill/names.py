"""Repository names and tags, validated against the distribution spec's grammar.

Every client-supplied name passes through here before it touches a path or a
key, so ``..``, percent-encoded traversal, uppercase and over-long names are
refused in one place.
"""

from __future__ import annotations

import re

# distribution spec: a name is '/'-separated components, each
# [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")

# Registries commonly cap the full name (host included) at 255 characters.
MAX_NAME_LENGTH = 255


class InvalidNameError(ValueError):
    """A repository name or tag that does not match the spec's grammar."""


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid repository name, else raise."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"repository name is {len(name)} characters; at most {MAX_NAME_LENGTH}"
        )
    if not _NAME_RE.fullmatch(name):  # fullmatch: "$" also matches before a final "\n"
        raise InvalidNameError(
            f"invalid repository name {name[:80]!r}: lowercase letters, digits and "
            "separators ('.', '_', '__', '-') in '/'-separated components"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` unchanged if it is a valid tag, else raise."""
    if not _TAG_RE.fullmatch(tag):
        raise InvalidNameError(f"invalid tag {tag[:80]!r}: [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")
    return tag


def is_valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidNameError:
        return False
    return True


def image_reference(repository: str, reference: str) -> str:
    """``repo:tag`` or ``repo@sha256:...``, as users write them (for messages).

    A tag never holds ":", a digest always does.
    """
    return f"{repository}{'@' if ':' in reference else ':'}{reference}"
