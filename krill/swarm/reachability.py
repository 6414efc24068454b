"""Whether other peers can reach this node's peer port, judged from what the swarm shows.

A node whose peer port nobody can dial still pulls (it dials out, and the
origin feeds it over HTTP), so the fault is silent: the node just never
serves anyone, and a herd's pulls fall back on the origin. Issue 16 found
exactly that with the agent's old default (peer port bound to 127.0.0.1).
libtorrent counts incoming connections for the whole session
(``peer.incoming_connections``); a download that has run ``unreachable_after``
seconds while the tracker reports other peers holding pieces, in a session
that has never accepted a connection, points at the peer port (a firewall,
or a listener bound to loopback). It is a likely cause, not proof: the last
node of a herd to announce dials everyone itself and may never be dialled in
its first pull, so the warning says "if this persists", and any incoming
connection afterwards clears the suspicion for the session.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import libtorrent as lt

from krill.swarm.torrents import Torrent

__all__ = ["PeerReachability", "Reachability", "ReachabilityWatch"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name


class Reachability(enum.StrEnum):
    """What the session knows about its peer port being reachable."""

    REACHED = "reached"  # some peer has connected in: the port is reachable
    UNKNOWN = "unknown"  # nobody has connected in, and nothing suggests anyone should have
    SUSPECT = "suspect"  # a download had peers holding pieces, and still nobody connected in


@dataclass(frozen=True)
class PeerReachability:
    """For health and readiness pages: the state, its evidence, and where we listen."""

    state: Reachability
    incoming_connections: int  # accepted by the session since it started
    suspect_downloads: int  # downloads that were warned about (each once)
    listen: str  # the peer listener, host:port

    def as_dict(self) -> dict[str, object]:
        return {
            "state": str(self.state),
            "incoming_connections": self.incoming_connections,
            "suspect_downloads": self.suspect_downloads,
            "listen": self.listen,
        }


class ReachabilityWatch:
    """Looks at each download's state updates; warns once per download it suspects."""

    def __init__(self, unreachable_after: float) -> None:
        self._after = unreachable_after
        self.incoming_connections = 0
        self.suspect_downloads = 0
        self._warned: set[str] = set()

    @property
    def state(self) -> Reachability:
        if self.incoming_connections > 0:
            return Reachability.REACHED
        return Reachability.SUSPECT if self.suspect_downloads else Reachability.UNKNOWN

    def session_counted(self, incoming_connections: int) -> None:
        """libtorrent's session counters arrived (each pump tick)."""
        self.incoming_connections = incoming_connections

    def download_updated(
        self, info_hash: str, torrent: Torrent, status: lt.torrent_status, now: float
    ) -> bool:
        """A download's status: True if it is now suspected (and was warned about)."""
        download = torrent.download
        if (
            download is None
            or download.done
            or info_hash in self._warned
            or self._after <= 0
            or now - torrent.added < self._after
            or self.incoming_connections > 0
            or status.has_incoming
        ):
            return False
        # The tracker's counts include this node (as a downloader) and any origin.
        others = max(0, int(status.num_complete)) + max(0, int(status.num_incomplete)) - 1
        if others <= 0:
            return False
        self._warned.add(info_hash)
        self.suspect_downloads += 1
        log.warning(
            "swarm.peer_port_unreachable digest=%s seconds=%.0f peers_with_pieces=%d "
            "connected=%d incoming_connections=0 hint=%r",
            download.digest, now - torrent.added, others, int(status.num_peers),
            "no peer has connected in to this node while other peers hold pieces; if this "
            "persists, other nodes cannot reach its peer port: open it (TCP) in the "
            "firewall, and do not bind --peer-host to 127.0.0.1",
        )
        return True

    def forget(self, info_hash: str) -> None:
        """The torrent is gone: a later download of the same blob is judged afresh."""
        self._warned.discard(info_hash)
