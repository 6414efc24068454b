"""A signed, path-style HTTP client for one S3 bucket, and the errors it tells users.

``S3Client.send`` signs each request with SigV4 (krill.s3sign), sends it with
aiohttp to ``http://endpoint/bucket/key`` (path-style: every S3-compatible
store accepts it, and it needs no wildcard DNS), retries what a store sheds
under load, and turns every failure into an ``S3Error`` whose message says
what to do: ``S3BucketMissingError`` (create the bucket or fix the URL),
``S3CredentialsError`` (the key, its permissions, the region, or the clock),
``S3UnreachableError`` (the endpoint setting, or the store is down). Messages
name the endpoint, bucket and access key id, never the secret.

The blob semantics on top of it (verification, multipart) are
``krill.s3backend``'s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from krill.digests import Digest
from krill.s3sign import Credentials, canonical_path, canonical_query, sign_request

__all__ = [
    "KeyMissingError",
    "S3BucketMissingError",
    "S3Client",
    "S3CredentialsError",
    "S3Error",
    "S3Location",
    "S3StalledError",
    "S3UnreachableError",
    "child_text",
    "parse_error",
]

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 64 << 10
# Seconds before each retry of a request that met a dropped connection or a 5xx.
RETRY_DELAYS = (0.2, 1.0, 4.0)
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
    }
)


class S3Error(Exception):
    """The object store refused or failed a request; the message says what to do."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class S3BucketMissingError(S3Error):
    pass


class S3CredentialsError(S3Error):
    pass


class S3UnreachableError(S3Error):
    pass


class S3StalledError(S3UnreachableError):
    """The store took the request and said nothing for the session's ``sock_read``.

    Tried again once only: the stalled connection is dropped, so a second try
    gets a fresh one (a pooled connection a NAT or load balancer forgot stalls
    the same way), but a store silent that long (hung, paused, swapping) rarely
    answers a third sooner, and four attempts held a push ~4 minutes before its
    503, past many clients' patience.
    """


class KeyMissingError(S3Error):
    """NoSuchKey: ``krill.s3backend`` turns it into BlobMissingError or None."""


