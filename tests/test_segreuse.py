"""Reused tokens (krill/delta/segreuse.py, krill/_native/goreuse.c).

Where a target layer repeats its base, a node takes Go's matcher decisions from
the base's stream instead of searching. The bytes must stay Go's own (the
oracle, tests/goflate): spans found by comparing two real Go streams rebuild
the target exactly; a span whose tokens are not the target's is dropped by the
origin's proof, and a node that still gets one never publishes the layer; a
node whose base is another blob of the same tar searches as before.
"""

from __future__ import annotations

import array
import gzip
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import apply_delta, create_delta, read_delta_header
from krill.delta.detect import detect_recipe
from krill.delta.recipes import RecipeError
from krill.delta.restarts import Segment, parse_restarts
from krill.delta.segreuse import (
    MIN_SPAN,
    BaseTokens,
    ReuseError,
    ReuseSpan,
    find_spans,
    parse_reuse,
    prove_spans,
    segment_reuse,
)
from krill.digests import sha256_file
from tests.delta_crafting import Pair, join
from tests.goflate.oracle import GoOracle
from tests.test_gogzip import layer_like, python_tar, text

_goflate = pytest.importorskip("krill._goflate", reason="the C extension is not built")


def expand(tokens: bytes, history: bytes = b"") -> bytes:
    """What a token list decompresses to (after ``history``): the test's own inflater."""
    out = bytearray(history)
    for t in array.array("I", tokens):
        if t & 0x80000000:
            raise AssertionError("a stored block has no tokens")
        if t & 0x40000000:
            length, dist = ((t >> 22) & 0xFF) + 3, (t & 0x3FFFFF) + 1
            for _ in range(length):
                out.append(out[-dist])
        else:
            out.append(t)
    return bytes(out[len(history) :])


def token_starts(tokens: bytes) -> list[int]:
    """The output offset each token starts at."""
    starts, at = [], 0
    for t in array.array("I", tokens):
        starts.append(at)
        at += (t & 0xFFFF) if t & 0x80000000 else ((t >> 22 & 0xFF) + 3 if t & 0x40000000 else 1)
    return starts


def edited(data: bytes, rng: random.Random, edits: int) -> bytes:
    """``data`` with a few short stretches replaced, and whole 512-byte blocks inserted or
    removed (as a tar's members move when one before them changes size)."""
    out = bytearray(data)
    for _ in range(edits):
        kind = rng.choice(["replace", "insert", "delete"])
        n = rng.choice([1, 7, 300, 5000]) if kind == "replace" else 512 * rng.randint(1, 8)
        at = rng.randrange(len(out)) if kind == "replace" else 512 * rng.randrange(len(out) // 512)
        if kind == "replace":
            out[at : at + n] = rng.randbytes(n)
        elif kind == "insert":
            out[at:at] = rng.randbytes(n)
        else:
            del out[at : at + n]
    return bytes(out)


# --- the token decoder -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=layer_like(), level=st.integers(1, 9))
def test_tokens_expand_to_the_streams_bytes(data: bytes, level: int) -> None:
    raw = zlib.compress(data, level)[2:-4]
    tokens, blocks, end_bit, size = _goflate.deflate_tokens(raw)
    assert size == len(data) and end_bit <= 8 * len(raw)
    if all(kind != 0 for _bit, _out, kind in blocks):  # stored blocks carry no tokens
        assert expand(tokens) == data
    for bit_off, out_off, kind in blocks:  # from any block on, with the history before it
        if kind == 0:
            continue
        part, _, _, _ = _goflate.deflate_tokens(raw, 0, bit_off, out_off, out_off + 1000)
        got = expand(part, data[:out_off])
        assert got[: min(1000, len(data) - out_off)] == data[out_off : out_off + 1000][: len(got)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    level=st.integers(4, 9),
    picks=st.lists(st.integers(0, 10**6), max_size=8),
)
def test_decoding_from_a_token_inside_a_block_gives_the_tokens_from_there(
    data: bytes, level: int, picks: list[int]
) -> None:
    """What a node does: the block's tables, then straight to the span's first token."""
    raw = zlib.compress(data, level)[2:-4]
    tokens, _, _, _ = _goflate.deflate_tokens(raw)
    starts = token_starts(tokens)
    if not starts:
        return
    wanted = sorted({starts[p % len(starts)] for p in picks})
    for q, (block_bit, token_bit) in zip(
        wanted, _goflate.deflate_token_bits(raw, 0, wanted), strict=True
    ):
        if block_bit < 0:  # inside a stored block: no token starts there
            continue
        part, _, _, _ = _goflate.deflate_tokens(raw, 0, block_bit, q, q + 2000, token_bit)
        run = array.array("I", part)
        stored = [i for i, t in enumerate(run) if t & 0x80000000]  # a later stored block
        got = expand(run[: stored[0]].tobytes() if stored else part, data[:q])
        assert stored or len(got) >= min(2000, len(data) - q)
        assert got == data[q : q + len(got)]


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 4000))
def test_the_token_decoder_refuses_broken_streams_without_crashing(
    noise: bytes, cut: int, flip: int
) -> None:
    raw = bytearray(zlib.compress(b"krill " * 500 + noise, 6)[2:-4])
    raw = raw[: max(0, len(raw) - cut)]
    if raw:
        raw[flip % len(raw)] ^= 1 << (flip % 8)
    try:
        _goflate.deflate_tokens(bytes(raw))
    except ValueError as exc:
        assert "invalid deflate stream" in str(exc) or "offset" in str(exc)


