"""Properties of the manifest parser (krill/oci.py): any bytes give a parsed manifest or
``ManifestError``, never another exception; the nesting bound is exact and named.

The origin answers ``ManifestError`` as 400 ``MANIFEST_INVALID`` and anything else as a
500, so "never anything else" is what keeps a malformed push a client error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill import oci
from tests.fixtures_origin import digest_of

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
content_types = st.sampled_from([None, "", "text/plain", *oci.MANIFEST_TYPES, oci.OCI_CONFIG])


def descriptor(data: bytes = b"x", media_type: str = oci.OCI_LAYER_GZIP) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def image_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": descriptor(b"{}", oci.OCI_CONFIG),
        "layers": [descriptor(b"a"), descriptor(b"b")],
    }


def parses_or_refuses(body: bytes, content_type: str | None) -> oci.ParsedManifest | None:
    """The contract: a ParsedManifest or ManifestError (any other exception fails the test)."""
    try:
        return oci.parse_manifest(body, content_type)
    except oci.ManifestError:
        return None


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(st.binary(max_size=300), content_types)
def test_arbitrary_bytes(body: bytes, content_type: str | None) -> None:
    parses_or_refuses(body, content_type)


@PROPERTY
@given(json_values, content_types)
def test_arbitrary_json_values(value: Any, content_type: str | None) -> None:
    parsed = parses_or_refuses(json.dumps(value).encode(), content_type)
    if parsed is not None:
        assert isinstance(value, dict)
        assert parsed.media_type in oci.MANIFEST_TYPES


@PROPERTY
@given(
    st.sampled_from(["config", "layers", "mediaType", "subject", "annotations", "artifactType"]),
    json_values,
    content_types,
)
def test_a_valid_manifest_with_one_field_replaced(
    field: str, value: Any, content_type: str | None
) -> None:
    doc = image_manifest()
    doc[field] = value
    parsed = parses_or_refuses(json.dumps(doc).encode(), content_type)
    if parsed is not None and field == "layers":
        assert len(parsed.layers) == len(value)


@PROPERTY
@given(st.data())
def test_a_valid_manifest_with_bytes_flipped_or_cut(data: st.DataObject) -> None:
    body = bytearray(json.dumps(image_manifest()).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    parses_or_refuses(bytes(body[:cut]), oci.OCI_MANIFEST)


@PROPERTY
@given(json_values)
def test_nesting_depth_matches_the_decoded_value(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert oci.nesting_depth(text.encode()) == reference_depth(value)


@PROPERTY
@given(json_values, st.integers(0, 10))
def test_nesting_depth_of_a_prefix_bounds_what_a_decoder_walks(value: Any, extra: int) -> None:
    """Cut JSON text (what a failing decoder walks) never scans shallower than it nests."""
    text = json.dumps([value] * 2 + ["\\\"[{"] * extra)
    for cut in range(0, len(text), max(1, len(text) // 20)):
        prefix = text[:cut].encode()
        assert oci.nesting_depth(prefix) <= oci.nesting_depth(text.encode())


@pytest.mark.parametrize("depth", [5_000, 100_000, oci.MAX_MANIFEST_DEPTH + 1])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_a_manifest_error_naming_the_limit(depth: int, opener: str) -> None:
    """Issue 20: 5,000 levels made json.loads raise RecursionError (a 500 at the origin)."""
    closer = "]" if opener == "[" else "}"
    body = ('{"layers": ' + opener * depth + "1" + closer * depth + "}").encode()
    with pytest.raises(oci.ManifestError, match=f"more than {oci.MAX_MANIFEST_DEPTH} levels"):
        oci.parse_manifest(body, oci.OCI_MANIFEST)


def test_nesting_at_the_limit_still_parses() -> None:
    doc = image_manifest()
    inner: Any = "x"
    for _ in range(oci.MAX_MANIFEST_DEPTH - 1):  # the manifest object itself is level 1
        inner = [inner]
    doc["extra"] = inner
    body = json.dumps(doc).encode()
    assert oci.nesting_depth(body) == oci.MAX_MANIFEST_DEPTH
    assert oci.parse_manifest(body, oci.OCI_MANIFEST).layers


def test_brackets_inside_strings_do_not_count() -> None:
    doc = image_manifest()
    doc["annotations"] = {"a": "[" * 10_000, "b": '\\"' + "{" * 10_000, "c": "\\\\"}
    assert oci.parse_manifest(json.dumps(doc).encode(), None).annotations == doc["annotations"]


def test_a_utf8_bom_is_accepted_and_utf16_is_refused() -> None:
    text = json.dumps(image_manifest())
    assert oci.parse_manifest(b"\xef\xbb\xbf" + text.encode(), None).layers
    with pytest.raises(oci.ManifestError, match="not UTF-8"):
        oci.parse_manifest(text.encode("utf-16"), None)


def test_a_schema_1_manifest_is_refused_saying_what_to_push_instead() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "team/app", "tag": "1", "fsLayers": []})
    with pytest.raises(oci.ManifestError, match=r"schemaVersion 1 .* is not supported"):
        oci.parse_manifest(body.encode(), None)
