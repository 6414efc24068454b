"""HTTP ``Range`` headers for blob GETs: one ``bytes=`` range, validated strictly.

Registries and containerd only ever ask for a single range (resuming a
download), so multi-range requests are refused rather than answered with a
multipart body no client here would parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from krill.registry_errors import RegistryError

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The requested range within a blob of ``size`` bytes; None for the whole blob.

    Raises RegistryError RANGE_INVALID (416) for a malformed or unsatisfiable range.
    """
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise _invalid(f"malformed Range {header[:80]!r}; expected 'bytes=START-[END]'", size)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        count = int(last)
        if count == 0:
            raise _invalid("a suffix range of 0 bytes selects nothing", size)
        return ByteRange(max(0, size - count), size)
    start = int(first)
    end = size if last == "" else int(last) + 1
    if last != "" and int(last) < start:
        raise _invalid(f"Range {header[:80]!r} ends before it starts", size)
    if start >= size:
        raise _invalid(f"Range starts at byte {start}, past the blob's {size} bytes", size)
    return ByteRange(start, min(end, size))


def _invalid(message: str, size: int) -> RegistryError:
    return RegistryError("RANGE_INVALID", message, headers={"Content-Range": f"bytes */{size}"})
