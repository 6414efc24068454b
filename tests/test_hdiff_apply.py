"""Our HDIFF13 applier (krill/_native/hdiffapply.c, ``krill.delta.hdiff.patch``) against
HDiffPatch's own (the ``hdiffpatch`` binding, which origins still use to make diffs): the
same bytes for every diff it makes, and the same verdict, accept or refuse, on corrupted
ones. Nodes then never load the binding (~25 ms of CPU with the GIL held)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import hdiffpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import hdiff


def _edited(rng: random.Random, old: bytes, edits: int) -> bytes:
    """``old`` with inserted, deleted, flipped and copied stretches, as a rebuilt file is."""
    new = bytearray(old)
    for _ in range(edits):
        op, at = rng.randrange(4), rng.randrange(len(new) + 1)
        if op == 0 and new:
            new[min(at, len(new) - 1)] ^= 1 + rng.randrange(255)
        elif op == 1:
            new[at:at] = rng.randbytes(rng.randrange(60))
        elif op == 2:
            del new[at : at + rng.randrange(200)]
        else:
            start = rng.randrange(len(old) + 1)
            new[at:at] = old[start : start + rng.randrange(600)]
    return bytes(new)


@st.composite
def file_pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    size = draw(st.sampled_from([0, 1, 7, 300, 5000, 70_000]))
    alphabet = draw(st.sampled_from([2, 16, 256]))  # low entropy gives long covers and runs
    old = bytes(rng.randrange(alphabet) for _ in range(size))
    return old, _edited(rng, old, draw(st.integers(0, 30)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_pairs())
def test_every_diff_hdiffpatch_makes_rebuilds_the_new_file(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    raw = hdiff.diff(old, new)
    assert hdiff.patch(old, raw, len(new)) == new == hdiffpatch.apply(old, raw)


def _reference(old: bytes, raw: bytes, size: int) -> bytes | None:
    try:
        out: bytes = hdiffpatch.apply(old, raw)
    except Exception:  # the binding's errors have no common base class we can name
        return None
    return out if len(out) == size else None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_pairs(), st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1,
                              max_size=4))
def test_a_corrupted_diff_gets_hdiffpatchs_verdict(
    pair: tuple[bytes, bytes], flips: list[tuple[int, int]]
) -> None:
    """Any byte of the sections changed: refused by both, or the same bytes from both."""
    old, new = pair
    raw = bytearray(hdiff.diff(old, new))
    start = hdiff.parse_header(bytes(raw)).header_len
    if len(raw) == start:
        return
    for where, value in flips:
        raw[start + where % (len(raw) - start)] = value
    try:
        ours: bytes | None = hdiff.patch(old, bytes(raw), len(new))
    except hdiff.HDiffError:
        ours = None
    assert ours == _reference(old, bytes(raw), len(new))


def test_sections_that_do_not_add_up_are_refused() -> None:
    old = bytes(range(256)) * 40
    new = old[:5000] + b"changed" + old[5000:]
    raw = hdiff.diff(old, new)
    for bad in (raw[:-1], raw + b"\0"):
        with pytest.raises(hdiff.HDiffError):
            hdiff.patch(old, bad, len(new))
    with pytest.raises(hdiff.HDiffError, match="other sizes"):
        hdiff.patch(old[:-1], raw, len(new))


def test_a_node_applying_binary_diffs_never_loads_the_binding(tmp_path: Path) -> None:
    """The point of our applier: ``hdiffpatch`` stays out of a node's process."""
    rng = random.Random(3)
    old = rng.randbytes(200_000)
    new = _edited(rng, old, 40)
    raw = tmp_path / "raw"
    raw.write_bytes(hdiff.diff(old, new))
    (tmp_path / "old").write_bytes(old)
    script = (
        "import sys; from pathlib import Path; from krill.delta import hdiff\n"
        f"d = Path({str(tmp_path)!r})\n"
        f"out = hdiff.patch((d / 'old').read_bytes(), (d / 'raw').read_bytes(), {len(new)})\n"
        "print(len(out), 'hdiffpatch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [str(len(new)), "False"]
