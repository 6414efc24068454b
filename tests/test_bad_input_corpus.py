"""A generated corpus of malformed requests against a real origin, agent and tracker.

Issue 20: a new user's malformed requests found the origin answering 500 to a
manifest nested 5,000 deep. Here every probe from ``tests/badinput`` (bad
names, digests, references, Range and framing headers, out-of-order chunked
uploads, bad manifests, bad announces, bad metainfo and delta lookups) goes,
byte for byte, to ``krill origin``, ``krill tracker`` and ``krill agent``
processes on loopback. Each answer must meet its probe's contract (the spec's
error JSON with a spec code for registry routes, a bencoded ``failure reason``
for announces), none may be a 5xx or a hang, no service may log a crashed
request, and every service must still answer its health check afterwards.

A bug found here that belongs to another module is left out of the corpus
(``KNOWN_BUGS``) and gets its own strict xfail test below, so the corpus stays
green and the bug stays visible until it is fixed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from krill import bencode
from krill.bencode import BencodeError
from krill.registry_errors import CODES
from tests.agent_cluster import Agent, agent_process, build_layout, origin_and_tracker, push_via_api
from tests.badinput.registry import REPO, Known, registry_probes, upload_scenarios
from tests.badinput.tracker import announce_probes
from tests.badinput.wire import Answer, Expect, Probe, Scenario, send
from tests.fixtures_origin import digest_of, error_code

# A probe left unanswered this long is a hang (a guard, not a measurement).
HANG_GUARD_SECONDS = 60
CONCURRENCY = 8
SPEC_CODES = set(CODES) - {"UNKNOWN"}  # UNKNOWN is the bug code: never expected


@dataclass(frozen=True)
class KnownBug:
    """A probe family that finds a bug in code this corpus does not own (see its xfail test)."""

    matches: Callable[[Probe], bool]
    test: str  # the strict xfail test reproducing it


KNOWN_BUGS: list[KnownBug] = []


@dataclass
class Outcome:
    probe: Probe
    answer: Answer | None  # None: no answer within the hang guard
    problem: str | None


def check(probe: Probe, answer: Answer | None) -> str | None:
    """What is wrong with ``answer`` for ``probe``'s contract (None: nothing)."""
    if answer is None:
        return f"no answer within {HANG_GUARD_SECONDS} s"
    status = answer.status
    if status is None:
        return None if probe.expect is Expect.CLOSED_OR_CLIENT_ERROR else "closed, no answer"
    if status >= 500:
        return f"{status}: {answer.body[:300]!r}"
    expect = probe.expect
    if expect is Expect.RANGE_REFUSED:
        return _range_refusal_problem(probe, answer)
    if expect in (Expect.TRACKER_FAILURE, Expect.TRACKER_ANY):
        return _tracker_problem(expect, answer)
    if expect in (Expect.CLIENT_ERROR, Expect.CLOSED_OR_CLIENT_ERROR, Expect.REGISTRY_ERROR):
        if not 400 <= status < 500:
            return f"{status}, expected a 4xx"
    if expect in (Expect.REGISTRY_ERROR, Expect.REGISTRY_ANY) and status >= 400:
        return _registry_error_problem(probe, answer)
    return None


