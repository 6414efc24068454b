"""The swarm engine: one libtorrent session per process, seeding and downloading blobs.

Used by the origin (``seed``: serve committed blobs from the store in place)
and by the agent (``download``: fetch a blob through the swarm into the
store, then keep seeding it). The guarantees:

* **Verified before visible.** A download is written under the store's
  ``incoming/`` area; only after libtorrent has every piece *and* the whole
  file's sha256 matches the digest is it published into the store
  (``BlobStore.adopt_file``: hash, fsync, atomic rename). Partial or corrupt
  data never appears at a store path.
* **Streaming of verified bytes.** ``Download.available`` is the length of
  the contiguous prefix whose pieces have passed their SHA-1 piece hash and
  are in the file: libtorrent reports a piece as passed before it has
  necessarily left its write cache, so while a reader waits the engine asks
  libtorrent to flush and counts a piece once a flush begun after its hash
  check has completed. Pieces are picked rarest-first (best for a herd: peers hold different
  pieces and can trade), and when a reader waits for an offset the engine
  puts piece deadlines on a window of pieces from there, so a streaming
  reader gets its next bytes first without making every peer download in
  the same order.
* **Single flight.** Concurrent ``download`` calls for one digest share one
  ``Download``; a blob already in the store returns a finished one at once.
* **Seeding in place.** ``seed`` adds the torrent with ``save_path`` = the
  blob's shard directory and name = the digest hex, so libtorrent's file is
  the store file itself, in seed mode (no re-hash of a file the store has
  verified). Torrents with no peers for ``seed_ttl`` seconds are dropped.
* **Piece claims.** With ``SwarmSettings.origin_urls`` a download also claims
  chunks of pieces from the origin over HTTP (``krill.piecefeed``,
  ``origin.piececlaims``) and hands them to libtorrent (``add_piece``), so a
  herd's nodes each take different pieces from the origin and trade the rest;
  a download that stalls fills from the origin what no peer has. A download
  is done when every piece is verified (not at libtorrent's "finished", which
  counts only the pieces it wants: claimed pieces on their way have priority 0).

libtorrent is blocking C++ with an alert queue. One task pumps alerts and
dispatches them through a table of handlers to the state they change;
libtorrent wakes it through a socket the event loop watches
(``krill.alertbell``), so no thread blocks on the queue. Every timed thing
(the pump's pause, seed expiry, the feed's pacer and stall fill, removal
timeouts) is measured on an injectable ``krill.clock.Clock``.

The modules, one responsibility each:

* ``settings``: ``SwarmSettings`` and libtorrent's ``session_settings``.
* ``engine``: ``SwarmEngine``, the lifecycle, seeding, single flight, publishing.
* ``download``: ``Download``, one blob's pieces, streaming prefix and digest.
* ``torrents``: the session's torrents and the removals libtorrent has yet to confirm.
* ``pump``: the alert pump and its pause between batches.
* ``alerts``: the table of alert handlers.
* ``feed``: the origin piece feed and its ``Pacer``.
* ``superseed``: when a seeded torrent super-seeds.
* ``stats``: ``SwarmStats`` and the engine's counters.
* ``reachability``: whether peers can reach this node's peer port
  (``SwarmEngine.reachability()``; a warning once per download suspected).

Beyond a plain seed/download engine: ``SwarmSettings.origin`` (peer id
prefix ``-KO`` so the tracker hands origins out first), ``origin_urls`` and
``fill_after`` (piece claims), and tuning fields (``unchoke_slots``,
``seed_upload_slots``, ``super_seeding``, ``super_seed_min_peers``,
``super_seed_upload_slots``, ``first_announce_timeout``,
``stream_window_pieces``); ``SwarmStats.origin_feed_bytes``;
``SwarmEngine.super_seeding(digest)`` and ``.super_seed_toggles(digest)``
(dynamic super-seeding state, for tests and logs); ``SwarmStats.failed_pieces``
and ``.torrents``; ``SwarmEngine.fetch_stats()`` (fresh session counters;
``stats()`` returns the last ones, refreshed every second); ``Download.digest``,
``Download.store_path`` and ``Download.open()`` (opens the partial file, or the
store file once the blob has been published, so a reader never races the
move).
"""

from krill.swarm.download import Download, DownloadFailed
from krill.swarm.engine import SwarmEngine
from krill.swarm.feed import Pacer
from krill.swarm.reachability import PeerReachability, Reachability
from krill.swarm.settings import (
    AGENT_PEER_ID_PREFIX,
    ORIGIN_PEER_ID_PREFIX,
    PeerEncryption,
    SwarmSettings,
    session_settings,
)
from krill.swarm.stats import SwarmStats

__all__ = [
    "AGENT_PEER_ID_PREFIX",
    "ORIGIN_PEER_ID_PREFIX",
    "Download",
    "DownloadFailed",
    "Pacer",
    "PeerEncryption",
    "PeerReachability",
    "Reachability",
    "SwarmEngine",
    "SwarmSettings",
    "SwarmStats",
    "session_settings",
]
