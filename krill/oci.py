"""OCI and Docker image media types, and what a manifest refers to.

The registry side needs only a little of a manifest: its media type (to
answer with the right ``Content-Type``), the blobs it names (to refuse a
manifest whose blobs are missing) and, for an index, its child manifests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
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
