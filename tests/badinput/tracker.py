"""Malformed announces for the tracker: every parameter mutated alone and in pairs.

A valid announce is ``info_hash``, ``peer_id``, ``port``, ``uploaded``,
``downloaded``, ``left``, ``compact``; each mutation replaces, drops or
duplicates one of them. A mutation marked invalid must get a bencoded
``failure reason``; the others (a huge numwant, compact=yes, an ``ip`` the
tracker ignores) may get either a peer list or a failure, never a 500.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

from tests.badinput.wire import Expect, Probe

__all__ = ["announce_probes"]

INFO_HASH = quote_from_bytes(bytes(range(20)))
PEER_ID = quote_from_bytes(b"-KA0100-" + b"0" * 12)

BASE: dict[str, str] = {
    "info_hash": INFO_HASH,
    "peer_id": PEER_ID,
    "port": "6881",
    "uploaded": "0",
    "downloaded": "0",
    "left": "100",
    "compact": "1",
}

DROP = None  # the parameter is left out

BAD_NUMBERS = ["", "abc", "-", "+1", "%201", "1.0", "1e3", "0x10", "%C2%B2", "%00", "9" * 21,
               "-99999999999999999999", "9" * 5_000, "%D9%A3", "%EF%BC%91"]

# (parameter, value, must it fail)
MUTATIONS: list[tuple[str, str | None, bool]] = [
    ("info_hash", DROP, True),
    ("info_hash", "", True),
    ("info_hash", quote_from_bytes(bytes(19)), True),
    ("info_hash", quote_from_bytes(bytes(21)), True),
    ("info_hash", "00" * 20, True),  # hex, not raw bytes: 40 long
    ("info_hash", "%zz" * 20, True),
    ("info_hash", "%" * 19, True),  # "%" not followed by hex stays one byte
    ("info_hash", INFO_HASH + "&info_hash=" + quote_from_bytes(bytes(20)), False),
    ("peer_id", DROP, True),
    ("peer_id", "", True),
    ("peer_id", "short", True),
    ("peer_id", "x" * 200, True),
    ("port", DROP, True),
    ("port", "0", True),
    ("port", "-1", True),
    ("port", "65536", True),
    ("port", "9" * 20, True),
    ("left", "9" * 20, False),  # at most 20 characters: a number, however large
    ("left", DROP, True),
    ("left", "-1", True),
    ("numwant", "-1", True),
    ("numwant", "999999999", False),
    ("numwant", "9" * 20, False),
    ("numwant", "0", False),
    ("compact", "0", False),
    ("compact", "yes", False),
    ("compact", "", False),
    ("compact", "%00", False),
    ("event", "bogus", True),
    ("event", "STARTED", True),
    ("event", "%00", True),
    ("event", "started%00", True),
    ("event", "stopped", False),
    ("event", "completed", False),
    ("event", "", False),
    ("ip", "not-an-ip", False),
    ("ip", "::1", False),
    ("key", "%ff" * 1000, False),
    ("uploaded", "-1", False),
    ("downloaded", "abc", False),
    ("trackerid", "%00", False),
]
for _name in ("port", "left", "numwant"):
    MUTATIONS += [(_name, value, True) for value in BAD_NUMBERS]


def query(params: dict[str, str | None]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items() if v is not None)


def _probe(what: str, target: str, expect: Expect) -> Probe:
    return Probe("tracker", what, "GET", target, expect)


def announce_probes() -> Iterator[Probe]:
    for name, value, fails in MUTATIONS:
        expect = Expect.TRACKER_FAILURE if fails else Expect.TRACKER_ANY
        yield _probe("announce", f"/announce?{query({**BASE, name: value})}", expect)
    # two mutations at once: at least one of them invalid, so the answer is a failure
    invalid = [m for m in MUTATIONS if m[2]]
    for (name_a, value_a, _), (name_b, value_b, _) in itertools.combinations(invalid[::3], 2):
        if name_a == name_b:
            continue
        target = f"/announce?{query({**BASE, name_a: value_a, name_b: value_b})}"
        yield _probe("announce pair", target, Expect.TRACKER_FAILURE)
    for raw in ("", "?", "?&&&", "?=", "?==&=", "?info_hash", "?%", "?" + "a=b&" * 1500,
                "?" + "x" * 6000, "?info_hash=%FF%FF&&peer_id"):
        yield _probe("announce query", f"/announce{raw}", Expect.TRACKER_FAILURE)
    for method in ("POST", "PUT", "DELETE"):
        yield Probe("tracker", "announce method", method, f"/announce?{query(BASE)}",
                    Expect.CLIENT_ERROR)
    for path in ("/scrape", "/announce/", "/announce/../health", "/%2e%2e/announce"):
        yield _probe("tracker path", path, Expect.ANSWERED)
