"""The C parse of an announce query (krill/_native/announcequery.c) is the Python one's double.

``krill._announcequery.plain_announce`` reads the ordinary announce queries
on the tracker's hot path; for everything else it must say None so that the
general Python parse answers (and words the refusal). For any query it must
give exactly what ``python_plain_fields`` gives, which
tests/test_tracker_fastpath.py holds to the general parse.
"""

from __future__ import annotations

from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.tracker.announce import (
    C_PLAIN_FIELDS,
    C_PLAIN_TARGET_FIELDS,
    EVENTS,
    python_plain_fields,
    python_plain_target_fields,
)

pytestmark = pytest.mark.skipif(C_PLAIN_FIELDS is None, reason="krill._announcequery not built")

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["info_hash", "peer_id", "port", "left", "event", "numwant", "compact",
                         "uploaded", "info%5Fhash", "peer+id", "x", "", "port#", "lef"])
plain = st.sampled_from(["1", "0", "6881", "65535", "65536", "-1", "01", "1" * 20, "1" * 21,
                         "18446744073709551615", "18446744073709551616",
                         "9223372036854775807", "9223372036854775808", "", "%31", "+1", "²",
                         "started", "st%61rted", "stopped", "completed", "paused", "bogus",
                         "%30", "Z", "%", "%4", "%zz", "a#b", "é"])
twenty = st.binary(min_size=18, max_size=22).map(quote_from_bytes)
loose = st.binary(min_size=18, max_size=22).map(lambda b: b.decode("latin-1"))
values = plain | twenty | loose | st.text(max_size=24)


def c_fields(query: str) -> object:
    assert C_PLAIN_FIELDS is not None and C_PLAIN_TARGET_FIELDS is not None
    for target in ("/announce?" + query, "/announce/KEY?" + query, "?" + query):
        assert C_PLAIN_TARGET_FIELDS(target) == python_plain_target_fields(target)
    return C_PLAIN_FIELDS(query)


@FUZZ
@given(st.lists(st.tuples(names, values, st.booleans()), max_size=12))
def test_the_c_parse_gives_what_the_python_one_gives(
    parts: list[tuple[str, str, bool]]
) -> None:
    query = "&".join(f"{n}={v}" if with_equals else n + v for n, v, with_equals in parts)
    assert c_fields(query) == python_plain_fields(query)


@FUZZ
@given(st.text(alphabet=st.sampled_from("&=%+#09aAfF_tporlecinkuvhs\x00é"), max_size=60))
def test_any_string_is_read_alike(query: str) -> None:
    assert c_fields(query) == python_plain_fields(query)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20),
       st.integers(0, 70000), st.integers(0, 2**64 + 5), st.sampled_from(EVENTS),
       st.sampled_from(["", "&compact=0", "&compact=1", "&numwant=7", "&numwant=900",
                        "&numwant=99999999999999999999", "&key=abc&ip=1.2.3.4"]),
       st.booleans())
def test_a_client_announce_is_read_in_c(
    info_hash: bytes, peer_id: bytes, port: int, left: int, event: str, extra: str,
    plus: bool,
) -> None:
    encoded_id = quote_from_bytes(peer_id).replace("%20", "+") if plus else quote_from_bytes(
        peer_id)
    query = (f"info_hash={quote_from_bytes(info_hash)}&peer_id={encoded_id}"
             f"&port={port}&uploaded=0&downloaded=0&left={left}&event={event}{extra}")
    got = c_fields(query)
    assert got == python_plain_fields(query)
    if 1 <= port <= 65535 and left < 2**64 and "9999" not in extra:
        assert got is not None and got[:2] == (info_hash, peer_id)


def test_a_query_that_is_not_a_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        C_PLAIN_FIELDS(b"port=1")  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError):
        C_PLAIN_TARGET_FIELDS(b"/announce?port=1")  # type: ignore[arg-type,misc]


@pytest.mark.parametrize("target", ["/announce", "/announce?", "/annonce\u00e9?port=1", "", "?",
                                    "/a?b?port=1&left=1"])
def test_a_target_without_an_ordinary_query_is_none_in_both(target: str) -> None:
    assert C_PLAIN_TARGET_FIELDS is not None
    assert C_PLAIN_TARGET_FIELDS(target) is python_plain_target_fields(target) is None
