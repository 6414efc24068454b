"""``krill convert SRC DST``: re-publish an image with reproducibly compressed layers.

Deltas can only target layers whose compression a node can re-run byte for
byte (see docs/deltas.md). Layers gzipped by Go (Docker, BuildKit, ko) or
zlib need no conversion; GNU gzip, pigz and pgzip (skopeo, umoci) output is
not reproducible. ``convert`` rewrites every layer
with a reproducible recipe (zlib gzip level 6 by default, or zstd by the
pinned libzstd). The uncompressed tars (diff_ids) and the config blob stay
the same; layer digests and the manifest digest change, and we say so.

SRC and DST are ``oci:DIR[:TAG]`` (an OCI image layout) or
``docker://HOST[:PORT]/REPO[:TAG]`` (a registry; plain HTTP only with
``--insecure`` and only for loopback hosts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from krill import oci
from krill.clierror import CliError, unwritable
from krill.delta.recipes import Recipe, RecipeError, gzip_recipe, iter_tar_chunks, zstd_recipe
from krill.digests import Digest, DigestError, sha256_file
from krill.progress import Progress, format_share

REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = ", ".join(oci.MANIFEST_TYPES)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
GZIP_TYPES = (oci.OCI_LAYER_GZIP, oci.DOCKER_LAYER_GZIP)
LAYER_TYPES = (*GZIP_TYPES, oci.OCI_LAYER_ZSTD, oci.OCI_LAYER_TAR)
CHUNK = 1 << 20


class ConvertError(Exception):
    """A conversion that cannot proceed; the message says what to change."""


# --- references ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an image lives: an OCI layout directory or a registry repository."""

    kind: str  # "oci" or "docker"
    location: str  # directory, or "host:port"
    repository: str = ""
    reference: str = ""  # tag or digest; "" = the layout's only image / "latest"

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        if text.startswith("oci:"):
            rest = text.removeprefix("oci:")
            directory, _, tag = rest.partition(":") if ":" in rest else (rest, "", "")
            if not directory:
                raise ConvertError(f"{text!r}: expected oci:DIR[:TAG]")
            return cls("oci", directory, reference=tag)
        if text.startswith("docker://"):
            rest = text.removeprefix("docker://")
            host, slash, path = rest.partition("/")
            if not slash or not path:
                raise ConvertError(f"{text!r}: expected docker://HOST/REPO[:TAG]")
            if "@" in path:
                repository, _, reference = path.partition("@")
            else:
                repository, colon, reference = path.rpartition(":")
                if not colon or "/" in reference:
                    repository, reference = path, "latest"
            return cls("docker", host, repository, reference)
        raise ConvertError(f"{text!r}: expected oci:DIR[:TAG] or docker://HOST/REPO[:TAG]")

    def __str__(self) -> str:
        if self.kind == "oci":
            return f"oci:{self.location}" + (f":{self.reference}" if self.reference else "")
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"docker://{self.location}/{self.repository}{sep}{self.reference}"


# --- image stores ----------------------------------------------------------------------------


class ImageStore(Protocol):
    """Read and write manifests and blobs, wherever an image lives."""

    async def get_manifest(self, reference: str) -> tuple[bytes, str]: ...
    async def get_blob(self, digest: str, dest: Path) -> None: ...
    async def has_blob(self, digest: str) -> bool: ...
    async def put_blob(self, path: Path, digest: str) -> None: ...
    async def put_manifest(self, body: bytes, media_type: str, reference: str) -> None: ...


