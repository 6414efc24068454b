"""The peer-port reachability watch: when a download is suspected, and only once."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from krill.agent.config import AgentConfig
from krill.config import ConfigError, load_config
from krill.swarm import Reachability
from krill.swarm.reachability import ReachabilityWatch
from krill.swarm.settings import listen_interface


def _download(done: bool = False) -> Any:
    return SimpleNamespace(done=done, digest="sha256:" + "ab" * 32)


def _torrent(added: float = 0.0, done: bool = False) -> Any:
    return SimpleNamespace(download=_download(done), added=added)


def _status(complete: int = 1, incomplete: int = 2, has_incoming: bool = False) -> Any:
    return SimpleNamespace(
        num_complete=complete, num_incomplete=incomplete, has_incoming=has_incoming, num_peers=1
    )


def test_a_download_with_peers_and_no_incoming_connection_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = ReachabilityWatch(unreachable_after=10.0)
    torrent = _torrent()
    with caplog.at_level(logging.WARNING, logger="krill.swarm"):
        assert not watch.download_updated("h", torrent, _status(), now=9.0)  # too early
        assert watch.download_updated("h", torrent, _status(), now=10.0)
        assert not watch.download_updated("h", torrent, _status(), now=11.0)
    assert watch.state is Reachability.SUSPECT
    assert watch.suspect_downloads == 1
    [record] = [r for r in caplog.records if "peer_port_unreachable" in r.getMessage()]
    assert "firewall" in record.getMessage()
    watch.session_counted(incoming_connections=1)
    assert watch.state is Reachability.REACHED


@pytest.mark.parametrize(
    ("status", "incoming", "torrent"),
    [
        (_status(complete=0, incomplete=1), 0, _torrent()),  # nobody else in the swarm
        (_status(has_incoming=True), 0, _torrent()),  # this torrent was dialled
        (_status(), 3, _torrent()),  # the session has been dialled
        (_status(), 0, _torrent(done=True)),  # the download is over
        (_status(complete=-1, incomplete=-1), 0, _torrent()),  # the tracker never answered
    ],
)
def test_no_warning_without_evidence(status: Any, incoming: int, torrent: Any) -> None:
    watch = ReachabilityWatch(unreachable_after=1.0)
    watch.session_counted(incoming)
    assert not watch.download_updated("h", torrent, status, now=100.0)
    assert watch.state is (Reachability.REACHED if incoming else Reachability.UNKNOWN)


def test_the_agent_listens_for_peers_on_every_interface_by_default() -> None:
    config = load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ={})
    assert (config.peer_host, config.peer_port) == ("0.0.0.0", 0)
    flagged = load_config(
        AgentConfig, env_prefix="KRILL_AGENT_", environ={"KRILL_AGENT_PEER_HOST": "10.0.0.5"},
        flags={"peer_port": "6882"},
    )
    assert (flagged.peer_host, flagged.peer_port) == ("10.0.0.5", 6882)


@pytest.mark.parametrize(("host", "port"), [("node-1", 6881), ("0.0.0.0", 70000)])
def test_a_peer_address_libtorrent_cannot_bind_is_refused(host: str, port: int) -> None:
    with pytest.raises(ConfigError, match="--peer-"):
        AgentConfig(peer_host=host, peer_port=port)


def test_ipv6_listen_addresses_are_bracketed() -> None:
    assert listen_interface("::", 6881) == "[::]:6881"
    assert listen_interface("0.0.0.0", 0) == "0.0.0.0:0"
