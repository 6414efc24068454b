"""Properties of the delta decoder (krill/delta: format.py, apply.py and the op decoders).

A delta comes from the origin, so it is as hostile as anything on the wire.
Whatever its bytes, the decoder either rebuilds exactly the target layer or
raises the codec's own errors (``DeltaFormatError``, or ``RecipeError`` for a
recipe this node cannot run), leaves nothing beside its output, and checks
every length against the header and the hard limits before reading or
allocating. Crafted deltas here are re-signed (trailer recomputed), so only
the codec's own checks can catch them. tests/test_delta_hostile_*.py hold the
hand-made cases; these generate them.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import DeltaFormatError, RecipeError, apply_delta
from krill.delta import format as fmt
from krill.delta.recipes import Recipe
from tests.delta_crafting import Pair, header_bytes, join, make_pair, resign

PROPERTY = settings(
    max_examples=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_runs = itertools.count()

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12,
)
FIELDS = [("base", "digest"), ("base", "size"), ("base", "diff_id"), ("base", "tar_size"),
          ("target", "digest"), ("target", "size"), ("target", "diff_id"),
          ("target", "tar_size"), ("meta", "prefix_len"), ("meta", "prefix_sha256"),
          ("meta", "window_log"), ("meta", "small_file_limit"), ("recipe", "kind"),
          ("recipe", "level"), (None, "format"), (None, "recipe"), (None, "meta"),
          (None, "stats")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


def rebuilt_or_refused(tmp: Path, pair: Pair, delta_bytes: bytes) -> bool:
    """The contract: the exact target, or the codec's error with nothing left behind."""
    run = tmp / f"run{next(_runs)}"
    out_dir = run / "out"
    out_dir.mkdir(parents=True)
    delta = run / "crafted.krd"
    delta.write_bytes(delta_bytes)
    try:
        result = apply_delta(pair.base, delta, out_dir / "layer", workers=1)
    except (DeltaFormatError, RecipeError):
        assert list(out_dir.iterdir()) == [], "nothing may be left behind"
        return False
    finally:
        assert sorted(run.iterdir()) == [delta, out_dir], "nothing is written beside out"
    assert result.path == out_dir / "layer"
    assert result.path.read_bytes() == pair.target
    assert list(out_dir.iterdir()) == [result.path]
    return True


# --- the header ----------------------------------------------------------------------------


def header_or_refused(data: bytes) -> fmt.DeltaHeader | None:
    try:
        return fmt.read_header(io.BytesIO(data))
    except DeltaFormatError:
        return None


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_are_a_header_or_a_format_error(data: bytes) -> None:
    header_or_refused(data)
    header_or_refused(fmt.MAGIC + data)


@PROPERTY
@given(json_values, st.sampled_from([*sorted(fmt.FORMAT_NAMES), 0, fmt.VERSION + 1, 65535]))
def test_any_json_header_is_a_header_or_a_format_error(doc: Any, version: int) -> None:
    header_or_refused(header_bytes(json.dumps(doc), version))


@PROPERTY
@given(st.sampled_from(FIELDS), json_values)
def test_a_header_field_replaced_is_read_or_refused(
    pair: Pair, field: tuple[str | None, str], value: Any
) -> None:
    header, _ = pair.parts()
    section, name = field
    (header if section is None else header[section])[name] = value
    read = header_or_refused(header_bytes(json.dumps(header)))
    if read is not None:  # whatever was read is within the format's bounds
        for layer in (read.base, read.target):
            assert 0 <= layer.size <= fmt.MAX_TAR_BYTES and 0 <= layer.tar_size <= fmt.MAX_TAR_BYTES
        assert 0 <= read.meta.prefix_len <= fmt.MAX_META_PREFIX_BYTES
        try:
            Recipe.from_json(read.recipe)
        except RecipeError:
            pass


@PROPERTY
@given(st.sampled_from(FIELDS), json_values)
def test_a_resigned_delta_with_a_header_field_replaced_rebuilds_or_fails_cleanly(
    tmp_path: Path, pair: Pair, field: tuple[str | None, str], value: Any
) -> None:
    header, ops = pair.parts()
    section, name = field
    (header if section is None else header[section])[name] = value
    rebuilt_or_refused(tmp_path, pair, join(header, ops))


# --- the ops -------------------------------------------------------------------------------

OP_LAYOUTS = fmt.OP_FIELDS


