"""Malformed registry requests for the origin (``origin``), the agent's registry endpoint
(``registry``) and its control API (``control``), built as combinations.

Every bad name goes to every route taking a name, every bad digest to every
route taking a digest, every bad manifest body with every Content-Type, and
so on. ``Known`` is what the origin already holds (one pushed image), so
probes can aim at a blob or tag that exists: a Range on a real blob, a
reused upload of a real digest. The bad values themselves are in
``tests/badinput/values.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

from krill import oci
from tests.badinput.values import (
    ANY,
    BAD_DIGESTS,
    BAD_NAMES,
    BAD_TAGS,
    BAD_UPLOAD_IDS,
    CONTENT_TYPES,
    ERROR,
    RANGES,
    REPO,
    SATISFIABLE_RANGES,
    UNKNOWN,
    Known,
    accepted_or_refused,
    decodes_to_a_digest,
    digest_of,
    manifest_bodies,
    tag_like,
)
from tests.badinput.wire import Expect, Probe, Scenario

__all__ = ["Known", "registry_probes", "upload_scenarios"]


def registry_probes(known: Known) -> Iterator[Probe]:
    yield from _names(known)
    # The request line past aiohttp's 8190-byte limit: its parser answers a bare 400.
    for service in ("origin", "registry", "control", "tracker"):
        yield Probe(service, "request line", "GET", "/v2/" + "a" * 9000, Expect.CLIENT_ERROR)
    yield from _digests(known)
    yield from _references(known)
    yield from _ranges(known)
    yield from _framing(known)
    yield from _manifests(known)
    yield from _uploads_unknown()
    yield from _delta_lookups(known)
    yield from _listing()
    yield from _agent_only(known)


def _names(known: Known) -> Iterator[Probe]:
    for name in BAD_NAMES:
        base = f"/v2/{name}"
        for method, path, body in (
            ("GET", f"{base}/blobs/{known.layer}", b""),
            ("HEAD", f"{base}/blobs/{known.layer}", b""),
            ("DELETE", f"{base}/blobs/{known.layer}", b""),
            ("GET", f"{base}/manifests/v1", b""),
            ("PUT", f"{base}/manifests/v1", known.manifest_body),
            ("DELETE", f"{base}/manifests/v1", b""),
            ("POST", f"{base}/blobs/uploads/", b""),
            ("POST", f"{base}/blobs/uploads/?digest={digest_of(b'x')}", b"x"),
            ("POST", f"{base}/blobs/uploads/?mount={known.layer}&from={REPO}", b""),
            ("GET", f"{base}/tags/list", b""),
            ("GET", f"{base}/referrers/{known.manifest}", b""),
        ):
            headers = (("Content-Type", oci.OCI_MANIFEST),) if method == "PUT" else ()
            yield Probe("origin", "name", method, path, ERROR, headers, body)
        for method in ("GET", "HEAD"):
            yield Probe("registry", "name", method, f"{base}/manifests/v1", ERROR)
            yield Probe("registry", "name", method, f"{base}/blobs/{known.layer}", ERROR)
        for service, path in (
            ("control", f"/blobs/{known.layer}?repo={name}"),
            ("origin", f"/krill/v1/deltas/{known.layer}?have={known.layer}&repo={name}"),
            ("origin", f"/v2/{REPO}/blobs/uploads/?mount={known.layer}&from={name}"),
        ):
            method = "POST" if "uploads" in path else "GET"
            # a mount from a bad repository starts an upload instead (the spec's fallback)
            expect = ANY if "mount" in path else ERROR
            yield Probe(service, "name", method, path, expect)


def _digests(known: Known) -> Iterator[Probe]:
    for digest in BAD_DIGESTS:
        for method, path, body in (
            ("GET", f"/v2/{REPO}/blobs/{digest}", b""),
            ("HEAD", f"/v2/{REPO}/blobs/{digest}", b""),
            ("DELETE", f"/v2/{REPO}/blobs/{digest}", b""),
            ("POST", f"/v2/{REPO}/blobs/uploads/?digest={digest}", b"x"),
            ("POST", f"/v2/{REPO}/blobs/uploads/?mount={digest}&from={REPO}", b""),
            ("GET", f"/v2/{REPO}/manifests/{digest}", b""),
            ("PUT", f"/v2/{REPO}/manifests/{digest}", known.manifest_body),
            ("DELETE", f"/v2/{REPO}/manifests/{digest}", b""),
            ("GET", f"/v2/{REPO}/referrers/{digest}", b""),
            ("GET", f"/krill/v1/metainfo/{digest}", b""),
            ("GET", f"/krill/v1/deltas/{digest}", b""),
            ("GET", f"/krill/v1/deltas/{known.layer}?have={digest}", b""),
            ("POST", f"/krill/v1/claims/{digest}", b""),
            ("GET", f"/krill/v1/blobs/{digest}", b""),
        ):
            headers = (("Content-Type", oci.OCI_MANIFEST),) if method == "PUT" else ()
            lenient = decodes_to_a_digest(digest) or (tag_like(digest) and "manifests" in path)
            yield Probe("origin", "digest", method, path, ANY if lenient else ERROR, headers, body)
        for method in ("GET", "HEAD"):
            yield Probe("registry", "digest", method, f"/v2/{REPO}/blobs/{digest}", ERROR)
            lenient = tag_like(digest) or decodes_to_a_digest(digest)
            yield Probe("registry", "digest", method, f"/v2/{REPO}/manifests/{digest}",
                        ANY if lenient else ERROR)
            yield Probe("control", "digest", method, f"/blobs/{digest}", ERROR)
        for path in (f"/krill/v1/metainfo/{digest}", f"/metainfo/{digest}"):
            yield Probe("tracker", "metainfo", "GET", path, Expect.CLIENT_ERROR)


def _references(known: Known) -> Iterator[Probe]:
    for tag in BAD_TAGS:
        path = f"/v2/{REPO}/manifests/{tag}"
        headers = (("Content-Type", oci.OCI_MANIFEST),)
        yield Probe("origin", "reference", "GET", path, ERROR)
        yield Probe("origin", "reference", "HEAD", path, ERROR)
        yield Probe("origin", "reference", "DELETE", path, ERROR)
        yield Probe("origin", "reference", "PUT", path, ERROR, headers, known.manifest_body)
        yield Probe("registry", "reference", "GET", path, ERROR)
        yield Probe("registry", "reference", "HEAD", path, ERROR)


def _ranges(known: Known) -> Iterator[Probe]:
    targets = [
        ("origin", f"/v2/{REPO}/blobs/{known.layer}"),
        ("origin", f"/krill/v1/blobs/{known.layer}"),
        ("origin", f"/v2/{REPO}/manifests/v1"),
        ("registry", f"/v2/{REPO}/blobs/{known.layer}"),
        ("control", f"/blobs/{known.layer}"),
    ]
    for value in RANGES:
        for service, path in targets:
            # A blob answers a Range it cannot satisfy with 416 RANGE_INVALID; a manifest
            # (never ranged) and a satisfiable Range may be answered normally.
            refused = "/blobs/" in path and value not in SATISFIABLE_RANGES
            expect = Expect.RANGE_REFUSED if refused else ANY
            for method in ("GET", "HEAD"):
                yield Probe(service, "range", method, path, expect, (("Range", value),))
            # If-Range that is no date: ignored, so the Range still applies
            with_if_range = (("Range", value), ("If-Range", "x"))
            yield Probe(service, "range", "GET", path, expect, with_if_range)
    for accept in ("", "*/*;q=garbage", "text/html", "\u00e9", oci.OCI_INDEX + "," * 500):
        headers = (("Accept", accept),)
        for service in ("origin", "registry"):
            yield Probe(service, "accept", "GET", f"/v2/{REPO}/manifests/v1", ANY, headers)


def _framing(known: Known) -> Iterator[Probe]:
    """Bodies whose framing lies: aiohttp's parser may close or answer a bare 400."""
    body = b"some blob bytes"
    path = f"/v2/{REPO}/blobs/uploads/?digest={digest_of(body)}"
    lying = [
        (("Content-Length", "-1"),),
        (("Content-Length", "abc"),),
        (("Content-Length", "99999999999999999999999"),),
        (("Content-Length", str(len(body) + 100)),),
        (("Content-Length", "3"), ("Content-Length", "5")),
        (("Content-Length", f"{len(body)}, {len(body)}"),),
        (("Content-Length", " 0x10"),),
        (("Transfer-Encoding", "chunked"),),
        (("Transfer-Encoding", "chunked"), ("Content-Length", str(len(body)))),
        (("Transfer-Encoding", "gzip, chunked"),),
        (("Transfer-Encoding", "bogus"),),
    ]
    for headers in lying:
        for service, method, target in (
            ("origin", "POST", path),
            ("origin", "PUT", f"/v2/{REPO}/manifests/framing"),
            ("registry", "PUT", f"/v2/{REPO}/manifests/v1"),
            ("control", "POST", "/preheat"),
        ):
            yield Probe(
                service, "framing", method, target, Expect.CLOSED_OR_CLIENT_ERROR,
                headers, body, content_length=False,
            )
    # A body whose Content-Length is honest but whose digest or size is a lie.
    for method in ("POST", "PUT"):
        yield Probe("origin", "framing", method, path.replace(digest_of(body), known.layer), ERROR,
                    (), body)


