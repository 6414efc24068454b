"""A layer rebuilt from a delta, served while it is being rebuilt: only verified bytes.

A rebuild is seconds of CPU (issue 15: 8.5 s for a 68 MB gzip layer, mostly
recompression), and containerd used to wait for all of it before the first
byte. The codec writes the rebuilt blob front to back, so the agent can serve
it as it grows, the way it serves a swarm download: a piece counts as
available only once its SHA-1 matches the target blob's metainfo (the torrent
the origin makes for every blob, the one the swarm uses), read back from the
file; the last byte is held back until the codec has checked the whole digest
and the store has adopted the file (hashing it once more). A piece that fails
its hash fails the transfer: nothing from it on is ever served, and a client
streaming it has its connection aborted, so it never holds a whole wrong body.

The codec (``krill.delta.rebuild_layer``, shared with ``krill delta apply``)
has no progress callback: it writes ``out`` through ``atomic_output``, a temp
file beside it named ``.<name>.*.krill-tmp``. The verifier finds that file,
and looks at its size every ``POLL_INTERVAL`` on the injected clock, or at once
when the rebuild ends. Bytes below a file's size are in it (a ``write`` raises
the size after copying), and each piece is hashed from the file itself, so a
piece read too early only fails when the file is already past its end: then it
is wrong, not late.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from krill import bencode
from krill.agent.sources import GrowingFile, TransferFailed
from krill.clock import SYSTEM_CLOCK, Clock
from krill.clock import timeout as clock_timeout
from krill.delta import RebuildResult
from krill.digests import Digest
from krill.metainfo import check_metainfo

__all__ = [
    "POLL_INTERVAL",
    "PieceHashes",
    "PieceMismatch",
    "RebuildFailed",
    "RebuildTransfer",
    "StreamCancelled",
    "failure_cause",
    "release_after",
]

log = logging.getLogger(__name__)

# How often the verifier looks at the growing file. The rebuild makes 20-150 MB/s of
# blob, so 50 ms is 1-8 MB: about one piece of a large layer (1-4 MiB pieces).
POLL_INTERVAL = 0.05


class PieceMismatch(TransferFailed):
    """A rebuilt piece did not hash to the target's metainfo: the rebuild is wrong."""


class StreamCancelled(TransferFailed):
    """The stream was given up on (a stalled client, the agent stopping)."""


@dataclass(frozen=True, slots=True)
class PieceHashes:
    """The target blob's piece length and SHA-1s, from its (checked) metainfo."""

    length: int
    piece_length: int
    hashes: bytes

    @classmethod
    def from_metainfo(cls, metainfo: bytes, digest: Digest) -> PieceHashes:
        """Raises MetainfoError unless it is the torrent every origin makes for ``digest``."""
        check_metainfo(metainfo, digest)
        info = bencode.decode(metainfo)[b"info"]
        return cls(info[b"length"], info[b"piece length"], info[b"pieces"])

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.piece_length
        return start, min(start + self.piece_length, self.length)

    def matches(self, index: int, data: bytes) -> bool:
        return hashlib.sha1(data).digest() == self.hashes[20 * index : 20 * index + 20]


# Turns the codec's finished output into the cached blob (diff_id, adoption into the
# store, the cache index); returns the blob's path in the store. Raises to fail.
Commit = Callable[[RebuildResult], Awaitable[Path]]