@dataclass(frozen=True)
class S3Location:
    """Which store, bucket and key prefix the blobs live under."""

    endpoint: URL
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def blob_key(self, digest: Digest) -> str:
        return self.key(f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"


class S3Client:
    """Signed path-style requests to one bucket; every failure becomes an ``S3Error``."""

    def __init__(
        self,
        location: S3Location,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.location = location
        self._credentials = credentials
        self._session = session
        self._now = now
        self.retry_delays = retry_delays

    async def send(
        self,
        method: str,
        key: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        payload_hash: str | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> aiohttp.ClientResponse:
        """Send one signed request; the caller releases the response (``async with``).

        A dropped connection or a 500/502/503/504 (S3's ``SlowDown`` is a 503)
        is tried again after each of ``retry_delays``: every request we send is
        idempotent (a part or object PUT of the same bytes, a completion of the
        same parts), and stores shed load this way. Anything else fails at once.
        """
        payload_hash = payload_hash or hashlib.sha256(body).hexdigest()
        stalled = False
        for delay in (*self.retry_delays, None):
            try:
                resp = await self._send_once(method, key, query, headers, body, payload_hash)
            except S3StalledError:
                if stalled or delay is None:
                    raise
                stalled = True
            except S3UnreachableError:
                if delay is None:
                    raise
            else:
                if resp.status in ok:
                    return resp
                if resp.status not in RETRIED_STATUSES or delay is None:
                    async with resp:
                        raise await self._error(resp, method, key)
                resp.release()
            log.info("s3.retry method=%s key=%s in=%.1fs", method, key, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send_once(
        self,
        method: str,
        key: str | None,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        body: bytes,
        payload_hash: str,
    ) -> aiohttp.ClientResponse:
        path = f"/{self.location.bucket}" + (f"/{key}" if key is not None else "")
        endpoint = self.location.endpoint
        signed = sign_request(
            self._credentials,
            method=method,
            host=_host_header(endpoint),
            path=path,
            query=query,
            headers=headers,
            payload_hash=payload_hash,
            region=self.location.region,
            now=self._now(),
        )
        # The query goes out exactly as signed (yarl would leave '+' or '/' as they are).
        target = str(endpoint.with_path(canonical_path(path), encoded=True))
        url = URL(f"{target}?{canonical_query(query)}" if query else target, encoded=True)
        try:
            return await self._session.request(method, url, headers=signed.headers, data=body)
        except aiohttp.SocketTimeoutError:  # sock_read passed without a byte (not a connect)
            raise S3StalledError(
                f"the object store at {endpoint} took a {method} and did not answer in time; "
                "check that it is running and not overloaded"
            ) from None
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise S3UnreachableError(
                f"cannot reach the object store at {endpoint} ({exc.__class__.__name__}: {exc}); "
                "check the S3 endpoint setting and that the store is running"
            ) from None

    async def _error(self, resp: aiohttp.ClientResponse, method: str, key: str | None) -> S3Error:
        text = (await resp.content.read(ERROR_BODY_LIMIT)).decode("utf-8", "replace")
        code, message = parse_error(text)
        where = self.location
        if code == "NoSuchKey" or (resp.status == 404 and method == "HEAD" and key is not None):
            return KeyMissingError(f"no object {key} in {where}", status=404, code="NoSuchKey")
        if code == "NoSuchBucket" or (resp.status == 404 and key is None):
            return S3BucketMissingError(
                f"bucket {where.bucket!r} does not exist at {where.endpoint}; create it (e.g. "
                f"`aws s3 mb s3://{where.bucket} --endpoint-url {where.endpoint}`) or fix the "
                "storage URL",
                status=resp.status,
                code=code or "NoSuchBucket",
            )
        if code == "RequestTimeTooSkewed":
            return S3CredentialsError(
                f"the object store at {where.endpoint} refused the request's time ({message}); "
                "SigV4 allows 15 minutes: set this machine's clock (NTP)",
                status=resp.status,
                code=code,
            )
        if resp.status == 403 or code in CREDENTIAL_CODES:
            return S3CredentialsError(
                f"the object store at {where.endpoint} rejected access key "
                f"{self._credentials.access_key!r} for bucket {where.bucket!r} "
                f"({code or resp.status}: {message or 'forbidden'}); check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY (or the credentials file), the key's permissions on the "
                f"bucket and the region ({where.region})",
                status=resp.status,
                code=code,
            )
        return S3Error(
            f"the object store at {where.endpoint} answered {method} {key or where.bucket} with "
            f"{resp.status} {code} {message}".rstrip(),
            status=resp.status,
            code=code,
        )

    async def check_bucket(self, *, once: bool = False) -> None:
        """Fail now, with a message saying what to fix, if the bucket cannot be used.

        ``once``: a single attempt, for a readiness probe, which reports what
        it sees now (the retries would outlast its timeout and hide the cause).
        """
        query = {"list-type": "2", "max-keys": "1"}
        if not once:
            async with await self.send("GET", query=query):
                return
        empty = hashlib.sha256(b"").hexdigest()
        async with await self._send_once("GET", None, query, None, b"", empty) as resp:
            if resp.status != 200:
                raise await self._error(resp, "GET", None)

    async def create_bucket(self) -> None:
        """Create the bucket (tests and set-up; an existing one of ours is fine)."""
        async with await self.send("PUT", ok=(200, 409)):
            pass


def _host_header(endpoint: URL) -> str:
    """The Host header aiohttp will send: the port only when it is not the scheme's default."""
    host = endpoint.raw_host or ""
    return host if endpoint.is_default_port() else f"{host}:{endpoint.port}"


def parse_error(text: str) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body; empty strings if it is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return "", text.strip()[:200]
    return child_text(root, "Code"), child_text(root, "Message")


def child_text(element: ET.Element, name: str) -> str:
    """A child's text, whatever XML namespace the store puts its elements in."""
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == name:
            return (child.text or "").strip()
    return ""