# --- spans over real Go streams ----------------------------------------------------------------


def go_pair(oracle: GoOracle, level: int, seed: int) -> tuple[bytes, bytes, bytes, bytes]:
    """A base tar of real files and a target with some of them edited, both gzip by Go."""
    rng = random.Random(seed)
    base = python_tar(3 << 20)
    cut = len(base) // 3
    target = base[:cut] + edited(base[cut : cut + (200 << 10)], rng, 6) + base[cut + (200 << 10) :]
    # two stretches swapped: the shared ranges change their offset into the base where they
    # meet, and a span must not run on across that (its tokens are read in one run)
    a, b, c = 512 * 3000, 512 * 3100, 512 * 3200
    target = target[:a] + target[b:c] + target[a:b] + target[c:]
    return base, target, oracle.gzip(base, level), oracle.gzip(target, level)


def write(tmp: Path, **files: bytes) -> dict[str, Path]:
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / name
        paths[name].write_bytes(data)
    return paths


def moved_pieces(oracle: GoOracle, level: int, seed: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Pieces (512-byte multiples) that each start with random bytes (literals whatever came
    before) and go on with text that refers only to itself, reordered in the target: the
    tokens go on being the base's across a junction, but from another place in the base."""
    rng = random.Random(seed)
    pieces = [rng.randbytes(1024) + text(rng, 40 * 1024) for _ in range(12)]
    order = list(range(12))
    rng.shuffle(order)
    base = b"".join(pieces)
    target = b"".join(pieces[i] for i in order)
    return base, target, oracle.gzip(base, level), oracle.gzip(target, level)


@pytest.mark.parametrize("pair", [go_pair, moved_pieces])
@pytest.mark.parametrize("level", [4, 6, 9])
def test_spans_found_in_two_go_streams_rebuild_the_target_exactly(
    go_oracle: GoOracle, tmp_path: Path, level: int, pair: Callable[..., tuple[bytes, ...]]
) -> None:
    base, target, base_gz, target_gz = pair(go_oracle, level, level)
    p = write(tmp_path, base=base, target=target, base_gz=base_gz, target_gz=target_gz)
    spans = find_spans(p["base_gz"], p["base"], p["target_gz"], p["target"], [])
    assert sum(s.p2 - s.p1 for s in spans) > len(target) // 3
    assert all(s.p2 - s.p1 >= MIN_SPAN for s in spans)
    tokens = BaseTokens(p["base_gz"], str(sha256_file(str(p["base_gz"]))))
    whole: Segment = Segment(None, None)
    reuse = segment_reuse(spans, whole, tokens)
    assert len(reuse) == len(spans)
    # every span's tokens, read from the base, are the target's own there
    target_tokens, _, _, _ = _goflate.deflate_tokens(target_gz, 10)
    starts = token_starts(target_tokens)
    index = {at: i for i, at in enumerate(starts)}
    mine = array.array("I", target_tokens)
    for span, (_p1, _p2, span_tokens, _pos) in zip(spans, reuse, strict=True):
        want = mine[index[span.p1] : index.get(span.p2, len(mine))]
        assert array.array("I", span_tokens)[: len(want)] == want
    out, _nbits, reached = _goflate.segment(level, target, None, -1, True, reuse=reuse)
    assert reached and out == target_gz[10:-8]


def test_a_span_whose_tokens_are_not_the_targets_is_dropped_by_the_proof_and_fails_a_node(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    base = python_tar(8 << 20)
    target = python_tar(9 << 20)
    p = write(tmp_path, base=go_oracle.gzip(base, 6), target=go_oracle.gzip(target, 6))
    delta = tmp_path / "d.krd"
    create_delta(p["base"], p["target"], delta)
    recipe = read_delta_header(delta).recipe
    spans = parse_reuse(recipe["reuse"]).spans
    assert spans and recipe["reuse"]["base"] == str(sha256_file(str(p["base"])))
    points = parse_restarts(recipe["restarts"])
    # the first span's place in the target, the last one's tokens from the base: entered
    # (the tokens line up with p1) but not the decisions Go made there
    first, last = spans[0], spans[-1]
    bad = ReuseSpan(first.p1, first.p2, last.q1, last.block_bit, last.token_bit)
    tars = write(tmp_path, base_tar=base, target_tar=target)
    tokens = BaseTokens(p["base"], recipe["reuse"]["base"])
    assert set(prove_spans(6, points, spans, tars["target_tar"], p["target"], tokens, 2)) == set(
        spans
    )
    kept = prove_spans(6, points, [bad, *spans[1:]], tars["target_tar"], p["target"], tokens, 2)
    assert bad not in kept and set(kept) < set(spans[1:]) | {bad}

    header, ops = Pair(p["base"], delta, b"").parts()
    header["recipe"]["reuse"]["spans"][0] = bad.to_json()
    crafted = tmp_path / "crafted.krd"
    crafted.write_bytes(join(header, ops))
    for workers in (1, 2):  # one core compresses in segments too, to take the tokens
        out = tmp_path / f"out{workers}.tgz"
        with pytest.raises(ValueError, match="did not"):  # the digest, or a segment's end
            apply_delta(p["base"], crafted, out, workers=workers)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))


