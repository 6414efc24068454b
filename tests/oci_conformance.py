"""What the OCI conformance tests share (tests/test_oci_conformance_*.py).

The checks are the OCI distribution-spec conformance suite's (pull, push,
content discovery, content management) plus the spec's MUSTs the suite leaves
out, asked over real HTTP of a real origin (and, for pulls, a real agent).

* ``Registry``: a client of one registry base URL and repository. Its request
  bodies go either with ``Content-Length`` (docker, containerd, skopeo, crane)
  or chunked (the Go suite: Go's net/http sends an ``io.Reader`` body chunked);
  ``FRAMINGS`` names the two, for parametrized fixtures.
* ``Answer``: a response read whole, with ``assert_error`` for the spec's error
  JSON.
* ``REPO``: the repository the tests push to and pull from.
* ``start_origin_registry``: a ``Registry`` of a new origin; the fixture
  ``origin_registry`` is one about ``REPO``, once per framing (a test taking it
  runs twice). This module is a plugin (tests/conftest.py) for that fixture.
* ``image``, ``push_image``, ``referrer_bytes`` (built on ``descriptor`` and
  ``manifest_bytes``): the suite's kind of test content.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from krill import oci
from tests.fixtures_origin import StartOrigin, digest_of

FRAMINGS = ("content-length", "chunked")
REPO = "oci/conformance"

# spec.md "Error Codes" (code-1..code-14), and the one code Krill adds on purpose
# (docs/architecture.md, "OCI Distribution conformance"): 416 RANGE_INVALID.
SPEC_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)
KRILL_ERROR_CODES = SPEC_ERROR_CODES | {"RANGE_INVALID"}

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
ANNOTATION = "org.opencontainers.conformance.test"  # the suite's annotation key
# The suite's tag that is not a valid tag (a leading dot): it names no manifest.
INVALID_TAG = ".INVALID_MANIFEST_NAME"


# A digest of content no test pushes.
UNKNOWN_DIGEST = digest_of(b"hello world")


@dataclass(frozen=True)
class Answer:
    """A response, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        """The ``Location`` as a path (and query): where the next request goes."""
        parts = urlsplit(self.headers["Location"])
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def assert_error(self, status: int, code: str) -> None:
        """The status, and the spec's error JSON naming ``code`` first."""
        assert self.status == status, self.describe()
        errors = self.json()["errors"]
        assert errors and all(isinstance(error["message"], str) for error in errors)
        assert {error["code"] for error in errors} <= KRILL_ERROR_CODES, self.describe()
        assert errors[0]["code"] == code, self.describe()

    def describe(self) -> str:
        return f"{self.status} {dict(self.headers)} {self.body[:300]!r}"


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a body of unknown length: aiohttp sends it ``Transfer-Encoding: chunked``."""
    yield data


class Registry:
    """Requests to one registry (``base``), about one repository (``repo``)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, repo: str, framing: str = FRAMINGS[0]
    ) -> None:
        assert framing in FRAMINGS
        self.session = session
        self.base = base.rstrip("/")
        self.repo = repo
        self.framing = framing

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """``path`` is absolute (``/v2/...``), or relative to ``/v2/<repo>/``."""
        if not path.startswith("/"):
            path = f"/v2/{self.repo}/{path}"
        data: bytes | AsyncIterator[bytes] | None = body
        if body and self.framing == "chunked":
            data = chunked(body)
        async with self.session.request(
            method,
            urljoin(self.base + "/", path.lstrip("/")),
            data=data,
            headers=headers,
            params=params,
            allow_redirects=False,
        ) as response:
            if body and self.framing == "chunked":
                assert response.request_info.headers["Transfer-Encoding"] == "chunked"
            return Answer(response.status, response.headers, await response.read())

    async def upload(self, data: bytes, repo: str | None = None) -> str:
        """POST then PUT ``data`` as a blob of ``repo`` (this repository by default)."""
        started = await self.call("POST", f"/v2/{repo or self.repo}/blobs/uploads/")
        assert started.status == 202, started.describe()
        done = await self.call(
            "PUT",
            started.location,
            body=data,
            params={"digest": digest_of(data)},
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status == 201, done.describe()
        return digest_of(data)

    async def put_manifest(
        self, reference: str, body: bytes, media_type: str = oci.OCI_MANIFEST
    ) -> Answer:
        return await self.call(
            "PUT", f"manifests/{reference}", body=body, headers={"Content-Type": media_type}
        )

    async def pushed_manifest(
        self, reference: str, body: bytes, media_type: str = oci.OCI_MANIFEST
    ) -> str:
        """Put a manifest that must be accepted; its digest."""
        answer = await self.put_manifest(reference, body, media_type)
        assert answer.status == 201, answer.describe()
        return digest_of(body)


def descriptor(media_type: str, data: bytes, **fields: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **fields}


def config_bytes(author: str) -> bytes:
    """An image config, told apart from the others by its ``author``."""
    rootfs = {"type": "layers", "diff_ids": []}
    doc = {"author": author, "architecture": "amd64", "os": "linux", "rootfs": rootfs}
    return json.dumps(doc, indent="\t").encode()


def manifest_bytes(config: dict[str, Any], layers: list[dict[str, Any]], **fields: Any) -> bytes:
    """An OCI image manifest (Go's ``json.MarshalIndent`` layout, as the suite sends them)."""
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config, "layers": layers}
    return json.dumps({**doc, **fields}, indent="\t").encode()


