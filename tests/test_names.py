"""Repository names and tags follow the distribution spec's grammar."""

from __future__ import annotations

import pytest

from krill.digests import Digest, DigestError
from krill.names import InvalidNameError, validate_name, validate_tag


@pytest.mark.parametrize("name", ["library/alpine", "a", "my-org/my_app/x.y", "a__b", "a--b/c"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["..", "a/../b", "%2e%2e", "Upper/case", "a//b", "/a", "a/", "-a", "a_", "a" * 256, "a b",
     "a\n"],  # a final newline: "$" alone matched before it (security review, stop 39)
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a/b", "A" * 129, "sha256:abc", "v2\n"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_tag(tag)


@pytest.mark.parametrize("text", ["sha256:" + "a" * 64 + "\n", "sha256\n:" + "a" * 64])
def test_a_digest_with_a_newline_is_refused(text: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(text)
