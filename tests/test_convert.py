"""``krill convert``: layers recompressed reproducibly, diff_ids and config unchanged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from krill import oci
from krill.delta import detect_recipe
from krill.delta.layerfiles import materialize_tar
from tests.components import SKOPEO_FLAGS, docker_registry, krill_command, skopeo
from tests.imagebuild import (
    Blob,
    Image,
    build_index,
    make_tar,
    realistic_files,
    sha256,
    write_oci_layout,
)


def _gnu_gzip(data: bytes) -> bytes:
    return subprocess.run(
        ["gzip", "-6", "-n", "-c"], input=data, capture_output=True, check=True
    ).stdout


def _image(seed: int, architecture: str = "amd64", files: int = 40) -> Image:
    """An image whose layers GNU gzip compressed (so no delta can target them as they are)."""
    tars = [make_tar(realistic_files(seed, files)),
            make_tar({"etc/motd": f"hi {seed}\n".encode()})]
    layers = [Blob(oci.OCI_LAYER_GZIP, _gnu_gzip(t)) for t in tars]
    config_doc = {
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
    }
    config = Blob(oci.OCI_CONFIG, json.dumps(config_doc).encode())
    manifest = Blob(
        oci.OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor() for layer in layers],
            }
        ).encode(),
    )
    return Image(config, layers, manifest, {"os": "linux", "architecture": architecture})


def _krill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=300)


def _layout_manifest(root: Path, tag: str) -> dict:
    index = json.loads((root / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    return json.loads((root / "blobs/sha256" / entry["digest"].split(":")[1]).read_bytes())


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs/sha256" / digest.split(":")[1]


def _assert_converted(root: Path, manifest: dict, original: Image, tmp: Path) -> None:
    assert manifest["config"]["digest"] == original.config.digest
    diff_ids = json.loads(original.config.data)["rootfs"]["diff_ids"]
    # GNU gzip's big layer is not zlib's; the tiny one can coincide with zlib, bytes and all.
    assert manifest["layers"][0]["digest"] != original.layers[0].digest
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        path = _blob(root, layer["digest"])
        tar = materialize_tar(path, tmp)
        assert tar.diff_id == diff_id
        assert detect_recipe(path, tar.path).kind == "gzip-zlib"
        tar.discard()


def test_oci_layout_round_trip(tmp_path: Path) -> None:
    image = _image(1)
    write_oci_layout(tmp_path / "src", image.manifest, [image], "v1")
    result = _krill("convert", f"oci:{tmp_path / 'src'}:v1", f"oci:{tmp_path / 'dst'}:v1")
    assert result.returncode == 0, result.stderr
    assert "config and diff_ids unchanged" in result.stdout
    assert "layer and manifest digests changed" in result.stdout
    dst = tmp_path / "dst"
    _assert_converted(dst, _layout_manifest(dst, "v1"), image, tmp_path)
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_converted_layers_are_delta_targets(tmp_path: Path) -> None:
    """After convert, `krill delta create` accepts the new layer (before, it refuses)."""
    # Refusing costs a full recompression per zlib and Go setting tried (time linear in the
    # tar): 12 files (250 KB of tar, not 40 and 830 KB) are well past the ~90 KB at which
    # GNU gzip's output can still be zlib's, bytes and all.
    v1, v2 = _image(1, files=12), _image(2, files=12)
    for tag, image in (("v1", v1), ("v2", v2)):
        write_oci_layout(tmp_path / "src", image.manifest, [image], tag)
        assert (
            _krill(
                "convert", f"oci:{tmp_path / 'src'}:{tag}", f"oci:{tmp_path / 'dst'}:{tag}"
            ).returncode
            == 0
        )
    dst = tmp_path / "dst"
    base = _blob(dst, _layout_manifest(dst, "v1")["layers"][0]["digest"])
    target = _blob(dst, _layout_manifest(dst, "v2")["layers"][0]["digest"])
    refused = _krill(
        "delta",
        "create",
        str(base),
        str(_blob(tmp_path / "src", v2.layers[0].digest)),
        str(tmp_path / "no.krd"),
    )
    assert refused.returncode != 0
    created = _krill("delta", "create", str(base), str(target), str(tmp_path / "d.krd"))
    assert created.returncode == 0, created.stderr


def test_multi_arch_index_converts_every_platform(tmp_path: Path) -> None:
    images = [_image(3, "amd64"), _image(4, "arm64")]
    index = build_index(images)
    write_oci_layout(tmp_path / "src", index, images, "multi")
    result = _krill(
        "convert", "--zstd", f"oci:{tmp_path / 'src'}:multi", f"oci:{tmp_path / 'dst'}:multi"
    )
    assert result.returncode == 0, result.stderr
    dst = tmp_path / "dst"
    new_index = _layout_manifest(dst, "multi")
    assert [m["platform"]["architecture"] for m in new_index["manifests"]] == ["amd64", "arm64"]
    for entry, image in zip(new_index["manifests"], images, strict=True):
        manifest = json.loads(_blob(dst, entry["digest"]).read_bytes())
        assert manifest["config"]["digest"] == image.config.digest
        assert {layer["mediaType"] for layer in manifest["layers"]} == {oci.OCI_LAYER_ZSTD}
        for layer in manifest["layers"]:
            path = _blob(dst, layer["digest"])
            tar = materialize_tar(path, tmp_path)
            assert detect_recipe(path, tar.path).kind == "zstd"
            tar.discard()


def test_bad_reference_is_one_line(tmp_path: Path) -> None:
    result = _krill("convert", "nonsense", f"oci:{tmp_path}")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_registry_to_registry(tmp_path: Path) -> None:
    image = _image(5)
    write_oci_layout(tmp_path / "src", image.manifest, [image], "v1")
    with docker_registry(tmp_path / "registry") as url:
        host = url.removeprefix("http://")
        skopeo("copy", *SKOPEO_FLAGS, f"oci:{tmp_path / 'src'}:v1", f"docker://{host}/app:v1")
        result = _krill(
            "convert", "--insecure", f"docker://{host}/app:v1", f"docker://{host}/app:v1-krill"
        )
        assert result.returncode == 0, result.stderr
        skopeo(
            "copy", *SKOPEO_FLAGS, f"docker://{host}/app:v1-krill", f"oci:{tmp_path / 'back'}:v1"
        )
    back = tmp_path / "back"
    _assert_converted(back, _layout_manifest(back, "v1"), image, tmp_path)


def test_insecure_refuses_remote_hosts(tmp_path: Path) -> None:
    result = _krill(
        "convert", "--insecure", "docker://registry.example.com/app:v1", f"oci:{tmp_path / 'o'}"
    )
    assert result.returncode != 0
    assert "only allowed for loopback" in result.stderr


def test_a_gzip_level_zlib_has_not_is_one_line(tmp_path: Path) -> None:
    result = _krill("convert", "--level", "42", "oci:" + str(tmp_path / "in") + ":v1",
                    "oci:" + str(tmp_path / "out") + ":v1")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = "krill convert: error: --level must be 0-9 for gzip (zlib's levels), got 42"
    assert result.stderr.strip() == expected
