"""Shared by the origin auth tests (issue 19): users, rules, an in-process origin with --auth.

``origin`` runs the origin app on loopback with ``auth.toml`` and its htpasswd (bcrypt,
cost 4); ``push`` and the other helpers drive real skopeo through the Bearer token flow.
The fixtures are imported by name into each test module that uses them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestServer

from tests import imagebuild
from tests.components import skopeo
from tests.fixtures_origin import StartOrigin

PASSWORDS = {
    "alice": "alice-secret-1",
    "bob": "bob-secret-2",
    "carol": "carol-secret-3",
    "dave": "dävé-sécret-4",  # htpasswd hashed the UTF-8 bytes; Basic carries the same
}
AUTH_TOML = """\
htpasswd = "htpasswd"
token_ttl = 300
[[access]]
repositories = ["public/**"]
anonymous = ["read"]
users = { alice = ["read", "write", "delete"] }
[[access]]
repositories = ["private/**"]
users = { alice = ["read", "write"], bob = ["read"] }
[[access]]
repositories = ["team/*/app"]
users = { alice = ["read", "write"], carol = ["read", "write"] }
"""
TLS_OFF = ("--src-tls-verify=false", "--dest-tls-verify=false")


def write_auth_files(directory: Path, toml: str = AUTH_TOML) -> Path:
    """An auth file and its htpasswd (bcrypt, ``$2y$`` as ``htpasswd -B`` writes, cost 4)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for user, password in PASSWORDS.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
        lines.append(f"{user}:$2y${hashed[4:]}")
    (directory / "htpasswd").write_text("\n".join(lines) + "\n")
    (directory / "auth.toml").write_text(toml)
    return directory / "auth.toml"


def creds(user: str, password: str | None = None) -> str:
    return f"{user}:{PASSWORDS[user] if password is None else password}"


def basic(user: str, password: str | None = None) -> dict[str, str]:
    """The ``Authorization: Basic`` header for ``user`` (their password unless given)."""
    secret = PASSWORDS.get(user, "") if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


@dataclass
class Origin:
    server: TestServer

    @property
    def host(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, reference: str) -> str:
        return f"docker://{self.host}/{reference}"


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    return write_auth_files(tmp_path / "auth")


@pytest.fixture
async def origin(start_origin: StartOrigin, auth_file: Path) -> Origin:
    return Origin(await start_origin(auth=auth_file))


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Path]:
    image = imagebuild.build_image([imagebuild.random_files(7, count=2, size=4096)])
    yield imagebuild.write_oci_layout(tmp_path / "layout", image.manifest, [image], "v1")


async def run_skopeo(*args: str) -> str:
    """skopeo in a thread (the origin serves on this loop); its stdout."""
    return (await asyncio.to_thread(skopeo, *args)).stdout


async def skopeo_refused(*args: str) -> str:
    """Run a skopeo command that must fail; its stderr."""
    proc = await asyncio.to_thread(
        subprocess.run, ["skopeo", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0, f"skopeo {' '.join(args)} succeeded; expected a refusal"
    return proc.stderr


async def push(origin: Origin, layout: Path, reference: str, user: str = "alice") -> None:
    await run_skopeo(
        "copy", *TLS_OFF, "--dest-creds", creds(user), f"oci:{layout}:v1", origin.ref(reference)
    )


async def pushed_manifest(origin: Origin, layout: Path, reference: str) -> str:
    """Push as alice; the manifest digest (read back as alice)."""
    await push(origin, layout, reference)
    name, _, tag = reference.partition(":")
    async with aiohttp.ClientSession(headers=basic("alice")) as session:
        resp = await session.head(f"{origin.url}/v2/{name}/manifests/{tag}")
        assert resp.status == 200
        return resp.headers["Docker-Content-Digest"]


def first_layer(layout: Path) -> str:
    """The digest of the first layer of the layout's image (a blob, not its manifest)."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return str(manifest["layers"][0]["digest"])


def challenge_of(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("WWW-Authenticate", "")