class LayoutStore(ImageStore):
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / Digest.parse(digest).hex

    def _index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        if not path.exists():
            return {"schemaVersion": 2, "manifests": []}
        return json.loads(path.read_text())

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        if reference.startswith("sha256:"):
            body = self._blob_path(reference).read_bytes()
            return body, oci.parse_manifest(body, None).media_type
        if not (self.root / "index.json").is_file():  # not "lacks the tag": there is no layout
            what = "has no index.json" if self.root.is_dir() else "does not exist"
            raise ConvertError(f"{self.root} {what}; SRC oci:DIR must name an OCI image layout")
        try:
            entries = self._index()["manifests"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConvertError(f"{self.root}: not an OCI image layout ({exc})") from exc
        if reference:
            entries = [e for e in entries if e.get("annotations", {}).get(REF_NAME) == reference]
        if len(entries) != 1:
            what = f"tag {reference!r}" if reference else "exactly one image (name a :TAG)"
            raise ConvertError(f"{self.root}: index.json does not hold {what}")
        body = self._blob_path(entries[0]["digest"]).read_bytes()
        return body, oci.parse_manifest(body, entries[0].get("mediaType")).media_type

    async def get_blob(self, digest: str, dest: Path) -> None:
        source = self._blob_path(digest)
        if not source.exists():
            raise ConvertError(f"{self.root}: blob {digest} is missing")
        await asyncio.to_thread(_copy_file, source, dest)

    async def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).exists()

    async def put_blob(self, path: Path, digest: str) -> None:
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            await asyncio.to_thread(_copy_file, path, target)

    async def put_manifest(self, body: bytes, media_type: str, reference: str) -> None:
        digest = str(Digest.of_bytes(body))
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        if reference.startswith("sha256:"):
            return  # a child of an index: stored, not tagged
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index = self._index()
        tag = reference or "latest"
        entries = [e for e in index["manifests"] if e.get("annotations", {}).get(REF_NAME) != tag]
        entries.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(body),
                "annotations": {REF_NAME: tag},
            }
        )
        index["manifests"] = entries
        tmp = self.root / ".index.json.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.root / "index.json")