def _registry_error_problem(probe: Probe, answer: Answer) -> str | None:
    content_type = answer.header("Content-Type") or ""
    if not content_type.startswith("application/json"):
        return f"{answer.status} with Content-Type {content_type!r}, not the spec's error JSON"
    if probe.method == "HEAD":
        return None
    try:
        code = json.loads(answer.body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"{answer.status} body is not the spec's error JSON: {answer.body[:200]!r}"
    return None if code in SPEC_CODES else f"{answer.status} with code {code!r}"


def _range_refusal_problem(probe: Probe, answer: Answer) -> str | None:
    if answer.status != 416:
        return f"{answer.status}, expected 416"
    if not (answer.header("Content-Range") or "").startswith("bytes */"):
        return f"416 with Content-Range {answer.header('Content-Range')!r}, not 'bytes */SIZE'"
    problem = _registry_error_problem(probe, answer)
    if problem is not None or probe.method == "HEAD":
        return problem
    code = json.loads(answer.body)["errors"][0]["code"]
    return None if code == "RANGE_INVALID" else f"416 with code {code!r}"


def _tracker_problem(expect: Expect, answer: Answer) -> str | None:
    if answer.status != 200:
        return f"{answer.status}, expected 200 with a bencoded answer"
    try:
        decoded = bencode.decode(answer.body)
    except BencodeError:
        return f"not bencoded: {answer.body[:200]!r}"
    if not isinstance(decoded, dict):
        return f"bencoded {type(decoded).__name__}, not a dictionary"
    if b"failure reason" in decoded:
        return None
    if expect is Expect.TRACKER_ANY and b"interval" in decoded:
        return None
    return f"no 'failure reason': {answer.body[:200]!r}"


class Corpus:
    """Sends probes and scenarios to the services (name -> base URL), keeping every outcome."""

    def __init__(self, services: dict[str, str]) -> None:
        self.addresses = {}
        for name, url in services.items():
            parts = urlsplit(url)
            assert parts.hostname and parts.port
            self.addresses[name] = (parts.hostname, parts.port)
        self.outcomes: list[Outcome] = []
        self.setup_failures: list[str] = []

    async def _send(self, probe: Probe, location: str = "") -> Answer | None:
        host, port = self.addresses[probe.service]
        try:
            async with asyncio.timeout(HANG_GUARD_SECONDS):
                return await send(host, port, probe, location)
        except TimeoutError:
            return None

    async def probe(self, probe: Probe) -> None:
        answer = await self._send(probe)
        self.outcomes.append(Outcome(probe, answer, check(probe, answer)))

    async def scenario(self, scenario: Scenario) -> None:
        location = ""
        for checked, probe in scenario.steps:
            answer = await self._send(probe, location)
            if checked:
                self.outcomes.append(Outcome(probe, answer, check(probe, answer)))
            elif answer is None or answer.status is None or answer.status >= 400:
                status = None if answer is None else answer.status
                failed = f"{scenario.what}: {probe.method} {probe.target}: {status}"
                self.setup_failures.append(failed)
                return
            new = answer.header("Location") if answer is not None else None
            if new and "/blobs/uploads/" in new:  # a finished upload's Location is its blob
                location = new

    async def run(self, probes: list[Probe], scenarios: list[Scenario]) -> None:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(job: Probe | Scenario) -> None:
            async with limit:
                if isinstance(job, Probe):
                    await self.probe(job)
                else:
                    await self.scenario(job)

        jobs: list[Probe | Scenario] = [*probes, *scenarios]
        await asyncio.gather(*(one(job) for job in jobs))


def known_bug(probe: Probe) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(probe)), None)


def corpus(known: Known) -> tuple[list[Probe], list[Scenario], int]:
    """The probes and scenarios to send, and how many probes KNOWN_BUGS left out."""
    everything = [*registry_probes(known), *announce_probes()]
    probes = [p for p in everything if known_bug(p) is None]
    return probes, list(upload_scenarios(known)), len(everything) - len(probes)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status)


