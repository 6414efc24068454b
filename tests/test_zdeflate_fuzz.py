"""krill._zdeflate's C entry points under malformed arguments: errors, never a crash.

The encoder runs inside a node's apply with the GIL released, so a bad argument
must be refused before any C code touches it: wrong types are a TypeError, values
out of range (any size of integer) a ValueError, a used-up or uninitialised
object a ValueError, and whatever is accepted still gives zlib's bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_zdeflate = pytest.importorskip("krill._zdeflate", reason="the C extension is not built")


def _view(data: bytes) -> memoryview:
    return memoryview(data)


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=100),
    st.lists(st.integers(0, 255), max_size=10),
    st.builds(bytearray, st.binary(max_size=50)),
    st.binary(max_size=50).map(_view),
)


def _zlib_accepts(level: Any, mem_level: Any, strategy: Any) -> bool:
    return (
        all(isinstance(v, int) for v in (level, mem_level, strategy))
        and 4 <= level <= 9
        and 1 <= mem_level <= 9
        and strategy in (0, 1)
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(level=_ANY, mem_level=_ANY, strategy=_ANY, zdict=_ANY, data=_ANY)
def test_constructor_refuses_or_matches_zlib(
    level: Any, mem_level: Any, strategy: Any, zdict: Any, data: Any
) -> None:
    try:
        ours = _zdeflate.Compressor(level, mem_level, strategy, zdict)
    except (TypeError, ValueError):
        assert not (_zlib_accepts(level, mem_level, strategy) and _is_buffer(zdict))
        return
    assert _zlib_accepts(level, mem_level, strategy)
    try:
        got = ours.compress(data)
    except TypeError:
        assert not _is_buffer(data)
        return
    got += ours.flush()
    ref = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy, zdict=zdict or b"")
    assert got == ref.compress(data) + ref.flush()


def _is_buffer(obj: object) -> bool:
    return obj is None or isinstance(obj, bytes | bytearray | memoryview)


@settings(max_examples=200, deadline=None)
@given(mode=_ANY)
def test_flush_refuses_bad_modes(mode: Any) -> None:
    ours = _zdeflate.Compressor(6)
    ours.compress(b"abc" * 100)
    try:
        ours.flush(mode)
    except TypeError:
        assert not isinstance(mode, int)
    except ValueError as err:
        assert not 0 <= mode <= 5 or "finished" in str(err)


def test_huge_zdict_and_huge_input_are_fine() -> None:
    ours = _zdeflate.Compressor(9, 9, 0, bytes(64 << 20))
    data = bytes(range(256)) * (1 << 14)
    ref = zlib.compressobj(9, zlib.DEFLATED, -15, 9, 0, zdict=bytes(64 << 20))
    assert ours.compress(data) + ours.flush() == ref.compress(data) + ref.flush()


def test_misuse_of_the_object() -> None:
    bare = _zdeflate.Compressor.__new__(_zdeflate.Compressor)
    with pytest.raises(ValueError, match="not initialised"):
        bare.compress(b"x")
    with pytest.raises(ValueError, match="not initialised"):
        bare.flush()
    ours = _zdeflate.Compressor(6)
    with pytest.raises(RuntimeError, match="once"):
        ours.__init__(7)
    ours.flush()
    for call in (lambda: ours.compress(b"x"), ours.flush):
        with pytest.raises(ValueError, match="finished"):
            call()
    with pytest.raises(TypeError):
        _zdeflate.Compressor()
    with pytest.raises(TypeError):
        _zdeflate.Compressor(6, zdict="text is not bytes")
    with pytest.raises(TypeError):
        _zdeflate.Compressor(6, 8, 0, None, "extra")