def _manifests(known: Known) -> Iterator[Probe]:
    for label, body in manifest_bodies(known):
        for content_type in CONTENT_TYPES:
            headers = (("Content-Type", content_type),) if content_type else ()
            for ref in ("bad", digest_of(body)):
                yield Probe(
                    "origin", f"manifest: {label}", "PUT", f"/v2/{REPO}/manifests/{ref}", ERROR,
                    headers, body,
                )
    for label, body in accepted_or_refused(known):
        for content_type in CONTENT_TYPES:
            headers = (("Content-Type", content_type),) if content_type else ()
            yield Probe("origin", f"manifest: {label}", "PUT", f"/v2/{REPO}/manifests/odd", ANY,
                        headers, body)
    # the real manifest under an index's media type, or a type that is no manifest's (then
    # the body's own mediaType decides, as distribution does)
    for content_type in (oci.OCI_INDEX, oci.DOCKER_LIST):
        yield Probe("origin", "manifest: wrong Content-Type", "PUT", f"/v2/{REPO}/manifests/v2",
                    ERROR, (("Content-Type", content_type),), known.manifest_body)
    for content_type in (oci.OCI_CONFIG, "application/x-bogus", "\u00e9", "a" * 4000):
        yield Probe("origin", "manifest: wrong Content-Type", "PUT", f"/v2/{REPO}/manifests/v2",
                    ANY, (("Content-Type", content_type),), known.manifest_body)


