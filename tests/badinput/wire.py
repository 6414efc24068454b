"""Probes (one malformed request each), scenarios (a sequence on one service) and a raw sender.

A probe is sent over its own connection with ``Connection: close`` and the
answer is read to EOF, so framing mistakes in the probe (a Content-Length
that lies) are the server's to handle, not a client library's to refuse.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

__all__ = ["Answer", "Expect", "Probe", "Scenario", "send"]


class Expect(enum.Enum):
    """The contract a probe's answer must meet (beyond "not a 5xx, not a hang")."""

    REGISTRY_ERROR = "a 4xx with the spec's error JSON"
    REGISTRY_ANY = "a 2xx/3xx, or a 4xx with the spec's error JSON"
    RANGE_REFUSED = "416 with the spec's error JSON, code RANGE_INVALID, and Content-Range"
    TRACKER_FAILURE = "200 with a bencoded 'failure reason'"
    TRACKER_ANY = "200 with a bencoded answer: 'failure reason' or 'interval'"
    CLIENT_ERROR = "a 4xx (any body)"
    CLOSED_OR_CLIENT_ERROR = "a 4xx, or the connection closed without an answer"
    ANSWERED = "any answer below 500 (a path the server may normalise to a real one)"


@dataclass(frozen=True)
class Probe:
    service: str  # a key of the test's service table: origin, registry, control, tracker
    what: str  # the corpus category, for the per-category counts
    method: str
    target: str  # the request target, sent byte for byte ("{location}": the scenario's session)
    expect: Expect
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_length: bool = True  # False: the probe's headers carry their own framing


@dataclass(frozen=True)
class Scenario:
    """Steps sent in order to one service; a step's ``{location}`` is the last Location seen
    (``{uuid}``: its last path segment, the upload session id).

    Only ``probes`` are checked against their contract; ``setup`` steps (an
    upload's start, a chunk that is fine) must merely succeed.
    """

    what: str
    steps: tuple[tuple[bool, Probe], ...]  # (is it checked, the request)

    @property
    def probes(self) -> list[Probe]:
        return [probe for checked, probe in self.steps if checked]


@dataclass
class Answer:
    status: int | None  # None: the connection closed without a status line
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


async def send(host: str, port: int, probe: Probe, location: str = "") -> Answer:
    target = probe.target.replace("{location}", location)
    target = target.replace("{uuid}", location.rsplit("/", 1)[-1])
    lines = [f"{probe.method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in probe.headers]
    if probe.content_length:
        lines.append(f"Content-Length: {len(probe.body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + probe.body)
        await writer.drain()
        if not probe.content_length and writer.can_write_eof():
            writer.write_eof()  # a body shorter than its own Content-Length ends here
        raw = await reader.read()
    except ConnectionError:
        raw = b""
    finally:
        writer.close()
    return _parse(raw, probe.method == "HEAD")


def _parse(raw: bytes, head: bool) -> Answer:
    if not raw.startswith(b"HTTP/"):
        return Answer(None)
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head:
        body = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    return Answer(int(status_line.split()[1]), headers, body)


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)
