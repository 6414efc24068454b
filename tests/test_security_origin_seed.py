"""The origin's seed takes a peer encryption policy like the agent's (issue 19).

``krill origin --peer-encryption`` (``peer_encryption``, ``KRILL_ORIGIN_PEER_ENCRYPTION``)
reaches libtorrent's session settings of the origin's seed; a mode that does not
exist stops the origin at start. That an origin requiring encryption and a node
requiring it trade a blob is tests/test_swarm_encryption.py.
"""

from __future__ import annotations

import libtorrent as lt
import pytest

from krill.config import ConfigError
from krill.origin.config import OriginConfig, load_origin_config
from krill.origin.seeding import swarm_settings_for
from krill.swarm import PeerEncryption, session_settings


def test_the_origin_seed_gets_the_policy() -> None:
    config = load_origin_config(
        environ={"KRILL_ORIGIN_PEER_ENCRYPTION": "required", "KRILL_ORIGIN_TRACKER": "http://t"}
    )
    settings = swarm_settings_for(config)
    assert settings.peer_encryption is PeerEncryption.REQUIRED
    applied = lt.session(session_settings(settings)).get_settings()
    assert applied["in_enc_policy"] == applied["out_enc_policy"] == int(lt.enc_policy.pe_forced)
    assert swarm_settings_for(OriginConfig(tracker="http://t")).peer_encryption is (
        PeerEncryption.ALLOWED
    )


def test_an_unknown_mode_stops_the_origin() -> None:
    with pytest.raises(ConfigError, match="peer_encryption must be one of off, allowed, required"):
        OriginConfig(peer_encryption="rc4")
