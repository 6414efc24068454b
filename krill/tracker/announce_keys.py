"""Per-node announce keys: who may announce to (and so learn the peers of) this tracker.

Without them, anyone who can reach the tracker can announce any info-hash
and be handed the swarm's members (their addresses and peer ports), or
insert itself as a peer. With ``announce_keys = FILE`` (lines ``NODE:KEY``,
``#`` comments), an announce must come to ``/announce/<KEY>`` with a key of
the file: libtorrent sends whatever announce URL it is given, so the key
rides in the URL's path (its own query has a ``key`` parameter that means
something else). One key per node so that one node's key can be revoked
without touching the others, and the tracker's log names the node.

Keys are compared by their SHA-256, so a lookup costs the same whichever
key (or none) matches; the keys themselves are never logged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from krill.config import ConfigError
from krill.linefile import colon_lines
from krill.nodeauth import check_announce_key, redact_announce_keys

__all__ = ["AnnounceKeys", "load_announce_keys"]


class AnnounceKeys:
    """The nodes allowed to announce, found by their key; none at all means anyone may."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._nodes = {_fingerprint(key): node for node, key in keys.items()}

    def __len__(self) -> int:
        return len(self._nodes)

    def refusal(self, key: str | None) -> str | None:
        """Why an announce with ``key`` (None: to plain /announce) is refused; None if it is not.

        The reason goes back to the client as the BitTorrent ``failure reason``.
        """
        if not self._nodes:
            return None
        if key is None:
            return (
                "this tracker needs a node's announce key: announce to /announce/KEY "
                "(announce_key in the node's --origin-credentials file)"
            )
        if self.node_for(key) is None:
            return "announce key not accepted (not in the tracker's announce_keys file)"
        return None

    def node_for(self, key: str) -> str | None:
        """The node ``key`` belongs to; None for a key the file does not hold."""
        return self._nodes.get(_fingerprint(key))


def load_announce_keys(path: Path) -> AnnounceKeys:
    """Read ``NODE:KEY`` lines; ConfigError naming the file and line (never the key)."""
    keys: dict[str, str] = {}
    for where, node, key in colon_lines(path, "announce_keys", "NODE:KEY"):
        keys[node] = check_announce_key(key, f"{where}: the key of {node}")
    if not keys:
        raise ConfigError(f"{path} lists no NODE:KEY lines (no node could announce)")
    if len(set(keys.values())) != len(keys):
        raise ConfigError(f"{path}: two nodes share a key (give each node its own)")
    redact_announce_keys()  # the request log prints each announce's path
    return AnnounceKeys(keys)


def _fingerprint(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
