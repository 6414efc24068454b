"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS).

A ``BlobBackend`` (krill.blobbackend) over aiohttp with our own SigV4
(krill.s3sign); no boto, whose botocore stack is synchronous and large.
Addressing is path-style (``http://endpoint/bucket/key``), which every
S3-compatible store accepts and which needs no wildcard DNS.

Keys mirror the directory layout: ``<prefix>/blobs/sha256/<2 hex>/<64 hex>``.

**Never a partial or unverified object.** A PUT of one object is atomic in
S3, and an incomplete multipart upload is invisible. So:

* a blob smaller than ``part_size`` is buffered (at most one part), hashed,
  and PUT only if it matches; the request carries the digest as its signed
  ``x-amz-content-sha256``, so the store refuses the body if it was damaged
  on the way;
* a larger one is a multipart upload: each part is sent as it fills (signed
  with its own sha256) while the whole is hashed, and the upload is completed
  only if the digest matches, else aborted (also on any error or
  cancellation). Memory: one part per upload in flight.

**Errors say what to do**: ``S3BucketMissingError``, ``S3CredentialsError``,
``S3UnreachableError`` (all ``S3Error``) name the endpoint, bucket and access
key id (never the secret). A missing blob is ``BlobMissingError``, as from
every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import aiohttp
from yarl import URL

from krill.blobbackend import (
    READ_CHUNK,
    BlobInfo,
    BlobMissingError,
    BlobReader,
    PutOutcome,
    RangeNotSatisfiableError,
    check_range,
    file_chunks,
)
from krill.blobstore import DigestMismatchError
from krill.digests import Digest, DigestError
from krill.s3sign import Credentials, canonical_path, sign_request

__all__ = [
    "DEFAULT_PART_SIZE",
    "S3Backend",
    "S3BucketMissingError",
    "S3Client",
    "S3CredentialsError",
    "S3Error",
    "S3Location",
    "S3UnreachableError",
]

log = logging.getLogger(__name__)

# Multipart parts: S3's minimum is 5 MiB (except the last), its maximum count 10,000.
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000
ERROR_BODY_LIMIT = 64 << 10
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


class _KeyMissing(S3Error):
    """NoSuchKey: the backend turns it into BlobMissingError or None."""


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
    ) -> None:
        self.location = location
        self._credentials = credentials
        self._session = session
        self._now = now

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
        """Send one signed request; the caller releases the response (``async with``)."""
        path = f"/{self.location.bucket}" + (f"/{key}" if key is not None else "")
        endpoint = self.location.endpoint
        signed = sign_request(
            self._credentials,
            method=method,
            host=_host_header(endpoint),
            path=path,
            query=query,
            headers=headers,
            payload_hash=payload_hash or hashlib.sha256(body).hexdigest(),
            region=self.location.region,
            now=self._now(),
        )
        url = endpoint.with_path(canonical_path(path), encoded=True)
        if query:
            url = url.with_query(query)
        try:
            resp = await self._session.request(method, url, headers=signed.headers, data=body)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise S3UnreachableError(
                f"cannot reach the object store at {endpoint} ({exc.__class__.__name__}: {exc}); "
                "check the S3 endpoint setting and that the store is running"
            ) from None
        if resp.status not in ok:
            async with resp:
                raise await self._error(resp, method, key)
        return resp

    async def _error(self, resp: aiohttp.ClientResponse, method: str, key: str | None) -> S3Error:
        text = (await resp.content.read(ERROR_BODY_LIMIT)).decode("utf-8", "replace")
        code, message = _parse_error(text)
        where = self.location
        if code == "NoSuchKey" or (resp.status == 404 and method == "HEAD" and key is not None):
            return _KeyMissing(f"no object {key} in {where}", status=404, code="NoSuchKey")
        if code == "NoSuchBucket" or (resp.status == 404 and key is None):
            return S3BucketMissingError(
                f"bucket {where.bucket!r} does not exist at {where.endpoint}; create it (e.g. "
                f"`aws s3 mb s3://{where.bucket} --endpoint-url {where.endpoint}`) or fix the "
                "storage URL",
                status=resp.status,
                code=code or "NoSuchBucket",
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

    async def check_bucket(self) -> None:
        """Fail now, with a message saying what to fix, if the bucket cannot be used."""
        async with await self.send("GET", query={"list-type": "2", "max-keys": "1"}):
            pass

    async def create_bucket(self) -> None:
        """Create the bucket (tests and set-up; an existing one of ours is fine)."""
        async with await self.send("PUT", ok=(200, 409)):
            pass


def _host_header(endpoint: URL) -> str:
    """The Host header aiohttp will send: the port only when it is not the scheme's default."""
    host = endpoint.raw_host or ""
    return host if endpoint.is_default_port() else f"{host}:{endpoint.port}"


def _parse_error(text: str) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body; empty strings if it is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return "", text.strip()[:200]
    return _child_text(root, "Code"), _child_text(root, "Message")


def _child_text(element: ET.Element, name: str) -> str:
    """A child's text, whatever XML namespace the store puts its elements in."""
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == name:
            return (child.text or "").strip()
    return ""


class S3Backend:
    """A ``BlobBackend`` in one bucket (under an optional key prefix)."""

    def __init__(
        self,
        location: S3Location,
        credentials: Credentials,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum)")
        self.location = location
        self.part_size = part_size
        self._owns_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        )
        self.client = S3Client(location, credentials, self._session)

    @property
    def description(self) -> str:
        return str(self.location)

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    async def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            resp = await self.client.send("HEAD", self.location.blob_key(digest))
        except _KeyMissing:
            return None
        async with resp:
            return BlobInfo(digest, int(resp.headers["Content-Length"]), _mtime(resp.headers))

    async def exists(self, digest: Digest) -> bool:
        return await self.stat(digest) is not None

    async def put_file(self, digest: Digest, path: Path) -> PutOutcome:
        if await self.exists(digest):
            return PutOutcome.ALREADY_PRESENT
        size = (await asyncio.to_thread(path.stat)).st_size
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        await self._upload(digest, file_chunks(path), part_size)
        return PutOutcome.STORED

    async def put_stream(self, digest: Digest, chunks: AsyncIterable[bytes]) -> PutOutcome:
        if await self.exists(digest):
            return PutOutcome.ALREADY_PRESENT
        await self._upload(digest, chunks, self.part_size)
        return PutOutcome.STORED

    async def _upload(self, digest: Digest, chunks: AsyncIterable[bytes], part_size: int) -> None:
        """One PUT if it fits in a part, else multipart; the object appears only if verified."""
        hasher = hashlib.sha256()
        buffer = bytearray()
        multipart: _Multipart | None = None
        try:
            async for chunk in chunks:
                await asyncio.to_thread(hasher.update, chunk)
                buffer += chunk
                if len(buffer) >= part_size:
                    multipart = multipart or await _Multipart.start(self.client, digest)
                    await multipart.send_part(bytes(buffer))
                    buffer.clear()
            actual = Digest.from_hasher(hasher)
            if actual != digest:
                raise DigestMismatchError(digest, actual)
            if multipart is None:
                await self._put_object(digest, bytes(buffer))
                return
            if buffer:
                await multipart.send_part(bytes(buffer))
            await multipart.complete()
        except BaseException:
            if multipart is not None and not multipart.completed:
                await asyncio.shield(multipart.abort())
            raise
        log.info("s3.put digest=%s parts=%d", digest, multipart.parts_sent)

    async def _put_object(self, digest: Digest, data: bytes) -> None:
        key = self.location.blob_key(digest)
        # The signed payload hash is the digest: the store itself refuses a damaged body.
        async with await self.client.send("PUT", key, body=data, payload_hash=digest.hex):
            pass
        log.info("s3.put digest=%s bytes=%d parts=1", digest, len(data))

    @contextlib.asynccontextmanager
    async def open(
        self, digest: Digest, start: int = 0, length: int | None = None
    ) -> AsyncIterator[BlobReader]:
        if length == 0 or start > 0:  # a range S3 may refuse or not express: check it first
            info = await self.stat(digest)
            if info is None:
                raise BlobMissingError(digest, self.description)
            count = check_range(digest, start, length, info.size)
            if count == 0:
                yield BlobReader(info.size, start, 0, _no_chunks())
                return
            length = count
        headers = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            headers["Range"] = f"bytes={start}-{end}"
        try:
            resp = await self.client.send(
                "GET", self.location.blob_key(digest), headers=headers, ok=(200, 206)
            )
        except _KeyMissing:
            raise BlobMissingError(digest, self.description) from None
        except S3Error as exc:
            if exc.code == "InvalidRange":
                raise RangeNotSatisfiableError(digest, start, 0) from None
            raise
        async with resp:
            size = _total_size(resp)
            yield BlobReader(size, start, resp.content_length or 0, _body_chunks(resp))

    async def delete(self, digest: Digest) -> bool:
        if not await self.exists(digest):
            return False
        async with await self.client.send("DELETE", self.location.blob_key(digest), ok=(204, 200)):
            return True

    async def list(self) -> AsyncIterator[BlobInfo]:
        prefix = self.location.key("blobs/sha256/")
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            async with await self.client.send("GET", query=query) as resp:
                root = ET.fromstring(await resp.read())
            for item in root:
                if item.tag.rsplit("}", 1)[-1] == "Contents":
                    info = _listed_blob(item, prefix)
                    if info is not None:
                        yield info
            token = _child_text(root, "NextContinuationToken")
            if _child_text(root, "IsTruncated") != "true" or not token:
                return


