"""The tracker's request ids and latency histogram, done without app-wide middlewares.

The announce routes give ids and time themselves (``krill.tracker.server``); the
other routes are wrapped in the shared middlewares one by one
(``krill.tracker.served``). Both must look to a client and to Prometheus as the
middlewares did.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Histogram

from krill import bencode
from krill.httpmetrics import REQUEST_BUCKETS
from krill.requestcontext import current_request_id
from krill.tracker.config import TrackerConfig
from krill.tracker.peerstore import PeerEntry
from krill.tracker.served import PlainHistogram
from krill.tracker.server import STORE_KEY, create_app
from krill.tracker.swarmview import SwarmView
from tests.metrics_text import parse_metrics
from tests.swarm_helpers import serving

ANNOUNCE = (
    f"/announce?info_hash={quote_from_bytes(bytes(range(20)))}"
    f"&peer_id={quote_from_bytes(b'-KA0100-000000000001')}&port=7001&left=5&compact=1"
)


async def test_announces_and_other_routes_echo_or_make_request_ids(
    http: aiohttp.ClientSession,
) -> None:
    async with serving(create_app(TrackerConfig(listen="127.0.0.1:0"))) as base:
        for path in (ANNOUNCE, "/health", "/metrics"):
            async with http.get(base + path, headers={"X-Request-Id": "pull-7"}) as answer:
                assert answer.status == 200 and answer.headers["X-Request-Id"] == "pull-7"
            async with http.get(base + path, headers={"X-Request-Id": "no spaces"}) as made:
                assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"]), path
            async with http.get(base + path) as fresh:
                assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["X-Request-Id"]), path
        made_ids = set()
        for _ in range(5):  # an announce that brings no id gets a new one every time
            async with http.get(base + ANNOUNCE) as fresh:
                made_ids.add(fresh.headers["X-Request-Id"])
        assert len(made_ids) == 5


async def test_announce_latency_is_exported_beside_the_other_routes(
    http: aiohttp.ClientSession,
) -> None:
    async with serving(create_app(TrackerConfig(listen="127.0.0.1:0"))) as base:
        for path in (ANNOUNCE, ANNOUNCE, "/announce?port=1", "/health"):
            async with http.get(base + path) as answer:
                assert answer.status == 200
        async with http.get(base + "/metrics") as metrics:
            values = parse_metrics(await metrics.text())
    name = "krill_tracker_request_seconds"
    announces = 'method="GET",route="/announce"'
    assert values[f"{name}_count{{{announces}}}"] == 3  # the refused one too
    infinite = [v for k, v in values.items() if k.startswith(f"{name}_bucket") and
                'route="/announce"' in k and 'le="+Inf"' in k]  # fmt: skip
    assert infinite == [3]
    assert values[f"{name}_sum{{{announces}}}"] > 0
    assert values[f'{name}_count{{method="GET",route="/health"}}'] == 1
    assert not any("/announce/{key}" in key for key in values), "never asked: no series"


def test_a_plain_histogram_exports_what_a_prometheus_child_would() -> None:
    observed = [0.0, 0.001, 0.0011, 0.3, 30.0, 301.0, 7e-4]
    plain = PlainHistogram()
    child = Histogram("h", "h", ["route"], registry=CollectorRegistry(), buckets=REQUEST_BUCKETS)
    for seconds in observed:
        plain.observe(seconds)
        child.labels("/a").observe(seconds)
    (family,) = child.collect()
    expected = [(s.name, s.labels, s.value) for s in family.samples if "_created" not in s.name]
    mine = plain.samples("h", {"route": "/a"})
    assert [(s.name, s.labels, s.value) for s in mine if "_created" not in s.name] == expected


@pytest.mark.parametrize("plain", [True, False], ids=["ordinary announce", "general way"])
async def test_an_unexpected_error_is_a_bencoded_failure_logged_under_the_request_id(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """On the general way (here: a non-compact announce) the id is bound while the store
    works; an ordinary announce binds it only to log (it logs nothing otherwise)."""
    app = create_app(TrackerConfig(listen="127.0.0.1:0"))
    seen: list[str | None] = []
    crashes: list[str | None] = []

    def broken_record_now(info_hash: bytes, entry: PeerEntry, now: float = 0) -> SwarmView:
        seen.append(current_request_id())
        raise RuntimeError("a bug in the store")

    async def broken_record(info_hash: bytes, entry: PeerEntry, ttl: int) -> SwarmView:
        return broken_record_now(info_hash, entry)

    class CrashIds(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "tracker.announce_crashed" and record.exc_info:
                crashes.append(current_request_id())

    handler = CrashIds()
    logging.getLogger("krill.tracker.server").addHandler(handler)
    try:
        async with serving(app) as base:
            monkeypatch.setattr(app[STORE_KEY], "record", broken_record)
            monkeypatch.setattr(app[STORE_KEY], "record_now", broken_record_now)
            url = base + (ANNOUNCE if plain else ANNOUNCE.replace("compact=1", "compact=0"))
            async with http.get(url, headers={"X-Request-Id": "pull-8"}) as answer:
                assert answer.status == 200 and answer.headers["X-Request-Id"] == "pull-8"
                body = bencode.decode(await answer.read())
            async with http.get(base + "/metrics") as metrics:
                values = parse_metrics(await metrics.text())
    finally:
        logging.getLogger("krill.tracker.server").removeHandler(handler)
    assert body == {
        b"failure reason": b"internal tracker error", b"interval": 30, b"min interval": 30
    }
    assert seen == [None if plain else "pull-8"]
    assert crashes == ["pull-8"]
    assert values['krill_tracker_announces_total{event="error",result="failure"}'] == 1