@st.composite
def op_streams(draw: st.DrawFn) -> bytes:
    """Ops of any kind whose numbers are small, huge or at the format's limits."""
    numbers = st.sampled_from([0, 1, 7, 8, 100, 4096, fmt.MAX_PIECE_BYTES,
                               fmt.MAX_PIECE_BYTES + 1, fmt.MAX_DIFF_OP_BYTES + 1, 2**31])
    out = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from([*OP_LAYOUTS, fmt.OP_END, 7, 255]))
        out.append(kind)
        layout = OP_LAYOUTS.get(kind)
        if layout is not None:
            limit = 2**64 - 1 if layout.format[1] == "Q" else 2**32 - 1
            fields = [min(draw(numbers), limit) for _ in layout.format[1:]]
            out += layout.pack(*fields)
            out += draw(st.binary(max_size=64))
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(op_streams() | st.binary(max_size=200), st.integers(0, 10_000),
       st.integers(0, 2**40))
def test_op_reader_checks_every_length_before_reading(
    stream: bytes, base_size: int, target_size: int
) -> None:
    """Ops come out within the base, the target's declared size and the per-op limits."""
    f = io.BytesIO(stream + bytes(32))
    reader = fmt.OpReader(f, base_size=base_size, target_size=target_size,
                          delta_size=len(stream) + 32)
    rebuilt = 0
    try:
        while (op := reader.next()).kind != fmt.OP_END:
            rebuilt += op.out_len
            assert op.base_off + op.base_len <= base_size
            assert rebuilt <= target_size
            assert f.tell() <= len(stream)  # never read into the trailer
            if op.kind != fmt.OP_COPY:
                assert op.out_len <= max(fmt.MAX_PIECE_BYTES, fmt.MAX_META_OP_BYTES)
    except DeltaFormatError:
        return
    assert reader.remaining_out == target_size - rebuilt


def op_spans(ops: bytes) -> list[tuple[int, int, struct.Struct | None]]:
    """Where each op of a valid stream starts, where its numbers end, and their layout."""
    spans = []
    f = io.BytesIO(ops + bytes(32))
    reader = fmt.OpReader(f, base_size=2**50, target_size=2**50, delta_size=len(ops) + 32)
    while True:
        start = f.tell()
        layout = OP_LAYOUTS.get(ops[start])
        if reader.next().kind == fmt.OP_END:
            return spans
        spans.append((start, start + 1 + (layout.size if layout else 0), layout))


@PROPERTY
@given(st.data())
def test_a_resigned_delta_with_an_op_number_changed_rebuilds_or_fails_cleanly(
    tmp_path: Path, pair: Pair, data: st.DataObject
) -> None:
    header, ops = pair.parts()
    start, numbers_end, layout = data.draw(st.sampled_from(op_spans(ops)))
    assert layout is not None
    fields = list(layout.unpack(ops[start + 1 : numbers_end]))
    which = data.draw(st.integers(0, len(fields) - 1))
    limit = 2**64 - 1 if layout.format[1 + which] == "Q" else 2**32 - 1
    fields[which] = data.draw(st.sampled_from([0, 1, fields[which] - 1, fields[which] + 1,
                                               fields[which] * 2, limit]))
    fields[which] = min(max(fields[which], 0), limit)
    crafted = ops[: start + 1] + layout.pack(*fields) + ops[numbers_end:]
    rebuilt_or_refused(tmp_path, pair, join(header, crafted))


@PROPERTY
@given(st.data())
def test_a_resigned_delta_with_ops_dropped_repeated_or_swapped_fails_cleanly(
    tmp_path: Path, pair: Pair, data: st.DataObject
) -> None:
    header, ops = pair.parts()
    spans = op_spans(ops)
    bounds = [start for start, _, _ in spans] + [len(ops) - 1]  # the last byte is OP_END
    pieces = [ops[a:b] for a, b in itertools.pairwise(bounds)]
    edited = data.draw(st.permutations(pieces)) if len(pieces) > 1 else pieces
    edit = data.draw(st.sampled_from(["drop", "repeat", "keep"]))
    which = data.draw(st.integers(0, len(edited) - 1))
    if edit == "drop":
        edited = edited[:which] + edited[which + 1 :]
    elif edit == "repeat":
        edited = edited[: which + 1] + edited[which:]
    crafted = b"".join(edited) + bytes([fmt.OP_END])
    rebuilt = rebuilt_or_refused(tmp_path, pair, join(header, crafted))
    if rebuilt:  # only the original order rebuilds the target's digests
        assert crafted == ops


@PROPERTY
@given(st.integers(0, 10**9), st.binary(max_size=8))
def test_a_resigned_delta_cut_or_padded_fails_cleanly(
    tmp_path: Path, pair: Pair, cut: int, padding: bytes
) -> None:
    body = pair.delta.read_bytes()[:-32]
    cut_at = cut % len(body)
    assert not rebuilt_or_refused(tmp_path, pair, resign(body[:cut_at] + padding + bytes(32)))


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_as_a_delta_fail_cleanly(tmp_path: Path, pair: Pair, data: bytes) -> None:
    assert not rebuilt_or_refused(tmp_path, pair, data)
    assert not rebuilt_or_refused(tmp_path, pair, resign(data + bytes(32)))
