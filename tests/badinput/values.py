"""The bad values the registry corpus is built from (``tests/badinput/registry.py``).

Names, digests, tags, upload ids, ``Range`` headers, Content-Types and manifest bodies
that a registry must refuse (or, for a few marked so, may accept), and ``Known``: the image
the origin holds before the corpus is sent, so a probe can aim at something that exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from krill import oci
from tests.badinput.wire import Expect

REPO = "team/app"
ERROR = Expect.REGISTRY_ERROR
ANY = Expect.REGISTRY_ANY


@dataclass(frozen=True)
class Known:
    """The image the origin holds as ``team/app:v1`` before the corpus is sent."""

    manifest: str  # digest
    manifest_body: bytes
    config: str
    layer: str


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


UNKNOWN = digest_of(b"nobody pushed this")

BAD_NAMES = [
    "Team/App",
    "team/APP",
    "team/../app",
    "../team/app",
    "team/..",
    "team/%2e%2e/app",
    "team/%2E%2E/app",
    "%2e%2e/%2e%2e/etc",
    "team%2f..%2fapp",
    "team/.%2e/app",
    "team//app",
    "team/app/",
    "/team/app",
    "_private/app",
    "-team/app",
    "team/app.",
    "team/a--",
    "team/" + "a" * 300,
    "a/" * 130 + "b",
    "t%C3%ABam/app",
    "team/%F0%9F%90%9F",
    "team/%00app",
    "team/app%20x",
    "team/app%2f",
    "team/%ff%fe",
    ".",
    "..",
    "team/./app",
]

BAD_DIGESTS = [
    "sha256:xyz",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 4_000,
    "sha512:" + "a" * 128,
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "SHA256:" + "a" * 64,
    "sha256:",
    ":",
    "sha256",
    "nodigest",
    "sha256:-" + "a" * 63,
    "sha256:+" + "a" * 63,
    "sha256:%20" + "a" * 63,
    "sha256:" + "a" * 64 + "%00",
    "sha256:" + "%C3%A9" * 32,
    "sha256:..%2f..%2fetc",
    "%2e%2e%2f%2e%2e",
    "sha256%3A" + "b" * 64,
    "sha256:" + "a" * 64 + "%0d%0aX-Injected:%201",
]

BAD_TAGS = [
    "-v1",
    ".v1",
    "v1%2f",
    "a" * 129,
    "v1%00",
    "v%20",
    "%C3%9C",
    "%2e%2e",
    "..",
    "v1:",
    "v1@x",
    "sha256:" + "z" * 64,
    "sha1:" + "a" * 40,
    "%25",
    "v1%0d%0a",
]

BAD_UPLOAD_IDS = ["nope", "..", "%2e%2e", "..%2f..%2fetc", "0" * 36, "a" * 2000, "%00", "%C3%A9"]

RANGES = [
    "bytes=0-1,3-4",
    "bytes=0-0,-1",
    "bytes=-0",
    "bytes=-1-2",
    "bytes=5-2",
    "bytes=1-0",
    "bytes=999999999-",
    "bytes=0-99999999999999999999999999",
    "bytes=99999999999999999999999999-",
    "bytes=abc",
    "bytes=",
    "bytes=-",
    "bytes=--1",
    "bytes=0-1-2",
    "items=0-1",
    "bytes 0-1",
    "0-1",
    "bytes=\u00b2-3",
]
SATISFIABLE_RANGES = {"bytes=0-99999999999999999999999999"}  # the whole blob (end clamped)

CONTENT_TYPES = [
    oci.OCI_MANIFEST,
    oci.OCI_INDEX,
    oci.DOCKER_MANIFEST,
    "application/json",
    "text/plain",
    "",
    f"{oci.OCI_MANIFEST}; charset=utf-16",
]


def descriptor(digest: str, size: int = 10, media_type: str = oci.OCI_LAYER_GZIP) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def manifest_bodies(known: Known) -> Iterator[tuple[str, bytes]]:
    """(label, body) of manifests the origin must refuse, whatever the Content-Type."""
    config = descriptor(known.config, 2, oci.OCI_CONFIG)

    def image(**fields: Any) -> bytes:
        doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config, "layers": []}
        doc.update(fields)
        return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()

    yield "empty", b""
    yield "truncated", image()[:-3]
    yield "not json", b"{not json"
    yield "null", b"null"
    yield "array", b"[]"
    yield "string", b'"manifest"'
    yield "number", b"2"
    yield "empty object", b"{}"
    yield "latin-1", image(annotations={"a": "caf\u00e9"}).replace(b"caf\\u00e9", b"caf\xe9")
    yield "utf-16", image().decode().encode("utf-16")
    yield "nan size", image(layers=[descriptor(UNKNOWN)]).replace(b'"size": 10', b'"size": NaN')
    yield "infinite size", image().replace(b'"size": 2', b'"size": Infinity')
    yield "float size", image(layers=[descriptor(UNKNOWN, 10)]).replace(
        b'"size": 10', b'"size": 1e400'
    )
    yield "negative size", image(layers=[descriptor(UNKNOWN, -1)])
    yield "bool size", image(layers=[{**descriptor(UNKNOWN), "size": True}])
    yield "duplicate keys", image().replace(b'"layers": []', b'"layers": [], "layers": 7')
    yield "schemaVersion 1", image(schemaVersion=1, layers=[descriptor(UNKNOWN)])
    yield "schemaVersion string", image(schemaVersion="2", layers=[descriptor(UNKNOWN)])
    yield "unknown layer", image(layers=[descriptor(UNKNOWN)])
    yield "unknown config", image(config=descriptor(UNKNOWN, 2, oci.OCI_CONFIG))
    yield "layers not a list", image(layers={"0": descriptor(known.layer)})
    yield "config a string", image(config=known.config)
    yield "config missing", image(config=None)
    yield "descriptor without digest", image(layers=[{"size": 1}])
    yield "descriptor bad digest", image(layers=[descriptor("sha256:xyz")])
    yield "descriptor md5", image(layers=[descriptor("md5:d41d8cd98f00b204e9800998ecf8427e")])
    yield "platform a string", image(layers=[{**descriptor(UNKNOWN), "platform": "linux"}])
    yield "annotations not strings", image(annotations={"a": 1})
    yield "annotations a list", image(annotations=["a"])
    yield "subject garbage", image(subject="sha256:x")
    yield "artifactType number", image(artifactType=5)
    yield "lone surrogate", image(layers=[descriptor(UNKNOWN, 1, "\ud800")])
    yield "nul in key", image(**{"\u0000": 1}, layers=[descriptor(UNKNOWN)])
    yield "index no manifests", json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_INDEX}
    ).encode()
    yield "index unknown child", json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
         "manifests": [descriptor(UNKNOWN, 10, oci.OCI_MANIFEST)]}
    ).encode()
    yield "index manifests object", json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": {}}
    ).encode()
    yield "wrong mediaType", image(mediaType="application/vnd.oci.image.config.v1+json")
    yield "mediaType number", image(mediaType=2, layers=[descriptor(UNKNOWN)])
    for depth in (65, 1_000, 5_000, 100_000):
        yield f"nested {depth} arrays", b'{"layers": ' + b"[" * depth + b"]" * depth + b"}"
    yield "nested 5000 objects", b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    yield "nested 5000 in annotations", image(annotations=None)[:-1] + (
        b', "annotations": ' + b'{"a":' * 5_000 + b'"x"' + b"}" * 5_000 + b"}"
    )
    yield "many layers, unknown", image(layers=[descriptor(UNKNOWN)] * 20_000)
    yield "past the size limit", image(annotations={"pad": "x" * (oci.MAX_MANIFEST_BYTES + 1)})


def accepted_or_refused(known: Known) -> Iterator[tuple[str, bytes]]:
    """Manifests a registry may take or refuse (so only "no 5xx, spec JSON if refused")."""
    doc = json.loads(known.manifest_body)
    body = known.manifest_body.decode()
    yield "duplicate config", body.replace('"config":', '"config": 1, "config":', 1).encode()
    yield "duplicate layers", body.replace('"layers":', '"layers": 7, "layers":', 1).encode()
    yield "unknown fields", json.dumps({**doc, "x": {"y": [None, 1.5, -0.0, 1e308]}}).encode()
    yield "schemaVersion 3", json.dumps({**doc, "schemaVersion": 3}).encode()
    nested_63 = json.loads("[" * 63 + "]" * 63)  # 64 levels with the manifest's own object
    yield "nested 64 (the limit)", json.dumps({**doc, "x": nested_63}).encode()


def tag_like(digest: str) -> bool:
    """A "digest" without ':' is a tag where a reference is taken (manifests)."""
    return ":" not in unquote(digest)


def decodes_to_a_digest(text: str) -> bool:
    """Percent-encoded, it names a well-formed (unknown) digest: any answer but a 5xx."""
    decoded = unquote(text)
    return decoded != text and len(decoded) == 71 and decoded.startswith("sha256:")
