"""A streaming reader's pieces get deadlines only once its prefix has stalled.

Deadlines for every waiting reader at once made a herd of agents fetch in file
order (all nodes after the same few pieces) and pull slower than rarest first;
so ``Download.steer_if_starved`` sets them only for a reader whose next piece
has not arrived within ``_STEER_AFTER_SECONDS`` of the prefix last growing.
The engine asks it between alert batches; here the test asks it, on a clock
it moves itself, with a control that records the deadlines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from krill.digests import Digest
from krill.swarm.download import _STEER_AFTER_SECONDS, Download
from tests.clocks import ManualClock
from tests.polling import until

PIECE = 128 * 1024
PIECES = 40
WINDOW = 16


class RecordingControl:
    """``DownloadControl`` that keeps every deadline it was asked to set."""

    def __init__(self) -> None:
        self.deadlines: list[tuple[int, int]] = []

    def set_deadlines(self, deadlines: list[tuple[int, int]]) -> bool:
        self.deadlines.extend(deadlines)
        return True

    def cancelled(self, download: Download) -> None:
        pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def control() -> RecordingControl:
    return RecordingControl()


@pytest.fixture
async def download(tmp_path: Path, clock: ManualClock, control: RecordingControl) -> Download:
    return Download(
        Digest.parse("sha256:" + "ab" * 32),
        PIECES * PIECE,
        PIECE,
        tmp_path / "partial",
        clock=clock,
        stream_window=WINDOW,
        control=control,
    )


async def _reader(download: Download, offset: int) -> asyncio.Task[int]:
    """A reader waiting at ``offset``, once it is inside ``wait_available``."""
    task = asyncio.create_task(download.wait_available(offset))
    await until(lambda: download.has_readers, "the reader waits")
    return task


def _arrive(download: Download, clock: ManualClock, pieces: range) -> None:
    """Pieces verified, then a flush begun and completed: they are in the prefix."""
    for index in pieces:
        download.piece_verified(index)
    download.flush_started(clock.monotonic())
    download.flushed()


async def test_a_reader_whose_next_piece_stalls_gets_deadlines_after_the_wait(
    download: Download, clock: ManualClock, control: RecordingControl
) -> None:
    reader = await _reader(download, 0)
    download.steer_if_starved(clock.monotonic())
    assert control.deadlines == []  # waiting, but not yet for long
    clock.advance(_STEER_AFTER_SECONDS)
    download.steer_if_starved(clock.monotonic())
    assert [index for index, _ in control.deadlines] == list(range(WINDOW))
    assert control.deadlines[0] == (0, 0)  # the piece the reader waits on: soonest
    download.cancel()
    with pytest.raises(Exception, match="cancelled"):
        await reader


async def test_a_prefix_that_keeps_growing_gets_no_deadlines(
    download: Download, clock: ManualClock, control: RecordingControl
) -> None:
    async def stream() -> int:  # a client reading on as the prefix grows
        offset = 0
        while offset < 8 * PIECE:
            offset = await download.wait_available(offset)
        return offset

    reader = asyncio.create_task(stream())
    for first in range(0, 8, 2):  # two pieces in every 0.6 stall-waits: never a stall
        await until(lambda: download.has_readers, "the reader waits")
        clock.advance(_STEER_AFTER_SECONDS * 0.6)
        download.steer_if_starved(clock.monotonic())
        _arrive(download, clock, range(first, first + 2))
        download.steer_if_starved(clock.monotonic())
    assert await reader == 8 * PIECE
    assert control.deadlines == []
    download.cancel()


async def test_a_next_piece_only_a_flush_away_is_not_a_stall(
    download: Download, clock: ManualClock, control: RecordingControl
) -> None:
    reader = await _reader(download, 0)
    download.piece_verified(0)  # verified, not yet flushed into the file
    clock.advance(_STEER_AFTER_SECONDS * 3)
    download.steer_if_starved(clock.monotonic())
    assert control.deadlines == []
    download.cancel()
    with pytest.raises(Exception, match="cancelled"):
        await reader


async def test_without_a_reader_nothing_is_steered(
    download: Download, clock: ManualClock, control: RecordingControl
) -> None:
    clock.advance(_STEER_AFTER_SECONDS * 3)
    download.steer_if_starved(clock.monotonic())
    assert control.deadlines == []


async def test_deadlines_start_at_the_prefix_end_after_it_stalls_mid_blob(
    download: Download, clock: ManualClock, control: RecordingControl
) -> None:
    _arrive(download, clock, range(10))
    reader = await _reader(download, 10 * PIECE)
    clock.advance(_STEER_AFTER_SECONDS)
    download.steer_if_starved(clock.monotonic())
    assert [index for index, _ in control.deadlines] == list(range(10, 10 + WINDOW))
    download.steer_if_starved(clock.monotonic())  # asked again while still stalled
    assert len(control.deadlines) == WINDOW  # pieces already given deadlines are not again
    download.cancel()
    with pytest.raises(Exception, match="cancelled"):
        await reader