def test_a_delta_with_reuse_applies_and_so_does_one_without(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    p = write(
        tmp_path,
        base=go_oracle.gzip(python_tar(8 << 20), 6),
        target=go_oracle.gzip(python_tar(9 << 20), 6),
    )
    delta = tmp_path / "d.krd"
    create_delta(p["base"], p["target"], delta)
    assert parse_reuse(read_delta_header(delta).recipe["reuse"]).spans
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.tgz"
        apply_delta(p["base"], delta, out, workers=workers)
        assert out.read_bytes() == p["target"].read_bytes()

    header, ops = Pair(p["base"], delta, b"").parts()
    del header["recipe"]["reuse"]  # as deltas made before reuse
    old = tmp_path / "old.krd"
    old.write_bytes(join(header, ops))
    apply_delta(p["base"], old, tmp_path / "old.tgz", workers=2)
    assert (tmp_path / "old.tgz").read_bytes() == p["target"].read_bytes()
    assert "reuse" not in json.dumps(read_delta_header(old).recipe)


def test_a_node_whose_base_is_another_blob_of_the_same_tar_searches_instead(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    base = python_tar(8 << 20)
    p = write(
        tmp_path,
        base=go_oracle.gzip(base, 6),
        target=go_oracle.gzip(python_tar(9 << 20), 6),
        other=gzip.compress(base, 5, mtime=0),  # the same tar, zlib-made: other tokens
    )
    delta = tmp_path / "d.krd"
    create_delta(p["base"], p["target"], delta)
    assert BaseTokens(p["other"], read_delta_header(delta).recipe["reuse"]["base"]).tokens(
        parse_reuse(read_delta_header(delta).recipe["reuse"]).spans[0]
    ) is None
    out = tmp_path / "out.tgz"
    apply_delta(p["other"], delta, out, workers=2)
    assert out.read_bytes() == p["target"].read_bytes()


def test_reuse_spans_are_checked_before_use() -> None:
    good = {"base": "sha256:" + "0" * 64, "spans": [[70000, 140000, 1000, 24, 300]]}
    assert parse_reuse(good, 200000).spans == (ReuseSpan(70000, 140000, 1000, 24, 300),)
    bad = [
        [],
        {"spans": []},
        {"base": "x", "spans": "no"},
        {"base": "x", "spans": [[1, 2, 3]]},
        {"base": "x", "spans": [[5, 4, 0, 0, 0]]},
        {"base": "x", "spans": [[0, 10, 0, 5, 5]]},  # the token inside its block's header
        {"base": "x", "spans": [[0, 10, 0, 0, 3], [5, 20, 0, 0, 3]]},  # overlapping
        {"base": "x", "spans": [[0, 10, 0, True, 3]]},
    ]
    for value in bad:
        with pytest.raises(ReuseError):
            parse_reuse(value, 100)
    with pytest.raises(ReuseError):
        parse_reuse(good, 100_000)  # past the tar's end
    with pytest.raises(RecipeError, match="reuse"):
        from krill.delta.recipes import Recipe

        Recipe.from_json({"kind": "gzip-go", "level": 6, "header": "1f8b", "reuse": {"base": 1}})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    spans=st.lists(
        st.tuples(
            st.integers(0, 80_000),
            st.integers(1, 80_000),
            st.one_of(
                st.binary(max_size=400),
                st.lists(
                    st.sampled_from([0x41, 0x40000000, 0x7FFFFFFF, 0x43FF7FFF, 0x80000010]),
                    max_size=60,
                ).map(lambda ts: array.array("I", ts).tobytes()),
            ),
            st.integers(-2000, 0),
        ),
        max_size=5,
    ),
    level=st.integers(4, 9),
)
def test_the_segment_encoder_takes_any_spans_without_crashing(
    data: bytes, spans: list[tuple[int, int, bytes, int]], level: int
) -> None:
    """Crafted spans (any tokens, any offsets) make other bits or a ValueError, never a crash;
    the digest checks decide what a node may serve."""
    ordered, end = [], 0
    for p1, n, tokens, back in spans:
        start = end + p1
        ordered.append((start, start + n, tokens[: len(tokens) // 4 * 4], start + back))
        end = start + n
    try:
        out, nbits, reached = _goflate.segment(level, data, None, -1, True, reuse=ordered)
    except ValueError:
        return
    assert reached and nbits <= 8 * len(out)
    if not spans:
        assert zlib.decompress(out, -15) == data


def test_the_whole_recipe_detection_keeps_working_without_a_base(tmp_path: Path) -> None:
    """detect_recipe alone (no base: ``krill convert``) makes no reuse spans."""
    data = python_tar(1 << 20)
    p = write(tmp_path, tar=data, blob=gzip.compress(data, 6, mtime=0))
    assert "reuse" not in detect_recipe(p["blob"], p["tar"]).params