class RebuildTransfer(GrowingFile):
    """A rebuild in progress as a ``Transfer``: ``available`` counts verified pieces."""

    def __init__(
        self,
        digest: Digest,
        pieces: PieceHashes,
        rebuild: asyncio.Future[RebuildResult],
        out: Path,
        commit: Commit,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(pieces.length)
        self.digest = digest
        self._pieces = pieces
        self._rebuild = rebuild
        self._out = out  # the codec's output path; its temp file sits beside it
        self._commit = commit
        self._clock = clock
        self._verified = 0
        self._partial: Path | None = None
        self._task = asyncio.create_task(self._run(), name=f"rebuild-stream-{digest.hex[:12]}")

    @property
    def partial_path(self) -> Path:
        """The file being written (an fd on it stays valid when it is renamed and adopted).

        Once the codec has ended its temp file has become ``out``; once committed that
        is gone too, and a reader waits for ``wait_done``'s path in the store.
        """
        if self._partial is None or self._rebuild.done():
            return self._out
        return self._partial

    @property
    def committed(self) -> bool:
        """The whole digest checked and the blob in the store: every byte is servable."""
        done = self._done
        return done.done() and not done.cancelled() and done.exception() is None

    @property
    def rebuild(self) -> asyncio.Future[RebuildResult]:
        """The codec's run in its worker thread (the work directory's owner waits for it)."""
        return self._rebuild

    def cancel(self) -> None:
        """Stop serving it; the codec's thread runs to its end (a thread cannot be stopped)."""
        self._task.cancel()

    # ---- the verifier ----------------------------------------------------------

    async def _run(self) -> None:
        fd = -1
        try:
            fd = await self._open_output()
            result = await self._verify_while_rebuilding(fd)
            path = await self._commit(result)
            self.available = self.size  # the whole digest checked, the file in the store
            self._done.set_result(path)
        except asyncio.CancelledError:
            self._fail(StreamCancelled(f"rebuild stream of {self.digest} cancelled"))
            raise
        except TransferFailed as exc:
            self._fail(exc)
        except Exception as exc:  # the codec's or the commit's error: the caller classifies it
            self._fail(RebuildFailed(exc))
        finally:
            if fd >= 0:
                os.close(fd)
            self._changed.set()

    async def _open_output(self) -> int:
        """An fd on the codec's temp file once it exists (or its output, if already done)."""
        while True:
            finished = self._rebuild.done()
            if finished:
                self._rebuild.result()  # raises the codec's error
            for path in [*self._out.parent.glob(f".{self._out.name}.*.krill-tmp"), self._out]:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY)
                    self._partial = path
                    return fd
            if finished:
                raise TransferFailed(f"the rebuild of {self.digest} left no output file")
            await self._wait_for_progress()

    async def _verify_while_rebuilding(self, fd: int) -> RebuildResult:
        while True:
            finished = self._rebuild.done()  # read before the size: all its bytes are in
            written = (await asyncio.to_thread(os.fstat, fd)).st_size
            await self._verify_pieces(fd, min(written, self.size))
            if finished:
                result = self._rebuild.result()
                if self._verified != self.size:
                    raise PieceMismatch(
                        f"rebuilt {self.digest} is {written} bytes, the metainfo says {self.size}"
                    )
                return result
            await self._wait_for_progress()

    async def _verify_pieces(self, fd: int, written: int) -> None:
        """Check every whole piece below ``written`` not yet checked; raise on a bad one."""
        while self._verified < self.size:
            index = self._verified // self._pieces.piece_length
            start, end = self._pieces.span(index)
            if end > written:
                return
            data = await asyncio.to_thread(os.pread, fd, end - start, start)
            if not self._pieces.matches(index, data):
                raise PieceMismatch(
                    f"rebuilt piece {index} of {self.digest} (bytes {start}-{end}) does not "
                    "match the target's metainfo; none of it was served"
                )
            self._publish(end)

    async def _wait_for_progress(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with clock_timeout(self._clock, POLL_INTERVAL):
                await asyncio.wait({self._rebuild})

    def _publish(self, verified: int) -> None:
        """``verified`` bytes checked: all but the last servable until the commit."""
        self._verified = verified
        self.available = min(verified, self.size - 1)
        self._changed.set()


class RebuildFailed(TransferFailed):
    """The codec or the commit raised ``cause`` (classified by the rebuilder)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"rebuild failed: {cause}")
        self.cause = cause


def failure_cause(exc: TransferFailed) -> BaseException:
    """The codec's or the commit's own error behind a failed rebuild stream."""
    return exc.cause if isinstance(exc, RebuildFailed) else exc


async def release_after(
    rebuild: asyncio.Future[RebuildResult], work: Path, pins: contextlib.ExitStack
) -> None:
    """Once the codec's thread has ended (a stream may fail long before it does): unpin
    base and delta, and remove the work directory. Call it when the output is no
    longer needed (committed, or given up on)."""
    await asyncio.wait({rebuild})
    pins.close()
    await asyncio.to_thread(shutil.rmtree, work, True)
