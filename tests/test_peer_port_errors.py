"""A peer port the swarm cannot have stops the service at start, with one line.

libtorrent falls back to another port when the one asked for is taken, and
listens nowhere when the address is not this host's; both used to be one log
line at info or error level, and a node whose swarm no peer could reach
(new-user review, stop 39). ``krill.swarm.session.check_listening``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.swarm import SwarmEngine, SwarmSettings
from krill.swarm.session import PeerPortUnavailable
from tests.components import free_port, krill_command


async def test_a_taken_peer_port_is_refused_not_swapped(taken_port: int, tmp_path: Path) -> None:
    settings = SwarmSettings("http://127.0.0.1:1/announce", "0.0.0.0", taken_port)
    with pytest.raises(PeerPortUnavailable, match=f"0.0.0.0:{taken_port}.*--peer-port"):
        async with SwarmEngine(settings, BlobStore(tmp_path)):
            pass


async def test_an_address_this_host_lacks_is_refused(tmp_path: Path) -> None:
    settings = SwarmSettings("http://127.0.0.1:1/announce", "192.0.2.1", free_port())
    with pytest.raises(PeerPortUnavailable, match=r"no interface of this host.*--peer-host"):
        async with SwarmEngine(settings, BlobStore(tmp_path)):
            pass


async def test_port_zero_takes_any_free_port(tmp_path: Path) -> None:
    settings = SwarmSettings("http://127.0.0.1:1/announce", "127.0.0.1", 0)
    async with SwarmEngine(settings, BlobStore(tmp_path)) as engine:
        assert engine.peer_port > 0


def test_the_agent_stops_with_one_line(taken_port: int, tmp_path: Path) -> None:
    args = [
        "agent", "--listen", f"127.0.0.1:{free_port()}",
        "--registry-listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path),
        "--origin", "http://127.0.0.1:1", "--tracker", "http://127.0.0.1:1",
        "--peer-port", str(taken_port),
    ]  # fmt: skip
    proc = subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        f"krill agent: error: cannot listen for peers on 0.0.0.0:{taken_port}: another process "
        r"listens there \(libtorrent would take port \d+ instead, which no firewall rule "
        r"expects\); stop it or choose another --peer-port",
        line,
    ), line
