"""Build real OCI images in-process, for tests and benchmarks.

Layers are real tar archives compressed the way registries see them (gzip by
zlib, or none, or by a caller-supplied gzip compressor such as the Go oracle
of tests/goflate); configs carry the right diff_ids; images are written as an
OCI image layout that ``skopeo copy oci:DIR:TAG ...`` pushes unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from krill import oci

REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes], *, mtime: int = 1_700_000_000) -> bytes:
    """A deterministic tar of regular files (directories implied are added)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d + "/")
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = mtime
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """gzip as zlib makes it, with mtime 0: reproducible byte for byte."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def random_files(seed: int, count: int = 8, size: int = 64 * 1024) -> dict[str, bytes]:
    """Incompressible files: a worst case for compression and deltas."""
    rng = random.Random(seed)
    return {f"data/blob{i:03d}.bin": rng.randbytes(size) for i in range(count)}


def realistic_files(seed: int, count: int = 40) -> dict[str, bytes]:
    """Text and structured binary files that compress like a real rootfs does."""
    rng = random.Random(seed)
    words = [
        "import",
        "def",
        "return",
        "class",
        "self",
        "value",
        "config",
        "layer",
        "digest",
        "manifest",
        "container",
        "krill",
        "swarm",
        "peer",
        "node",
        "blob",
    ]
    files: dict[str, bytes] = {}
    for i in range(count):
        if i % 4 == 3:
            header = b"\x7fELF" + bytes(60)
            body = bytes(rng.choice(b"\x00\x00\x00\x48\x89\xe5\xc3") for _ in range(20_000))
            files[f"usr/bin/tool{i}"] = header + body
        else:
            lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(300)]
            files[f"usr/lib/python3/site-packages/pkg{i}/mod.py"] = "\n".join(lines).encode()
    files["etc/os-release"] = f'NAME="Krill test"\nVERSION_ID="{seed}"\n'.encode()
    return files


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@dataclass
class Image:
    """One single-platform image: config, layers, manifest."""

    config: Blob
    layers: list[Blob]
    manifest: Blob
    platform: dict[str, str] = field(
        default_factory=lambda: {"os": "linux", "architecture": "amd64"}
    )

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


def build_image(
    layer_files: list[dict[str, bytes]],
    *,
    docker: bool = False,
    compress: bool = True,
    architecture: str = "amd64",
    compressor: Callable[[bytes], bytes] = gzip_bytes,
) -> Image:
    """An image whose layers hold ``layer_files`` (one dict per layer).

    ``compressor`` gzips each layer tar (zlib level 6 by default); pass another
    gzip writer (say ``lambda tar: go_oracle.gzip(tar, 6)``) for layers made
    the way another builder makes them.
    """
    tars = [make_tar(files) for files in layer_files]
    if docker:
        layer_type, config_type, manifest_type = (
            oci.DOCKER_LAYER_GZIP,
            oci.DOCKER_CONFIG,
            oci.DOCKER_MANIFEST,
        )
    else:
        layer_type = oci.OCI_LAYER_GZIP if compress else oci.OCI_LAYER_TAR
        config_type, manifest_type = oci.OCI_CONFIG, oci.OCI_MANIFEST
    layers = [Blob(layer_type, compressor(t) if compress or docker else t) for t in tars]
    config_doc = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
    }
    config = Blob(config_type, json.dumps(config_doc, sort_keys=True).encode())
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest = Blob(manifest_type, json.dumps(manifest_doc, indent=2).encode())
    return Image(config, layers, manifest, {"os": "linux", "architecture": architecture})


def build_index(images: list[Image], *, docker: bool = False) -> Blob:
    media_type = oci.DOCKER_LIST if docker else oci.OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [img.manifest.descriptor(platform=img.platform) for img in images],
    }
    return Blob(media_type, json.dumps(doc, indent=2).encode())


def write_oci_layout(
    root: str | os.PathLike[str], top: Blob, images: list[Image], tag: str = "latest"
) -> Path:
    """Write an OCI image layout holding ``top`` (a manifest or index) as ``tag``."""
    root = Path(root)
    blobs_dir = root / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    for blob in [top] + [b for img in images for b in (*img.blobs(), img.manifest)]:
        (blobs_dir / blob.digest.split(":", 1)[1]).write_bytes(blob.data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = root / "index.json"
    existing = json.loads(index_path.read_text())["manifests"] if index_path.exists() else []
    existing = [m for m in existing if m.get("annotations", {}).get(REF_NAME) != tag]
    existing.append(top.descriptor(annotations={REF_NAME: tag}))
    index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": existing}))
    return root


def read_oci_layout_digests(root: str | os.PathLike[str]) -> set[str]:
    """Every blob digest present in an OCI layout (to compare round trips)."""
    return {"sha256:" + p.name for p in (Path(root) / "blobs" / "sha256").iterdir()}
