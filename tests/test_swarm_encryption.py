"""Peer encryption (``SwarmSettings.peer_encryption``): libtorrent gets the policy asked
for, and peers that require encryption still trade with each other and with an origin
left at libtorrent's default."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import libtorrent as lt
import pytest

from krill.agent.config import PEER_ENCRYPTION_MODES
from krill.blobstore import BlobStore
from krill.digests import sha256_file
from krill.metainfo import make_metainfo
from krill.swarm import PeerEncryption, SwarmEngine, SwarmSettings, session_settings
from tests.swarm_helpers import running_tracker


@pytest.fixture
async def announce_url() -> AsyncIterator[str]:
    async with running_tracker() as base:
        yield base + "/announce"


def test_the_agent_config_spells_every_mode() -> None:
    assert PEER_ENCRYPTION_MODES == tuple(mode.value for mode in PeerEncryption)


@pytest.mark.parametrize(
    ("mode", "policy", "level"),
    [
        (PeerEncryption.OFF, lt.enc_policy.pe_disabled, None),
        (PeerEncryption.ALLOWED, lt.enc_policy.pe_enabled, lt.enc_level.pe_both),
        (PeerEncryption.REQUIRED, lt.enc_policy.pe_forced, lt.enc_level.pe_rc4),
    ],
)
def test_libtorrent_gets_the_policy(mode: PeerEncryption, policy: int, level: int | None) -> None:
    pack = lt.session(session_settings(SwarmSettings("http://t/announce", peer_encryption=mode)))
    applied = pack.get_settings()
    assert applied["out_enc_policy"] == int(policy)
    assert applied["in_enc_policy"] == int(policy)
    if level is not None:
        assert applied["allowed_enc_level"] == int(level)


@pytest.mark.parametrize("origin_mode", [PeerEncryption.REQUIRED, PeerEncryption.ALLOWED])
async def test_a_node_requiring_encryption_downloads_from_the_swarm(
    tmp_path: Path, announce_url: str, origin_mode: PeerEncryption
) -> None:
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest = origin_store.put_bytes(os.urandom(2 * 1024 * 1024 + 7))
    metainfo = make_metainfo(origin_store.path(digest), digest)
    origin_settings = SwarmSettings(announce_url, origin=True, peer_encryption=origin_mode)
    agent_settings = SwarmSettings(announce_url, peer_encryption=PeerEncryption.REQUIRED)
    async with (
        SwarmEngine(origin_settings, origin_store) as origin,
        SwarmEngine(agent_settings, agent_store) as agent,
    ):
        await origin.seed(digest, metainfo)
        download = await agent.download(digest, metainfo)
        path = await download.wait_done()
        assert sha256_file(str(path)) == digest