class RegistryStore(ImageStore):
    """One repository of an OCI distribution registry, over the v2 HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, repository: str) -> None:
        self.session = session
        self.base = f"{base_url}/v2/{repository}"

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        async with self.session.get(
            f"{self.base}/manifests/{reference}", headers={"Accept": ACCEPT}
        ) as resp:
            await _expect(resp, 200, f"manifest {reference}")
            body = await resp.read()
            return body, oci.parse_manifest(body, resp.headers.get("Content-Type")).media_type

    async def get_blob(self, digest: str, dest: Path) -> None:
        async with self.session.get(f"{self.base}/blobs/{digest}") as resp:
            await _expect(resp, 200, f"blob {digest}")
            f = await asyncio.to_thread(open, dest, "wb")
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(f.write, chunk)
            finally:
                f.close()
        if str(await asyncio.to_thread(sha256_file, str(dest))) != digest:
            raise ConvertError(f"registry sent blob {digest} with other content")

    async def has_blob(self, digest: str) -> bool:
        async with self.session.head(f"{self.base}/blobs/{digest}") as resp:
            return resp.status == 200

    async def put_blob(self, path: Path, digest: str) -> None:
        if await self.has_blob(digest):
            return
        async with self.session.post(f"{self.base}/blobs/uploads/") as resp:
            await _expect(resp, 202, "starting a blob upload")
            location = resp.headers["Location"]
        url = location if "://" in location else f"{self.base.split('/v2/')[0]}{location}"
        sep = "&" if "?" in url else "?"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str((await asyncio.to_thread(path.stat)).st_size),
        }
        async with self.session.put(
            f"{url}{sep}digest={digest}", data=_file_chunks(path), headers=headers
        ) as resp:
            await _expect(resp, 201, f"uploading blob {digest}")

    async def put_manifest(self, body: bytes, media_type: str, reference: str) -> None:
        async with self.session.put(
            f"{self.base}/manifests/{reference or 'latest'}",
            data=body,
            headers={"Content-Type": media_type},
        ) as resp:
            await _expect(resp, 201, f"pushing manifest {reference}")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
    if resp.status != status:
        detail = (await resp.text())[:300].strip()
        raise ConvertError(f"{what}: registry answered HTTP {resp.status} {detail}")


def _copy_file(source: Path, dest: Path) -> None:
    with open(source, "rb") as src, open(dest, "wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)


# --- conversion ------------------------------------------------------------------------------


@dataclass
class LayerChange:
    old: str
    new: str
    old_size: int
    new_size: int


@dataclass
class ConvertReport:
    """What changed: per-layer digests, manifests; configs and diff_ids never change."""

    top_old: str = ""
    top_new: str = ""
    configs: list[str] = field(default_factory=list)
    layers: list[LayerChange] = field(default_factory=list)
    manifests: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Converter:
    source: ImageStore
    dest: ImageStore
    recipe: Recipe
    media_type: str  # OCI layer type the recipe produces
    work: Path
    report: ConvertReport = field(default_factory=ConvertReport)
    progress: Progress = field(default_factory=Progress.off)  # a status line on a terminal

    async def convert(self, reference: str, dest_reference: str) -> ConvertReport:
        body, media_type = await self.source.get_manifest(reference)
        self.work.mkdir(parents=True, exist_ok=True)  # only now: a bad SRC leaves nothing
        self.report.top_old = str(Digest.of_bytes(body))
        new_body = await self._convert_manifest(body, media_type)
        await self.dest.put_manifest(new_body, media_type, dest_reference)
        self.report.top_new = str(Digest.of_bytes(new_body))
        return self.report

    async def _convert_manifest(self, body: bytes, media_type: str) -> bytes:
        doc = json.loads(body)
        if media_type in oci.INDEX_TYPES:
            for entry in doc["manifests"]:
                child, child_type = await self.source.get_manifest(entry["digest"])
                new_child = await self._convert_manifest(child, child_type)
                digest = str(Digest.of_bytes(new_child))
                await self.dest.put_manifest(new_child, child_type, digest)
                entry["digest"], entry["size"] = digest, len(new_child)
            return _dump(doc)
        if media_type == oci.DOCKER_MANIFEST and self.media_type != oci.OCI_LAYER_GZIP:
            raise ConvertError("Docker schema 2 manifests cannot carry zstd layers; use --gzip")
        config = doc["config"]
        async with self._fetched(config["digest"]) as config_path:
            diff_ids = json.loads(config_path.read_bytes()).get("rootfs", {}).get("diff_ids", [])
            await self.dest.put_blob(config_path, config["digest"])
        self.report.configs.append(config["digest"])
        for i, layer in enumerate(doc["layers"]):
            expected = diff_ids[i] if i < len(diff_ids) else None
            label = f"layer {i + 1}/{len(doc['layers'])} {layer['digest'][:19]}"
            await self._convert_layer(layer, expected, media_type == oci.DOCKER_MANIFEST, label)
        new_body = _dump(doc)
        self.report.manifests.append((str(Digest.of_bytes(body)), str(Digest.of_bytes(new_body))))
        return new_body

    @contextlib.asynccontextmanager
    async def _fetched(self, digest: str) -> AsyncIterator[Path]:
        """``digest`` in a temporary file in ``work`` (DST's directory); it and its ``.new``
        (the layer recompressed) are removed however the block ends: no litter in DST."""
        fd, name = tempfile.mkstemp(prefix=".krill-convert-", dir=self.work)
        os.close(fd)
        path = Path(name)
        try:
            await self.source.get_blob(digest, path)
            yield path
        finally:
            for leftover in (path, path.with_suffix(".new")):
                await asyncio.to_thread(leftover.unlink, missing_ok=True)

    async def _convert_layer(
        self, layer: dict[str, Any], diff_id: str | None, docker: bool, label: str = "layer"
    ) -> None:
        if layer.get("mediaType") not in LAYER_TYPES:
            raise ConvertError(
                f"layer {layer['digest']} has media type {layer.get('mediaType')!r}; "
                "only tar, gzip and zstd layers can be converted"
            )
        self.progress.update(f"{label}: fetching", force=True)
        async with self._fetched(layer["digest"]) as old:
            new = old.with_suffix(".new")
            tar_digest, digest, size = await asyncio.to_thread(self._recompress, old, new, label)
            if diff_id is not None and tar_digest != diff_id:
                raise ConvertError(
                    f"layer {layer['digest']} decompresses to {tar_digest}, but the config "
                    f"lists diff_id {diff_id}"
                )
            await self.dest.put_blob(new, digest)
        self.report.layers.append(LayerChange(layer["digest"], digest, layer["size"], size))
        layer["digest"], layer["size"] = digest, size
        layer["mediaType"] = oci.DOCKER_LAYER_GZIP if docker else self.media_type

    def _recompress(self, old: Path, new: Path, label: str = "layer") -> tuple[str, str, int]:
        """Decompress ``old``, recompress by the recipe into ``new``; (diff_id, digest, size)."""
        tar_hash, blob_hash = hashlib.sha256(), hashlib.sha256()
        tar_size = sum(len(chunk) for chunk in iter_tar_chunks(old))
        compressor = self.recipe.compressor(tar_size)
        size = done = 0
        with open(new, "wb") as out:

            def emit(data: bytes) -> None:
                nonlocal size
                blob_hash.update(data)
                size += len(data)
                out.write(data)

            for chunk in iter_tar_chunks(old):
                tar_hash.update(chunk)
                emit(compressor.feed(chunk))
                done += len(chunk)
                self.progress.update(f"{label}: recompressing {format_share(done, tar_size)}")
            emit(compressor.finish())
        return (str(Digest.from_hasher(tar_hash)), str(Digest.from_hasher(blob_hash)), size)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


# --- CLI -------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="re-publish an image with reproducibly compressed layers (delta-able)",
        description="Recompress every layer of SRC with a reproducible recipe and publish the "
        "result as DST. diff_ids and the config stay the same; layer digests and the manifest "
        "digest change. SRC/DST: oci:DIR[:TAG] or docker://HOST/REPO[:TAG].",
    )
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--gzip", dest="compression", action="store_const", const="gzip", help="zlib gzip (default)"
    )
    group.add_argument("--zstd", dest="compression", action="store_const", const="zstd",
                       help="zstd by the pinned libzstd (faster to rebuild on nodes)")  # fmt: skip
    parser.add_argument(
        "--level", type=int, default=None, help="compression level (gzip default 6, zstd default 3)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plain HTTP for registries on 127.0.0.1/localhost"
    )
    parser.set_defaults(func=run, compression="gzip")


def _recipe(compression: str, level: int | None) -> tuple[Recipe, str]:
    if compression == "zstd":
        return zstd_recipe(3 if level is None else level), oci.OCI_LAYER_ZSTD
    if level is not None and not 0 <= level <= 9:
        raise ConvertError(f"--level must be 0-9 for gzip (zlib's levels), got {level}")
    return gzip_recipe(6 if level is None else level), oci.OCI_LAYER_GZIP


def _base_url(ref: ImageRef, insecure: bool) -> str:
    if not insecure:
        return f"https://{ref.location}"
    if ref.location.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
        raise ConvertError(
            f"--insecure (plain HTTP) is only allowed for loopback, not {ref.location}"
        )
    return f"http://{ref.location}"


async def convert_image(
    src: ImageRef, dst: ImageRef, recipe: Recipe, media_type: str, work: Path, insecure: bool,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``src`` into ``dst``; the library entry point behind ``krill convert``."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        def store(ref: ImageRef) -> ImageStore:
            if ref.kind == "oci":
                return LayoutStore(Path(ref.location))
            return RegistryStore(session, _base_url(ref, insecure), ref.repository)

        shown = progress or Progress.off()
        converter = Converter(store(src), store(dst), recipe, media_type, work, progress=shown)
        dest_reference = dst.reference or ("latest" if dst.kind == "docker" else src.reference)
        return await converter.convert(src.reference, dest_reference or "latest")


def _describe(report: ConvertReport, recipe: Recipe, dst: ImageRef) -> str:
    lines = []
    for change in report.layers:
        same = " (unchanged)" if change.old == change.new else ""
        lines.append(
            f"layer {change.old} ({change.old_size} B) -> {change.new} ({change.new_size} B){same}"
        )
    changed = report.top_old != report.top_new
    lines.append(f"recipe: {recipe.describe()}")
    lines.append("config and diff_ids unchanged: " + ", ".join(sorted(set(report.configs))))
    lines.append(f"manifest {report.top_old} -> {report.top_new}")
    if changed:
        lines.append(
            f"NOTE: layer and manifest digests changed; pull {dst} (or the new digest), "
            "and re-sign the image if it was signed."
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:

    try:
        src, dst = ImageRef.parse(args.src), ImageRef.parse(args.dst)
        recipe, media_type = _recipe(args.compression, args.level)
        recipe.check_usable()
        work = Path(dst.location) if dst.kind == "oci" else Path(tempfile.gettempdir())
        created = next((d for d in (*reversed(work.parents), work) if not os.path.lexists(d)), None)
        try:
            with Progress() as progress:  # erased before the report is printed
                job = convert_image(src, dst, recipe, media_type, work, args.insecure, progress)
                report = asyncio.run(job)
        except BaseException:  # remove the outermost dir this run made (None: DST existed)
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
    except (ConvertError, RecipeError, oci.ManifestError, DigestError) as exc:
        raise CliError(str(exc)) from exc
    except aiohttp.ClientConnectorSSLError as exc:  # not a certificate's: TLS to plain HTTP
        raise CliError(
            f"registry connection failed: {exc}; a registry serving plain HTTP on loopback "
            "needs --insecure"
        ) from exc
    except aiohttp.ClientError as exc:
        raise CliError(f"registry connection failed: {exc}") from exc
    except OSError as exc:  # after aiohttp's: its connection errors are OSErrors too
        failure = unwritable(exc, Path(dst.location), f"DST {dst}") if dst.kind == "oci" else None
        raise failure or CliError(f"convert failed: {exc}") from exc
    sys.stdout.write(_describe(report, recipe, dst))
    return 0
