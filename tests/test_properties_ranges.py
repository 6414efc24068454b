"""Properties of the blob ``Range`` and list ``n`` parsing both services share
(krill/registry_params.py).

A Range header the parser accepts is served by aiohttp's FileResponse at the
origin and by the agent's own streaming, so the parser is the only gate: any
header gives a range inside the blob or ``RANGE_INVALID`` (416 with
``Content-Range: bytes */SIZE``), never another exception (a 500), and what
it accepts matches RFC 9110's reading of the same bytes (modelled here
independently). The same for ``n``: ASCII digits of any length, or 400.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from krill.registry_errors import RegistryError
from krill.registry_params import BEYOND_ANY_SIZE, ByteRange, parse_count, parse_range

PROPERTY = settings(max_examples=200, deadline=None)

digits = st.text("0123456789", max_size=25)
odd_digits = st.sampled_from(["\u00b2", "\u0663", "\uff11", "+1", " 1", "1 ", "-1", "1.0", "",
                              "9" * 1200])
numbers = digits | odd_digits
headers = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", numbers, numbers),
    st.builds(lambda unit, a, b: f"{unit}={a}-{b}", st.sampled_from(["BYTES", "Bytes", "items"]),
              digits, digits),
    st.builds(lambda a, b: f"bytes={a}-{b},{b}-{a}", digits, digits),
    st.text(max_size=40),
)
sizes = st.integers(0, 10**6) | st.sampled_from([0, 1, 2**40])


def rfc_range(header: str, size: int) -> ByteRange | str | None:
    """RFC 9110 section 14 for one range (a model, not the code): the range, or "416"."""
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.lower() != "bytes" or spec.count("-") != 1 or "," in spec:
        return "416"
    first, last = spec.split("-")
    ascii_digits = set("0123456789")
    if not set(first + last) <= ascii_digits or not (first or last) or len(header) > 1000:
        return "416"
    if not first:
        suffix = int(last)
        return ByteRange(max(0, size - suffix), size) if suffix > 0 else "416"
    start = int(first)
    if (last and int(last) < start) or start >= size:
        return "416"
    return ByteRange(start, min(int(last) + 1, size) if last else size)


@PROPERTY
@given(headers, sizes)
def test_a_range_is_inside_the_blob_or_range_invalid(header: str, size: int) -> None:
    try:
        got: ByteRange | str | None = parse_range(header, size)
    except RegistryError as error:
        assert (error.code, error.status) == ("RANGE_INVALID", 416)
        assert error.headers == {"Content-Range": f"bytes */{size}"}
        got = "416"
    assert got == rfc_range(header, size)
    if isinstance(got, ByteRange):
        assert 0 <= got.start <= got.end <= size
        assert got.length > 0 or size == 0


def test_an_open_range_past_the_end_says_so() -> None:
    """"bytes=N-" at or past the end is past the blob, not a range that "ends before it starts"."""
    for header in ("bytes=10-", "bytes=11-"):
        with pytest.raises(RegistryError, match="starts past the blob's 10 bytes"):
            parse_range(header, 10)


@PROPERTY
@given(numbers | st.text(max_size=8))
def test_n_is_ascii_digits_or_a_400(text: str) -> None:
    request = make_mocked_request("GET", f"/v2/_catalog?n={quote(text)}")
    try:
        count = parse_count(request)
    except RegistryError as error:
        assert error.status == 400
        assert not (text.isascii() and text.isdigit())
        return
    if text == "":
        assert count is None
    else:
        assert text.isascii() and text.isdigit()
        assert count == min(int(text), BEYOND_ANY_SIZE)
