"""libtorrent's announces to an https tracker, checked against the node's ``--ca`` (issue 19).

libtorrent has no setting for the CA of its tracker connections; the swarm
engine points OpenSSL's default verify paths at ``SwarmSettings.tracker_ca``
while it makes the session (``krill.swarm.session.new_session``). A real
``krill tracker --tls-cert/--tls-key`` with a certificate from a CA made in
the test: two engines given that CA find each other through it and trade a
blob; an engine without it gets libtorrent's certificate error; the process
environment is left as it was. The origin's ``--tracker-ca`` makes its
readiness check (and its seed) trust the same CA.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.digests import sha256_file
from krill.metainfo import make_metainfo
from krill.swarm import SwarmEngine, SwarmSettings
from tests.components import free_port, krill_process
from tests.polling import until
from tests.test_origin_auth_tls import Pki, make_pki
from tests.test_security_tls import https_process


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tracker-tls") / "pki")


@pytest.fixture(scope="module")
def announce_url(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[str]:
    """A real tracker serving https only, with a certificate from the test's CA."""
    root = tmp_path_factory.mktemp("tracker")
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    args = [
        "tracker", "--listen", f"127.0.0.1:{port}",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    ]  # fmt: skip
    with https_process(args, root / "tracker.log", f"{base}/health", pki):
        yield f"{base}/announce"


async def test_engines_given_the_ca_announce_over_https_and_trade(
    tmp_path: Path, pki: Pki, announce_url: str
) -> None:
    before = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest = origin_store.put_bytes(os.urandom(1024 * 1024 + 3))
    metainfo = make_metainfo(origin_store.path(digest), digest)
    async with (
        SwarmEngine(
            SwarmSettings(announce_url, origin=True, tracker_ca=pki.ca), origin_store
        ) as origin,
        SwarmEngine(SwarmSettings(announce_url, tracker_ca=pki.ca), agent_store) as agent,
    ):
        await origin.seed(digest, metainfo)
        download = await agent.download(digest, metainfo)
        path = await download.wait_done()
        assert sha256_file(str(path)) == digest
    assert {name: os.environ.get(name) for name in before} == before


async def test_without_the_ca_libtorrent_refuses_the_tracker(
    tmp_path: Path, announce_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlobStore(tmp_path / "o")
    digest = store.put_bytes(os.urandom(64 * 1024))
    metainfo = make_metainfo(store.path(digest), digest)
    caplog.set_level(logging.WARNING, logger="krill.swarm")
    async with SwarmEngine(SwarmSettings(announce_url, first_announce_timeout=0), store) as engine:
        await engine.seed(digest, metainfo)
        await until(
            lambda: any("certificate verify failed" in r.getMessage() for r in caplog.records),
            "libtorrent's tracker error",
        )


@pytest.mark.parametrize("with_ca", [True, False], ids=["tracker-ca", "system-store"])
def test_the_origin_checks_an_https_tracker_against_its_tracker_ca(
    tmp_path: Path, pki: Pki, announce_url: str, with_ca: bool
) -> None:
    """``krill origin --tracker-ca``: its readiness check (and its seed) trust that CA."""
    port = free_port()
    args = [
        "origin", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "data"),
        "--tracker", announce_url.removesuffix("/announce"),
        *(["--tracker-ca", str(pki.ca)] if with_ca else []),
    ]  # fmt: skip
    with krill_process(args, tmp_path / "origin.log", f"http://127.0.0.1:{port}/health"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
    assert body["checks"]["tracker"]["outcome"] == ("pass" if with_ca else "fail"), body
