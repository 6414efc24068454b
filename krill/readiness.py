"""``GET /ready``: named checks run side by side, each within a short timeout.

``/health`` answers as long as the process serves HTTP (liveness: restart me
if it stops). ``/ready`` says whether this instance can do its job *now*
(readiness: send me traffic), so it asks what the job depends on: the agent
its origin, tracker, cache and swarm port, the origin its store and tracker,
the tracker its peer store. Each service lists its ``Check``s in its own
package (``krill.agent.readiness``, ...); this module runs them and renders
the answer, the same JSON on all three:

    {"status": "ready", "checks": {"tracker": {"outcome": "pass", "detail": "...",
                                               "seconds": 0.004}, ...}}

200 when every check passed or was skipped (not configured), 503 otherwise. A
check that is not ``required`` (the instance still does its job without it: an
origin whose tracker is down still serves the registry) is reported but does
not make it unready; the status is then ``degraded``, with 200.

The checks run concurrently and each gets ``CHECK_TIMEOUT`` seconds, well
under the chart's 5 s probe timeout: a dependency that hangs is reported as
``timeout`` by name instead of the kubelet seeing the whole probe time out
with no body to explain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiohttp
from aiohttp import web

from krill.blobstore import BlobStore
from krill.clock import SYSTEM_CLOCK, Clock, timeout

__all__ = [
    "CHECK_TIMEOUT",
    "Check",
    "CheckFailed",
    "CheckResult",
    "Outcome",
    "Skipped",
    "port_accepts",
    "ready_handler",
    "ready_response",
    "run_checks",
    "serves_health",
    "store_writable",
    "writable",
]

log = logging.getLogger(__name__)

# Per check; the chart's readiness probe gives the whole request 5 s.
CHECK_TIMEOUT = 2.0


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # not configured here (no tracker given, swarm off): not a failure


class CheckFailed(Exception):
    """Raised by a probe: the dependency answered, but not as it should."""


class Skipped(Exception):
    """Raised by a probe: this instance does not use the dependency (its message says why)."""


# A probe returns a short detail when the dependency is fine and raises otherwise.
Probe = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    probe: Probe
    # False: a failure is shown (status "degraded") but the instance stays ready.
    required: bool = True


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    outcome: Outcome
    detail: str
    seconds: float
    required: bool = True

    @property
    def passed(self) -> bool:
        return self.outcome in (Outcome.PASS, Outcome.SKIPPED)

    def as_json(self) -> dict[str, object]:
        return {"outcome": str(self.outcome), "detail": self.detail, "seconds": self.seconds}


async def run_checks(
    checks: Sequence[Check], *, seconds: float = CHECK_TIMEOUT, clock: Clock = SYSTEM_CLOCK
) -> list[CheckResult]:
    """Every check's result, in the order given; they run concurrently."""
    return list(await asyncio.gather(*(_run_one(check, seconds, clock) for check in checks)))


async def _run_one(check: Check, seconds: float, clock: Clock) -> CheckResult:
    started = clock.monotonic()
    outcome, detail = Outcome.PASS, ""
    try:
        async with timeout(clock, seconds):
            detail = await check.probe()
    except TimeoutError:
        outcome, detail = Outcome.TIMEOUT, f"no answer within {seconds:g}s"
    except Skipped as exc:
        outcome, detail = Outcome.SKIPPED, str(exc)
    except Exception as exc:  # any failure of the dependency is this check's answer
        outcome, detail = Outcome.FAIL, str(exc) or repr(exc)
    elapsed = round(clock.monotonic() - started, 4)
    if outcome in (Outcome.FAIL, Outcome.TIMEOUT):  # the body says it too; a probe runs often
        log.debug("ready.check_failed check=%s outcome=%s detail=%r", check.name, outcome, detail)
    return CheckResult(check.name, outcome, detail, elapsed, check.required)


def ready_response(results: Sequence[CheckResult]) -> web.Response:
    ready = all(result.passed for result in results if result.required)
    whole = all(result.passed for result in results)
    body = {
        "status": "not_ready" if not ready else "ready" if whole else "degraded",
        "checks": {result.name: result.as_json() for result in results},
    }
    return web.json_response(body, status=200 if ready else 503)


def ready_handler(
    checks_for: Callable[[web.Application], Sequence[Check]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``/ready`` handler running the checks ``checks_for(app)`` lists."""

    async def handle_ready(request: web.Request) -> web.Response:
        return ready_response(await run_checks(checks_for(request.app)))

    return handle_ready


# ---- probes several services share -------------------------------------------


async def serves_health(session: aiohttp.ClientSession, base_url: str) -> str:
    """The Krill service at ``base_url`` answers ``GET /health`` with 200."""
    url = f"{base_url.rstrip('/')}/health"
    try:
        async with session.get(url, allow_redirects=False) as response:
            status = response.status
    except (aiohttp.ClientError, OSError) as exc:
        raise CheckFailed(f"GET {url}: {exc!r}") from None
    if status != 200:
        raise CheckFailed(f"GET {url} answered {status}")
    return f"{url} answered 200"


async def store_writable(store: BlobStore) -> str:
    """A blob could be written: its incoming directory, where every write starts, takes a file."""
    return await writable(store.incoming_path().parent)


async def writable(directory: Path) -> str:
    """A file can be made, written and removed in ``directory`` (a full or read-only disk fails)."""
    await asyncio.to_thread(_write_and_remove, directory)
    return f"{directory} is writable"


def _write_and_remove(directory: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".ready-", dir=directory)
    try:
        os.write(fd, b"ready\n")
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


async def port_accepts(host: str, port: int) -> str:
    """A TCP connection to ``host:port`` is accepted (and closed at once).

    A wildcard ``host`` (``0.0.0.0``, ``::``) is tried on the loopback address.
    """
    host = host.removeprefix("[").removesuffix("]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise CheckFailed(f"nothing accepts connections on {host}:{port}: {exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return f"{host}:{port} accepts connections"