@dataclass(frozen=True)
class Image:
    """A config, one layer, and the manifest naming them."""

    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def layer_bytes(text: str) -> bytes:
    """A gzipped tar holding one file, as the suite's layer is."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        member = tarfile.TarInfo("conformance.txt")
        member.size = len(text.encode())
        archive.addfile(member, io.BytesIO(text.encode()))
    return gzip.compress(tar.getvalue(), mtime=0)


LAYER = layer_bytes("the conformance layer\n")


def image(author: str, layer: bytes = LAYER) -> Image:
    config = config_bytes(author)
    layers = [descriptor(oci.OCI_LAYER_GZIP, layer)]
    manifest = manifest_bytes(descriptor(oci.OCI_CONFIG, config), layers)
    return Image(config, layer, manifest)


async def push_image(registry: Registry, tag: str, pushed: Image) -> str:
    """Push ``pushed``'s blobs and its manifest under ``tag``; the manifest's digest."""
    await registry.upload(pushed.config)
    await registry.upload(pushed.layer)
    return await registry.pushed_manifest(tag, pushed.manifest)


def referrer_bytes(
    subject: Image, artifact_type: str, blob: bytes, annotation: str | None = None
) -> bytes:
    """An artifact manifest about ``subject``: ``artifactType`` set, ``blob`` its one layer."""
    fields: dict[str, Any] = {
        "artifactType": artifact_type,
        "subject": descriptor(oci.OCI_MANIFEST, subject.manifest),
    }
    if annotation is not None:
        fields["annotations"] = {ANNOTATION: annotation}
    layers = [descriptor(artifact_type, blob)]
    return manifest_bytes(descriptor(OCI_EMPTY, EMPTY_JSON), layers, **fields)


def base_url(server: TestServer) -> str:
    """The root URL of a server started on loopback."""
    return str(server.make_url("")).rstrip("/")


async def start_origin_registry(
    start_origin: StartOrigin, session: aiohttp.ClientSession, repo: str, framing: str
) -> Registry:
    """A client of a new origin (in this process, on loopback) about ``repo``.

    The origin runs with its deltas off: they are Krill's own API beside the
    Distribution API, and the worker processes they spawn would take most of
    these tests' time.
    """
    return Registry(session, base_url(await start_origin(deltas=False)), repo, framing)


@pytest.fixture(params=FRAMINGS)
async def origin_registry(
    request: pytest.FixtureRequest, start_origin: StartOrigin, http: aiohttp.ClientSession
) -> Registry:
    """A client of a new origin about ``REPO``, once with each of the ``FRAMINGS``."""
    return await start_origin_registry(start_origin, http, REPO, request.param)
