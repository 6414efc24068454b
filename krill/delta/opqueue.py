"""Running a delta's ops: decoded in worker threads, written in op order, memory bounded.

Content ops decode in a pool while the writer feeds earlier output to the
recompressor; the queue between them holds at most IN_FLIGHT_BYTES (plus one
op) of base ranges, payloads and decoded output, counted *before* an op is
decoded or its base range read, whatever sizes a crafted delta claims. COPY
ops hold nothing: their base bytes are read 1 MiB at a time when written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from krill.delta import format as fmt
from krill.delta.metastream import decode_meta
from krill.delta.opdecode import (
    STREAM_OP_BYTES,
    base_short,
    decode_content,
    read_base,
    stream_content,
)
from krill.delta.ranges import CHUNK, Range, iter_range
from krill.delta.zstdlib import zstd

__all__ = ["IN_FLIGHT_BYTES", "run_ops"]

IN_FLIGHT_BYTES = 32 << 20

Write = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class _Stream:
    """A large content op, decoded by the writer when its turn comes."""

    op: fmt.Op


# What waits in the queue: decoded bytes, a worker's future, a base range to copy, or
# a large op to stream.
_Item = bytes | Future[bytes] | Range | _Stream


def run_ops(
    reader: fmt.OpReader,
    base: BinaryIO,
    meta: zstd.ZstdDecompressor,
    write: Write,
    workers: int,
) -> None:
    """Decode ops until OP_END; content ops run in threads, output is written in op order."""
    queue: deque[tuple[_Item, int]] = deque()
    in_flight = 0
    ahead: list[Future[bytes]] = []  # the one large diff op decoding ahead, if any

    def drain_one() -> None:
        nonlocal in_flight
        item, size = queue.popleft()
        in_flight -= size
        if ahead and item is ahead[0]:
            ahead.clear()
        _write_item(item, base, write)

    def start(op: fmt.Op, pool: ThreadPoolExecutor) -> _Item:
        if op.kind == fmt.OP_META:
            return decode_meta(meta, op)
        if op.kind == fmt.OP_COPY:
            return Range(op.base_off, op.out_len)
        if op.out_len > STREAM_OP_BYTES:
            return _Stream(op)  # decoded alone, by the writer: bounded memory
        return pool.submit(decode_content, op, read_base(base, op.base_off, op.base_len))

    def start_ahead(op: fmt.Op, pool: ThreadPoolExecutor) -> Future[bytes]:
        """A large diff op decoded in a worker while the writer drains what is before it
        (decoded by the writer, it left the recompressing workers idle for its ~0.3 s)."""
        while ahead:  # one at a time: its memory is outside the budget
            drain_one()
        future = pool.submit(decode_content, op, read_base(base, op.base_off, op.base_len))
        ahead.append(future)
        return future

    with ThreadPoolExecutor(workers, thread_name_prefix="krill-delta-apply") as pool:
        try:
            while (op := reader.next()).kind != fmt.OP_END:
                if _decoded_ahead(op):
                    queue.append((start_ahead(op, pool), 0))
                    continue
                cost = _queued_bytes(op)
                # Make room *before* decoding or reading the base range, so what is held stays
                # under the budget plus one op, whatever the ops claim.
                while queue and (in_flight + cost > IN_FLIGHT_BYTES or len(queue) > 4 * workers):
                    drain_one()
                queue.append((start(op, pool), cost))
                in_flight += cost
            while queue:
                drain_one()
        finally:
            for item, _ in queue:
                if isinstance(item, Future):
                    item.cancel()


def _decoded_ahead(op: fmt.Op) -> bool:
    """A large op decoded whole anyway (diffs: base, diff and output at once), so a worker
    can do it ahead; large zstd ops still stream through the writer."""
    return op.out_len > STREAM_OP_BYTES and op.kind in (fmt.OP_BSDIFF, fmt.OP_HDIFF, fmt.OP_ELF)


def _write_item(item: _Item, base: BinaryIO, write: Write) -> None:
    if isinstance(item, Range):
        for chunk in iter_range(base, item, base_short):
            write(chunk)
    elif isinstance(item, _Stream):
        stream_content(item.op, base, write)
    elif isinstance(item, Future):
        data = item.result()
        for at in range(0, len(data), CHUNK):  # in pieces, as the writer's own decoding did
            write(data[at : at + CHUNK])
    else:
        write(item)


def _queued_bytes(op: fmt.Op) -> int:
    """Memory an op holds while it waits in the queue (counted against IN_FLIGHT_BYTES).

    META: its decoded bytes. Content ops (in a worker, or streamed later by the
    writer): base range + output, plus the payload read from the delta. COPY
    holds nothing; it is read from the base in 1 MiB chunks when written.
    """
    if op.kind == fmt.OP_COPY:
        return 0
    payload = sum(len(block) for block in op.payload)
    if op.kind == fmt.OP_META:
        return op.out_len + payload
    return op.out_len + op.base_len + payload
