"""The Krill image, run for real: built by scripts/build-image, run by containerd with runc.

The image is built once per commit (HEAD: the committed tree, not uncommitted
edits) into .krill-image/<commit> and reused by later runs at that commit.
It is imported into a private containerd (tests/containerd.py), runs
``krill --version`` as the image's krill user, and then runs ``krill origin``
on the host network, where skopeo pushes an image to it and pulls it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import containerd, imagebuild
from tests.components import SKOPEO_FLAGS, free_port, skopeo, wait_http

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".krill-image"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
REFERENCE = f"docker.io/library/krill:{VERSION}"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="building and running images needs root"),
    pytest.mark.skipif(
        not (containerd.available() and shutil.which("skopeo")
             and (shutil.which("runc") or Path("/usr/sbin/runc").exists())),
        reason="needs containerd, ctr, runc and skopeo (scripts/test installs them)",
    ),
]


@dataclass(frozen=True)
class BuiltImage:
    layout: Path
    manifest_digest: str
    manifest: dict
    config: dict


def _blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())


@pytest.fixture(scope="session")
def krill_image() -> BuiltImage:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    layout = CACHE / commit
    if not (layout / "index.json").exists():
        shutil.rmtree(CACHE, ignore_errors=True)  # images of earlier commits
        partial = CACHE / f"{commit}.partial"
        proc = subprocess.run(
            [str(ROOT / "scripts" / "build-image"), "--output", str(partial), "--ref", commit],
            cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )
        assert proc.returncode == 0, f"build-image failed:\n{proc.stderr[-4000:]}"
        partial.rename(layout)
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == VERSION
    ]
    manifest = _blob(layout, entry["digest"])
    config = _blob(layout, manifest["config"]["digest"])
    return BuiltImage(layout, entry["digest"], manifest, config)


@pytest.fixture(scope="module")
def ctrd(
    krill_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[containerd.Containerd]:
    """A private containerd holding the image, unpacked with the native snapshotter."""
    root = tmp_path_factory.mktemp("ctrd")
    archive = root / "image.tar"
    subprocess.run(["tar", "-C", str(krill_image.layout), "-cf", str(archive), "."], check=True)
    with containerd.running_containerd(root / "containerd") as instance:
        instance.ctr(
            "images", "import", "--base-name", "docker.io/library/krill",
            "--snapshotter", "native", str(archive),
        )
        archive.unlink()
        yield instance


def _run_args(ctrd: containerd.Containerd, name: str, *args: str) -> list[str]:
    return [
        "ctr", "--address", str(ctrd.socket), "--namespace", containerd.NAMESPACE,
        "run", "--rm", "--snapshotter", "native", "--net-host", REFERENCE, name, *args,
    ]


def test_the_image_is_krill_as_the_build_says(krill_image: BuiltImage) -> None:
    config = krill_image.config
    assert config["config"]["Entrypoint"] == ["/opt/krill/bin/krill"]
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["os"] == "linux"
    assert len(krill_image.manifest["layers"]) == 1


def test_containerd_runs_krill_version_as_the_krill_user(
    krill_image: BuiltImage, ctrd: containerd.Containerd
) -> None:
    assert ctrd.image_digest(REFERENCE) == krill_image.manifest_digest
    # ctr replaces the image's entrypoint with the arguments it is given.
    version = subprocess.run(
        _run_args(ctrd, "krill-version", "/opt/krill/bin/krill", "--version"),
        capture_output=True, text=True, timeout=120,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"krill {VERSION}"
    who = subprocess.run(
        _run_args(ctrd, "krill-whoami", "/opt/krill/bin/python", "-c",
                  "import os, pwd; print(os.getuid(), pwd.getpwuid(os.getuid()).pw_name)"),
        capture_output=True, text=True, timeout=120,
    )
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == ["65532", "krill"]


@contextlib.contextmanager
def _container(
    ctrd: containerd.Containerd, name: str, log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a container in the foreground of a ctr process; stop it with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen(_run_args(ctrd, name, *args), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(AssertionError):
                ctrd.ctr("tasks", "kill", "--signal", "SIGTERM", name, timeout=30)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(AssertionError):
                    ctrd.ctr("tasks", "kill", "--signal", "SIGKILL", name, timeout=30)
                proc.wait(timeout=30)


def test_the_origin_from_the_image_takes_a_push_and_serves_the_pull(
    ctrd: containerd.Containerd, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "origin.log"
    with _container(
        ctrd, "krill-origin", log, "/opt/krill/bin/krill", "origin",
        "--listen", f"127.0.0.1:{port}", "--data", "/var/lib/krill/origin",
    ) as proc:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        except Exception as exc:
            raise AssertionError(
                f"origin in the container: {exc}\n{log.read_text()[-3000:]}"
            ) from None
        files = imagebuild.realistic_files(7, count=30)
        image = imagebuild.build_image([files, imagebuild.random_files(7, count=3)])
        layout = imagebuild.write_oci_layout(tmp_path / "src", image.manifest, [image], "1.0")
        pushed = imagebuild.read_oci_layout_digests(layout)
        skopeo("copy", "--preserve-digests", *SKOPEO_FLAGS, f"oci:{layout}:1.0",
               f"docker://127.0.0.1:{port}/team/app:1.0")
        pulled_dir = tmp_path / "pulled"
        skopeo("copy", "--preserve-digests", *SKOPEO_FLAGS,
               f"docker://127.0.0.1:{port}/team/app:1.0", f"oci:{pulled_dir}:1.0")
        assert imagebuild.read_oci_layout_digests(pulled_dir) == pushed
        inspect = json.loads(
            skopeo("inspect", "--raw", "--tls-verify=false",
                   f"docker://127.0.0.1:{port}/team/app:1.0").stdout
        )
        assert inspect["config"]["digest"] == image.config.digest
    assert proc.returncode is not None
