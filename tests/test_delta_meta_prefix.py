"""The applier scans only the base headers its meta prefix needs (finding 17).

A crafted delta's ``prefix_len`` decides how much of the base is scanned, so
the lazy scan must stop at its cap, and give the same bytes as a full scan
wherever the cap falls, on good tars and on tars that turn to garbage.
"""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krill.delta.tarscan import read_meta_prefix, scan, scan_meta_prefix
from tests.test_delta_support import Entry, build_tar


class _ReadTracker(io.BytesIO):
    """A file over bytes that remembers the furthest offset read."""

    furthest = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return data


def _many_files_tar() -> bytes:
    rng = random.Random(5)
    files = {
        f"d/f{i:04d}": Entry("file", rng.randbytes(rng.choice([100, 6000]))) for i in range(400)
    }
    files["d/\u00e9t\u00e9"] = Entry("file", b"non-ascii name")
    return build_tar(files)


_MANY_FILES_TAR = _many_files_tar()


def _full_scan_prefix(tar: bytes, size: int, limit: int, cap: int) -> bytes:
    return read_meta_prefix(io.BytesIO(tar), scan(io.BytesIO(tar), size), limit, cap)


@pytest.mark.parametrize("cap", [0, 1, 511, 4096, 70_000, 1 << 30])
def test_lazy_meta_prefix_equals_the_full_scan(cap: int) -> None:
    tar = _MANY_FILES_TAR
    full = _full_scan_prefix(tar, len(tar), 4096, cap)
    assert scan_meta_prefix(io.BytesIO(tar), len(tar), 4096, cap) == full
    garbage_tail = tar[: len(tar) // 2] + b"\x01" * (len(tar) - len(tar) // 2)
    full = _full_scan_prefix(garbage_tail, len(tar), 4096, cap)
    assert scan_meta_prefix(io.BytesIO(garbage_tail), len(tar), 4096, cap) == full


def test_lazy_meta_prefix_stops_reading_at_its_cap() -> None:
    tar = _MANY_FILES_TAR
    f = _ReadTracker(tar)
    prefix = scan_meta_prefix(f, len(tar), 4096, 20_000)
    assert len(prefix) == 20_000
    assert f.furthest < len(tar) // 4, (f.furthest, len(tar))


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(0, 400_000), limit=st.sampled_from([0, 100, 4096, 1 << 20]))
def test_lazy_meta_prefix_equals_the_full_scan_anywhere(cap: int, limit: int) -> None:
    tar = _MANY_FILES_TAR
    full = _full_scan_prefix(tar, len(tar), limit, cap)
    assert scan_meta_prefix(io.BytesIO(tar), len(tar), limit, cap) == full