class _Multipart:
    """One multipart upload in progress: parts sent in order, then completed or aborted."""

    def __init__(self, client: S3Client, key: str, upload_id: str) -> None:
        self._client = client
        self._key = key
        self._upload_id = upload_id
        self._etags: list[str] = []
        self.completed = False

    @classmethod
    async def start(cls, client: S3Client, digest: Digest) -> _Multipart:
        key = client.location.blob_key(digest)
        async with await client.send("POST", key, query={"uploads": ""}) as resp:
            upload_id = _child_text(ET.fromstring(await resp.read()), "UploadId")
        if not upload_id:
            raise S3Error(f"the object store answered no UploadId for a multipart upload of {key}")
        return cls(client, key, upload_id)

    @property
    def parts_sent(self) -> int:
        return len(self._etags)

    async def send_part(self, data: bytes) -> None:
        if len(self._etags) >= MAX_PARTS:
            raise S3Error(f"a blob of more than {MAX_PARTS} parts; raise the S3 part size")
        number = len(self._etags) + 1
        payload_hash = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        query = {"partNumber": str(number), "uploadId": self._upload_id}
        async with await self._client.send(
            "PUT", self._key, query=query, body=data, payload_hash=payload_hash
        ) as resp:
            self._etags.append(resp.headers.get("ETag", ""))

    async def complete(self) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in enumerate(self._etags, start=1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        query = {"uploadId": self._upload_id}
        async with await self._client.send("POST", self._key, query=query, body=body) as resp:
            text = await resp.text()
        code, message = _parse_error(text)
        if code:  # S3 may answer 200 and put the failure in the body
            raise S3Error(
                f"completing the multipart upload of {self._key} failed: {code} {message}"
            )
        self.completed = True

    async def abort(self) -> None:
        """Throw the parts away (best effort: the store's lifecycle rules catch what is left)."""
        try:
            query = {"uploadId": self._upload_id}
            async with await self._client.send("DELETE", self._key, query=query, ok=(204, 200)):
                pass
        except S3Error as exc:
            log.warning("s3.abort_failed key=%s error=%s", self._key, exc)


def _mtime(headers: Mapping[str, str]) -> float:
    value = headers.get("Last-Modified")
    return email.utils.parsedate_to_datetime(value).timestamp() if value else 0.0


def _total_size(resp: aiohttp.ClientResponse) -> int:
    """The whole object's size: from Content-Range on a 206, else the body's length."""
    content_range = resp.headers.get("Content-Range", "")
    if resp.status == 206 and "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return resp.content_length or 0


def _listed_blob(item: ET.Element, prefix: str) -> BlobInfo | None:
    """A listed key as a blob, or None for anything else under the prefix."""
    name = _child_text(item, "Key")[len(prefix) :]
    shard, _, hex_digest = name.partition("/")
    if len(hex_digest) != 64 or not hex_digest.startswith(shard):
        return None
    try:
        digest = Digest.parse(f"sha256:{hex_digest}")
    except DigestError:
        return None
    modified = dt.datetime.fromisoformat(_child_text(item, "LastModified")).timestamp()
    return BlobInfo(digest, int(_child_text(item, "Size") or 0), modified)


async def _body_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        yield chunk


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator with nothing to give