def _uploads_unknown() -> Iterator[Probe]:
    for upload in BAD_UPLOAD_IDS:
        path = f"/v2/{REPO}/blobs/uploads/{upload}"
        for method, target, body in (
            ("GET", path, b""),
            ("PATCH", path, b"x"),
            ("PUT", f"{path}?digest={digest_of(b'x')}", b"x"),
            ("PUT", path, b""),
            ("DELETE", path, b""),
        ):
            yield Probe("origin", "upload id", method, target, ERROR, (), body)


def _delta_lookups(known: Known) -> Iterator[Probe]:
    haves = [
        "",
        ",",
        ",,,,,",
        "garbage",
        known.layer + ",garbage",
        ",".join([UNKNOWN] * 100),  # past MAX_HAVE (64)
        ",".join(["x"] * 200),
        "%00",
        "%ff%fe",
        UNKNOWN + "&have=" + "x",
        "sha256:" + "a" * 4_000,
        known.layer.upper(),
    ]
    for have in haves:
        for target in (known.layer, UNKNOWN, known.manifest):
            yield Probe("origin", "delta", "GET", f"/krill/v1/deltas/{target}?have={have}", ANY)
            yield Probe(
                "origin", "delta", "GET",
                f"/krill/v1/deltas/{target}?have={have}&repo=Bad/Name", ERROR,
            )


def _listing() -> Iterator[Probe]:
    for query in ("n=-1", "n=abc", "n=99999999999999999999999999", "n=", "n=1&n=x", "last=%00",
                  "last=" + "z" * 5000, "n=%C2%B2", "n=1e3", "n=0x10", "n=" + "9" * 5000,
                  "n=%D9%A3", "n=%EF%BC%91"):
        yield Probe("origin", "listing", "GET", f"/v2/_catalog?{query}", ANY)
        yield Probe("origin", "listing", "GET", f"/v2/{REPO}/tags/list?{query}", ANY)
    for query in ("artifactType=", "artifactType=%00", "artifactType=" + "x" * 5000):
        yield Probe("origin", "listing", "GET", f"/v2/{REPO}/referrers/{UNKNOWN}?{query}", ANY)


