"""Piece claims: the origin hands each node of a herd different pieces to fetch from it.

A herd is many nodes wanting one blob at once. If each fetched whatever it
liked from the origin, the origin would send popular pieces many times and
its link, the herd's bottleneck, would carry the blob several times over
(measured: 1.35-1.7x with libtorrent choosing, docs/swarm.md). So nodes ask
the origin which pieces to take from it:

* ``POST /krill/v1/claims/<digest>[?piece_length=n]``: the next chunk of the
  blob nobody has been given yet in this round (16 pieces, fewer towards the
  end), as ``{"first": i, "end": j, "piece_length": n}`` (pieces ``i..j-1``
  of the blob's torrent), or ``204 No Content`` once every chunk has been
  handed out: the node then gets the rest from its peers. A node names its
  torrent's piece length: the current rule's or, for a torrent handed out
  before the rule changed, the old one's (``krill.metainfo``, "Upgrades");
  each length has its own round, since its pieces are other byte ranges.
  Without it the current rule's is meant; any other length is a 400.
* ``GET /krill/v1/blobs/<digest>`` (with ``Range``): the blob's bytes by
  digest, for the claimed pieces, sent with sendfile like any blob.

Each node fetches its chunk over HTTP and hands the pieces to libtorrent,
which checks them and offers them to the other nodes, so the origin sends
each piece about once and keeps its link full from the first second. A
round ends ``round_idle`` seconds after its last chunk was handed out (a
204 does not extend it); the next herd, which may find nobody left holding
the blob, starts a new one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.endpoints import BLOBS, CLAIMS
from krill.metainfo import accepted_piece_lengths, piece_count, piece_length_for
from krill.origin.blobresponses import stored_file_response
from krill.origin.errors import blob_gone, stored_digest
from krill.origin.pieceburst import DEFAULT_SLOTS, PieceBurstResponse, PieceTurnstile
from krill.registry_errors import RegistryError

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_PIECES",
    "PieceClaims",
    "install_piece_claims",
    "piece_claims",
    "piece_turnstile",
]

# Pieces per claim: large enough that a node claims rarely (one small request per
# chunk), small enough that a herd of a few dozen nodes all get a chunk at once
# (a 64 MiB blob has 512 pieces of 128 KiB: 32 chunks).
CHUNK_PIECES = 16
# A round of claims ends after this long without a claim (a herd claims every few
# seconds at most while it pulls).
ROUND_IDLE_SECONDS = 30.0
# Blobs whose rounds are remembered at once (oldest forgotten first).
MAX_ROUNDS = 4096


@dataclass
class _Round:
    pieces: int
    next_piece: int
    last_claim: float


class PieceClaims:
    """Chunks of each blob's pieces, handed out once per round, in order.

    A chunk is ``chunk_pieces`` pieces, or 1/``chunk_pieces`` of what is left of
    the round if that is less (so the last chunks are single pieces).
    """

    def __init__(
        self,
        chunk_pieces: int = CHUNK_PIECES,
        round_idle: float = ROUND_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chunk_pieces = chunk_pieces
        self.round_idle = round_idle
        self._clock = clock
        self._rounds: OrderedDict[tuple[Digest, int], _Round] = OrderedDict()
        self.claims_issued = 0  # chunks handed out (tests, benchmarks)
        self.bytes_requested = 0  # bytes asked for through GET /krill/v1/blobs/<digest>

    def claim(self, digest: Digest, size: int, piece_length: int | None = None) -> range | None:
        """The next unclaimed pieces of ``digest`` in this round, or None when all are out.

        ``piece_length`` is the torrent's (``piece_length_for(size)`` when None);
        the caller has checked it is one of ``accepted_piece_lengths(size)``.
        """
        piece_length = piece_length or piece_length_for(size)
        pieces = piece_count(size, piece_length)
        now = self._clock()
        key = (digest, piece_length)
        current = self._rounds.get(key)
        if current is None or now - current.last_claim > self.round_idle:
            current = _Round(pieces=pieces, next_piece=0, last_claim=now)
        self._rounds[key] = current
        self._rounds.move_to_end(key)
        while len(self._rounds) > MAX_ROUNDS:
            self._rounds.popitem(last=False)
        remaining = current.pieces - current.next_piece
        if remaining <= 0:
            return None
        # Chunks shrink towards the end of a round (guided self-scheduling): the last
        # pieces are spread over many nodes instead of all waiting on the one node
        # that claimed a full last chunk and must pass it to everyone.
        count = max(1, min(self.chunk_pieces, -(-remaining // self.chunk_pieces)))
        first = current.next_piece
        current.next_piece += count
        current.last_claim = now
        self.claims_issued += 1
        return range(first, current.next_piece)


_CLAIMS_KEY = web.AppKey("piece_claims", PieceClaims)
_STORE_KEY = web.AppKey("piece_store", BlobStore)
_TURNSTILE_KEY: web.AppKey[PieceTurnstile | None] = web.AppKey("piece_turnstile")


def install_piece_claims(
    app: web.Application, store: BlobStore, burst_slots: int = DEFAULT_SLOTS
) -> None:
    """Add the claim and blob-by-digest routes, serving blobs from ``store``.

    ``burst_slots``: connections that send a claimed piece at a time
    (``origin.pieceburst``); 0 sends every connection's pieces side by side.
    """
    app[_CLAIMS_KEY] = PieceClaims()
    app[_STORE_KEY] = store
    app[_TURNSTILE_KEY] = PieceTurnstile(burst_slots) if burst_slots else None
    app.router.add_post(CLAIMS.route, _handle_claim, name="piece_claim")
    app.router.add_get(BLOBS.route, _handle_blob, name="piece_blob")


def _stored_blob(request: web.Request) -> tuple[Digest, Path, int]:
    """The route's blob: digest, file and size (DIGEST_INVALID, BLOB_UNKNOWN)."""
    store = request.app[_STORE_KEY]
    digest = stored_digest(request, store)
    path = store.path(digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # deleted since the check
        raise blob_gone() from None
    return digest, path, size


async def _handle_claim(request: web.Request) -> web.Response:
    try:
        digest, _path, size = _stored_blob(request)
    except RegistryError as exc:
        return exc.response()
    piece_length = _wanted_piece_length(request, digest, size)
    if piece_length is None:
        return web.Response(
            status=400,
            text=f"piece_length must be one of {sorted(accepted_piece_lengths(size))}",
        )
    claimed = request.app[_CLAIMS_KEY].claim(digest, size, piece_length)
    if claimed is None:
        return web.Response(status=204)
    return web.json_response(
        {"first": claimed.start, "end": claimed.stop, "piece_length": piece_length}
    )


def _wanted_piece_length(request: web.Request, digest: Digest, size: int) -> int | None:
    """The claim's piece length: the node's torrent's if it names an accepted one.

    None for a length no rule gives a blob of ``size`` bytes (or not a number).
    """
    named = request.query.get("piece_length")
    if named is None:
        return piece_length_for(size)
    try:
        length = int(named)
    except ValueError:
        return None
    if length not in accepted_piece_lengths(size):
        log.info("origin.claim_refused digest=%s piece_length=%s", digest, named)
        return None
    if length != piece_length_for(size):
        log.debug("origin.claim_old_piece_length digest=%s piece_length=%d", digest, length)
    return length


def piece_claims(app: web.Application) -> PieceClaims:
    """The app's claim book (its counters show how much went out over HTTP)."""
    return app[_CLAIMS_KEY]


def piece_turnstile(app: web.Application) -> PieceTurnstile | None:
    """The app's piece turnstile (None with ``burst_slots`` 0), for its counters."""
    return app[_TURNSTILE_KEY]


async def _handle_blob(request: web.Request) -> web.StreamResponse:
    try:
        digest, path, size = _stored_blob(request)
    except RegistryError as exc:
        return exc.response()
    if request.method == "GET":  # HEAD sends no body
        request.app[_CLAIMS_KEY].bytes_requested += _requested_length(request, size)
    turnstile = request.app[_TURNSTILE_KEY]
    if turnstile is None:
        return stored_file_response(path, digest)
    # A turn per piece of the current rule; an old torrent's 64 KiB pieces go two a turn.
    return PieceBurstResponse(path, digest, turnstile, piece_length_for(size))


def _requested_length(request: web.Request, size: int) -> int:
    """Bytes a GET asks for (after Range); 0 for a malformed Range, which gets a 416."""
    try:
        wanted = request.http_range
    except ValueError:
        return 0
    if wanted.start is not None and wanted.start < 0:  # "bytes=-N": the last N bytes
        return min(size, -wanted.start)
    start = wanted.start or 0
    stop = size if wanted.stop is None else min(wanted.stop, size)
    return max(0, stop - start)
