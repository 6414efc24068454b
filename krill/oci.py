"""OCI and Docker image media types, and what a manifest refers to.

The registry side needs only a little of a manifest: its media type (to
answer with the right ``Content-Type``), the blobs it names (to refuse a
manifest whose blobs are missing) and, for an index, its child manifests.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from krill.digests import Digest, DigestError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES

# The distribution spec lets registries cap manifests; 4 MiB is what the
# CNCF registry and most clients use.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

# Arrays and objects inside one another. A real manifest nests 5 deep (index > manifests >
# descriptor > platform > os.features); Python's JSON decoder recurses once per level and a
# body of 5,000 ``[`` made it raise RecursionError (a 500), so depth is checked before it runs.
MAX_MANIFEST_DEPTH = 64


class ManifestError(ValueError):
    """A manifest body that cannot be accepted; the message says why."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError("descriptor is not an object")
        try:
            digest = Digest.parse(str(obj["digest"]))
        except KeyError:
            raise ManifestError("descriptor has no digest") from None
        except DigestError as exc:
            raise ManifestError(f"descriptor digest: {exc}") from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"descriptor {digest} has no valid size")
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise ManifestError(
                f"descriptor {digest}: 'platform' must be an object like "
                '{"os": "linux", "architecture": "amd64"}'
            )
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=digest,
            size=size,
            platform=platform,
            annotations=_annotations(obj, f"descriptor {digest}"),
        )


def _annotations(obj: dict[str, Any], what: str) -> dict[str, str] | None:
    """The ``annotations`` map, which the image spec requires to map strings to strings."""
    annotations = obj.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ManifestError(f"{what}: 'annotations' must map strings to strings")
    return annotations


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """The parts of a manifest that a registry checks."""

    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None = None  # the manifest's artifactType, if it declares one
    annotations: dict[str, str] | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def blob_references(self) -> tuple[Descriptor, ...]:
        """Blobs (config and layers) that must exist before the manifest is accepted."""
        return ((self.config,) if self.config else ()) + self.layers


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse a manifest body; ``content_type`` wins over the body's ``mediaType``."""
    try:
        text = body.decode("utf-8-sig")  # JSON between systems is UTF-8 (RFC 8259 8.1)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest is not UTF-8: {exc}") from None
    if nesting_depth(body) > MAX_MANIFEST_DEPTH:
        raise ManifestError(
            f"manifest nests arrays and objects more than {MAX_MANIFEST_DEPTH} levels deep "
            "(the limit); a real manifest nests about 5"
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:  # not reached: nesting_depth bounds what json recurses into
        raise ManifestError(f"manifest nests more than {MAX_MANIFEST_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    if doc.get("schemaVersion") == 1:
        raise ManifestError(
            "schemaVersion 1 (Docker's retired image format) is not supported: push an OCI "
            "or Docker schemaVersion 2 manifest (skopeo copy --format oci or v2s2 converts)"
        )
    media_type = _media_type(doc, content_type)
    body_type = doc.get("mediaType")
    if body_type and content_type and body_type != media_type:
        raise ManifestError(
            f"Content-Type {content_type!r} does not match the manifest's mediaType {body_type!r}"
        )
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("an index needs a 'manifests' list")
        return ParsedManifest(
            media_type,
            None,
            (),
            tuple(Descriptor.from_json(m) for m in entries),
            _subject(doc),
            _artifact_type(doc),
            _annotations(doc, "manifest"),
        )
    if "config" not in doc or not isinstance(doc.get("layers"), list):
        raise ManifestError("an image manifest needs 'config' and a 'layers' list")
    return ParsedManifest(
        media_type,
        Descriptor.from_json(doc["config"]),
        tuple(Descriptor.from_json(layer) for layer in doc["layers"]),
        (),
        _subject(doc),
        _artifact_type(doc),
        _annotations(doc, "manifest"),
    )


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as int8


def refused_by_accept(accept_headers: Iterable[str], media_type: str) -> frozenset[str] | None:
    """The types a request's ``Accept`` lists when they exclude ``media_type``, else None.

    Only a client that lists manifest types and leaves out the stored one is
    refused (registries store manifests as pushed and do not convert them); no
    Accept, one without manifest types, or a wildcard takes whatever is stored.
    """
    accepted = frozenset(
        part.split(";")[0].strip()
        for header in accept_headers
        for part in header.split(",")
    )
    if not accepted & set(MANIFEST_TYPES) or media_type in accepted:
        return None
    if accepted & {"*/*", "application/*"}:
        return None
    return accepted


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in the UTF-8 JSON ``body`` (0 for a scalar).

    Exact for JSON text and for any prefix of it a decoder walks before it fails,
    so a decoder never recurses deeper than this. Byte operations at C speed,
    then one pass over the brackets alone: escapes go first (``\\`` pairs, then
    ``\"``), then string contents (every other quote-delimited run), then all
    but brackets. UTF-8 never puts these ASCII bytes inside a multi-byte character.
    """
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    return max(accumulate(array("b", brackets.translate(_BRACKET_STEPS)), initial=0))


def _artifact_type(doc: dict[str, Any]) -> str | None:
    value = doc.get("artifactType")
    if value is not None and not isinstance(value, str):
        raise ManifestError("'artifactType' must be a media type string")
    return value


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    declared = (content_type or "").split(";")[0].strip()
    if declared in MANIFEST_TYPES:
        return declared
    body_type = doc.get("mediaType")
    if body_type in MANIFEST_TYPES:
        return str(body_type)
    if body_type is None and "manifests" in doc:
        return OCI_INDEX
    if body_type is None and "layers" in doc:
        return OCI_MANIFEST
    raise ManifestError(
        f"unsupported manifest media type {declared or body_type!r}; "
        f"expected one of {', '.join(MANIFEST_TYPES)}"
    )


def _subject(doc: dict[str, Any]) -> Descriptor | None:
    return Descriptor.from_json(doc["subject"]) if "subject" in doc else None