def _agent_only(known: Known) -> Iterator[Probe]:
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        for path in (
            f"/v2/{REPO}/manifests/v1",
            f"/v2/{REPO}/blobs/uploads/",
            f"/v2/{REPO}/blobs/{known.layer}",
        ):
            yield Probe("registry", "push to agent", method, path, ERROR, (), b"{}")
    for path in ("/v2/team/app/tags", "/v2/_catalog", "/v2/team/app", "/v2/%2e%2e/", "/nothing"):
        yield Probe("registry", "unknown path", "GET", path, ERROR)
    for digest in (known.manifest, "sha256:xyz", "nodigest", UNKNOWN):  # the origin's, filtered
        query = "?artifactType=" + "x" * 300
        for target in (f"/v2/{REPO}/referrers/{digest}", f"/v2/{REPO}/referrers/{digest}{query}"):
            yield Probe("registry", "referrers", "GET", target, ANY)
    for query in ("n=-1", "n=x", "last=" + "z" * 5000, "n=" + "9" * 5000, "ns=..", "ns=%00"):
        yield Probe("registry", "listing", "GET", f"/v2/{REPO}/tags/list?{query}", ANY)
    for ns in ("..", "%00", "Docker.IO", "a" * 300, "host:99999", "evil.example/../x"):
        yield Probe("registry", "namespace", "GET", f"/v2/{REPO}/manifests/v1?ns={ns}", ANY)
    bodies = [
        b"", b"{", b"[]", b"null", b'"x"', b'{"image": 5}', b'{"image": ""}', b'{"image": null}',
        b'{"image": "Team/App:1"}', b'{"image": "../x:1"}', b'{"image": "team/app:-bad"}',
        b'{"image": "team/app@sha256:xyz"}',
        b'{"image": "%s"}' % (b"a" * 5000),
        b'{"image": "team/app:v1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 100_000, b"\xff\xfe", b'{"image": "\\ud800"}',
    ]
    for body in bodies:
        for content_type in ("application/json", "text/plain"):
            yield Probe("control", "preheat", "POST", "/preheat", ERROR,
                        (("Content-Type", content_type),), body)
    for path in ("/blobs/", "/preheat?x=1", "/nothing", "/blobs/%2e%2e"):
        yield Probe("control", "unknown path", "GET", path, ERROR)


def upload_scenarios(known: Known) -> Iterator[Scenario]:
    """Chunked uploads out of order (one session each)."""
    start = Probe("origin", "setup", "POST", f"/v2/{REPO}/blobs/uploads/", ANY)
    data = b"0123456789"

    def patch(chunk: bytes, content_range: str | None = None) -> Probe:
        headers = (("Content-Range", content_range),) if content_range is not None else ()
        return Probe("origin", "upload", "PATCH", "{location}", ANY, headers, chunk)

    def finish(digest: str, chunk: bytes = b"", content_range: str | None = None) -> Probe:
        headers = (("Content-Range", content_range),) if content_range is not None else ()
        return Probe("origin", "upload", "PUT", f"{{location}}?digest={digest}", ANY,
                     headers, chunk)

    def checked(probe: Probe, expect: Expect = ERROR) -> tuple[bool, Probe]:
        return True, Probe(probe.service, "upload sequence", probe.method, probe.target, expect,
                           probe.headers, probe.body)

    ok = digest_of(data)
    for content_range in ("bytes=a-b", "0-9", "5-9", "-1-4", "4-0", "0-4/3",
                          "0-99999999999999999999999", "garbage", "10-14", "1-5", "0-4,5-9", "",
                          "5-" + "9" * 5_000, "\u0665-\u0669"):
        yield Scenario("upload sequence", (
            (False, start), (False, patch(data[:5], "0-4")),
            checked(patch(data[5:], content_range), ANY),
        ))
    yield Scenario("upload sequence", ((False, start), checked(finish(ok))))  # PUT, no PATCH
    yield Scenario("upload sequence", ((False, start), checked(
        Probe("origin", "upload", "PUT", "{location}", ANY, (), data))))  # PUT, no digest
    for bad in BAD_DIGESTS[:8]:
        yield Scenario("upload sequence", (
            (False, start), (False, patch(data)), checked(finish(bad)),
        ))
    yield Scenario("upload sequence", (
        (False, start), (False, patch(data)), checked(finish(digest_of(b"other"))),
        checked(patch(b"more")),  # the failed session is gone
    ))
    yield Scenario("upload sequence", (
        (False, start), (False, patch(data)), (False, finish(ok)),  # completed...
        checked(patch(b"more")),  # ...then reused
        checked(finish(ok)),
        checked(Probe("origin", "upload", "GET", "{location}", ANY)),
        checked(Probe("origin", "upload", "DELETE", "{location}", ANY)),
    ))
    yield Scenario("upload sequence", (
        (False, start), (False, Probe("origin", "upload", "DELETE", "{location}", ANY)),
        checked(patch(data)), checked(finish(ok, data)),
    ))
    yield Scenario("upload sequence", (
        (False, start),
        checked(patch(data[:5], "0-4"), ANY),
        checked(patch(data[:5], "0-4"), ANY),  # the same chunk twice
        checked(finish(ok, data[5:], "10-14"), ANY),
    ))
    yield Scenario("upload sequence", (  # a session started for another repository
        (False, start),
        checked(patch(data), ANY),
        checked(Probe("origin", "upload", "PUT",
                      f"/v2/team/other/blobs/uploads/{{uuid}}?digest={ok}", ANY)),
        checked(Probe("origin", "upload", "PATCH", "/v2/team/other/blobs/uploads/{uuid}", ANY,
                      (), data)),
    ))
    yield Scenario("upload sequence", (  # the known layer's digest for other bytes
        (False, start), (False, patch(data)), checked(finish(known.layer)),
    ))
