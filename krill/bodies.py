"""Reading a whole HTTP body into memory, bounded.

Only small documents (manifests, JSON answers) are read whole; blobs are
always streamed. ``StreamReader.read(n)`` returns what has arrived so far,
not ``n`` bytes, so a body that arrives in several chunks must be read in a
loop: this is that loop, with the size limit checked before and during it.
"""

from __future__ import annotations

import aiohttp


class BodyTooLarge(ValueError):
    """The body is (or declares itself) larger than the caller's limit."""


async def read_limited(
    stream: aiohttp.StreamReader, limit: int, what: str, declared: int | None = None
) -> bytes:
    """The whole body; raise BodyTooLarge once it passes ``limit`` bytes.

    ``declared`` is the Content-Length, if any: an over-long declaration is
    refused before anything is read.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"{what} is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"{what} exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