@dataclass
class Cluster:
    origin: str
    tracker: str
    agent: Agent
    known: Known
    logs: list[Path]

    @property
    def services(self) -> dict[str, str]:
        return {
            "origin": self.origin,
            "tracker": self.tracker,
            "registry": self.agent.registry,
            "control": self.agent.api,
        }

    def healthy(self) -> dict[str, int]:
        return {
            "origin": _get(f"{self.origin}/health"),
            "tracker": _get(f"{self.tracker}/health"),
            "control": _get(f"{self.agent.api}/health"),
            "registry": _get(f"{self.agent.registry}/v2/"),
            "origin still serves v1": _get(f"{self.origin}/v2/{REPO}/manifests/v1"),
        }

    def crashes(self) -> list[str]:
        """Lines where a service logged a crashed request (a bug even if answered < 500)."""
        return [
            f"{log.name}: {line}"
            for log in self.logs
            for line in log.read_text(errors="replace").splitlines()
            if "request.crashed" in line  # aiohttp logs its own parser 400s as errors too
        ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("badinput")
    image = build_layout(root / "image", seed=20)
    with origin_and_tracker(root) as (origin, tracker):
        push_via_api(origin, REPO, image, "v1")
        only = image.images[0]
        known = Known(only.manifest.digest, only.manifest.data, only.config.digest,
                      only.layers[0].digest)
        with agent_process(root / "agent", origin, tracker) as agent:
            logs = [root / "origin" / "origin.log", root / "tracker" / "tracker.log",
                    root / "agent" / "agent.log"]
            yield Cluster(origin, tracker, agent, known, logs)


@pytest.mark.slow
def test_the_corpus_gets_client_errors_and_no_service_breaks(cluster: Cluster) -> None:
    probes, scenarios, left_out = corpus(cluster.known)
    runner = Corpus(cluster.services)
    asyncio.run(runner.run(probes, scenarios))

    per_service = collections.Counter(o.probe.service for o in runner.outcomes)
    per_category = collections.Counter(o.probe.what.split(":")[0] for o in runner.outcomes)
    server_errors = [o for o in runner.outcomes if o.answer and (o.answer.status or 0) >= 500]
    print(f"\nrequests sent: {len(runner.outcomes)} ({left_out} left out as KNOWN_BUGS)")
    print("per service:", dict(per_service))
    print("per category:", dict(per_category))
    print(f"5xx answers: {len(server_errors)}")
    problems = [
        f"{o.probe.service} {o.probe.what}: {o.probe.method} {o.probe.target[:160]} "
        f"-> {o.problem} (expected {o.probe.expect.value})"
        for o in runner.outcomes
        if o.problem
    ]
    assert len(runner.outcomes) >= 1000
    assert not runner.setup_failures, runner.setup_failures
    assert not problems, f"{len(problems)} answers broke their contract:\n" + "\n".join(
        problems[:60]
    )
    assert cluster.crashes() == []
    assert all(status == 200 for status in cluster.healthy().values()), cluster.healthy()


@pytest.mark.slow
def test_agent_preheat_of_deeply_nested_json_is_a_400(cluster: Cluster) -> None:
    probe = Probe("control", "preheat", "POST", "/preheat", Expect.REGISTRY_ERROR,
                  (("Content-Type", "application/json"),), b"[" * 100_000)
    host, port = Corpus(cluster.services).addresses["control"]
    answer = asyncio.run(send(host, port, probe))
    assert check(probe, answer) is None


@pytest.mark.slow
def test_agent_control_blob_of_an_unknown_digest_without_repo_is_a_404(cluster: Cluster) -> None:
    """Was 503: with no ?repo= the HTTP fallback cannot ask the origin, and "no metainfo"
    was SourceUnavailable. The origin's 404 BLOB_UNKNOWN for the metainfo is now
    BlobNotFound. Sent alone, so no registry probe for the digest shares its fetch."""
    unknown = "sha256:" + "5" * 64
    for method in ("HEAD", "GET"):
        probe = Probe("control", "digest", method, f"/blobs/{unknown}", Expect.REGISTRY_ERROR)
        host, port = Corpus(cluster.services).addresses["control"]
        answer = asyncio.run(send(host, port, probe))
        assert answer.status == 404, (method, answer.status, answer.body[:200])


@pytest.mark.parametrize("n", ["%C2%B2", "%D9%A3", "1%C2%B2", "\uff11", "9" * 5_000])
async def test_listing_n_that_is_not_ascii_digits_is_a_400_or_clamped(
    origin_client: TestClient, n: str
) -> None:
    """'²' passes str.isdigit (int refuses it), '٣' passes int; 5,000 nines pass neither."""
    resp = await origin_client.get(f"/v2/_catalog?n={n}")
    if n.isascii() and n.isdigit():
        assert resp.status == 200  # more than any catalog: all of it
    else:
        assert (resp.status, await error_code(resp)) == (400, "UNSUPPORTED")


# Beyond a 10-byte blob, a suffix of nothing, backwards, several, another unit, a
# non-ASCII digit, and numbers too long for int() (aiohttp's own parse would fail).
UNSATISFIABLE = ["bytes=999999999-", "bytes=10-", "bytes=-0", "bytes=5-2", "bytes=0-1,3-4",
                 "items=0-1", "bytes=\u00b2-3", "bytes=" + "9" * 5_000 + "-",
                 "bytes=0-" + "9" * 5_000]


@pytest.fixture
async def short_blob(origin_client: TestClient) -> str:
    """A 10-byte blob pushed to REPO; its URL."""
    data = b"short blob"
    await origin_client.post(f"/v2/{REPO}/blobs/uploads/?digest={digest_of(data)}", data=data)
    return f"/v2/{REPO}/blobs/{digest_of(data)}"


@pytest.mark.parametrize("value", UNSATISFIABLE)
async def test_origin_416_is_the_spec_error_json(
    origin_client: TestClient, short_blob: str, value: str
) -> None:
    resp = await origin_client.get(short_blob, headers={"Range": value})
    assert resp.status == 416
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Content-Range"] == "bytes */10"
    assert "Cache-Control" not in resp.headers
    assert await error_code(resp) == "RANGE_INVALID"
    head = await origin_client.head(short_blob, headers={"Range": value})
    assert (head.status, head.headers["Content-Type"].split(";")[0]) == (416, "application/json")


@pytest.mark.parametrize(("value", "part"), [
    ("bytes=0-", b"short blob"), ("BYTES=2-4", b"ort"), ("bytes=-3", b"lob"),
    ("bytes=8-999999999999999999999999999999", b"ob"), ("bytes=-99999", b"short blob"),
])
async def test_origin_satisfiable_range_is_a_206(
    origin_client: TestClient, short_blob: str, value: str, part: bytes
) -> None:
    resp = await origin_client.get(short_blob, headers={"Range": value})
    assert (resp.status, await resp.read()) == (206, part)


async def test_origin_range_is_ignored_when_if_range_is_stale(
    origin_client: TestClient, short_blob: str
) -> None:
    """If-Range older than the blob: the whole blob (RFC 9110), even for a range it refuses."""
    stale = "Mon, 01 Jan 1990 00:00:00 GMT"
    resp = await origin_client.get(short_blob, headers={"Range": "bytes=-0", "If-Range": stale})
    assert (resp.status, await resp.read()) == (200, b"short blob")


@pytest.mark.parametrize("content_range", ["5-" + "9" * 5_000, "9" * 5_000 + "-9",
                                           "\u0665-\u0669", "\uff15-\uff19"])
async def test_upload_chunk_content_range_of_huge_or_non_ascii_numbers_is_a_4xx(
    origin_client: TestClient, content_range: str
) -> None:
    """int() refuses over 4,300 digits; \\d matches Arabic-Indic and full-width digits."""
    start = await origin_client.post(f"/v2/{REPO}/blobs/uploads/")
    location = start.headers["Location"]
    first = await origin_client.patch(location, data=b"01234", headers={"Content-Range": "0-4"})
    assert first.status == 202
    resp = await origin_client.patch(location, data=b"56789",
                                     headers={"Content-Range": content_range})
    assert 400 <= resp.status < 500
    assert await error_code(resp) in ("BLOB_UPLOAD_INVALID", "RANGE_INVALID")
