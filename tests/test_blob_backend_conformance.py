"""One contract for every ``BlobBackend``: the directory store and S3 (real SeaweedFS).

Each test runs once per backend. The S3 one signs every request against a
store that checks signatures, uses a part size of S3's 5 MiB minimum so a
12 MiB blob goes multipart, and has a key prefix of its own in a shared bucket.
The S3-only cases at the end are its errors: a wrong secret, a missing bucket,
an endpoint nobody listens on, each with a message saying what to fix.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from krill.blobbackend import (
    BlobBackend,
    BlobMissingError,
    DigestMismatchError,
    DirectoryBackend,
    PutOutcome,
    RangeNotSatisfiableError,
)
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.s3backend import (
    MIN_PART_SIZE,
    S3Backend,
    S3BucketMissingError,
    S3CredentialsError,
    S3Error,
    S3Location,
    S3UnreachableError,
)
from krill.s3sign import Credentials
from tests.components import free_port
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here

BIG = 12 << 20  # more than two S3 parts of MIN_PART_SIZE


@pytest.fixture(params=["directory", "s3"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobBackend]:
    """A maker, not the backend: SeaweedFS starts outside the event loop (and only for s3);
    the S3 backend's HTTP session must be made inside it."""
    if request.param == "directory":
        return lambda: DirectoryBackend(BlobStore(tmp_path / "store"))
    store: SeaweedFS = request.getfixturevalue("seaweedfs")
    location: S3Location = request.getfixturevalue("s3_location")
    return lambda: S3Backend(location, store.credentials, part_size=MIN_PART_SIZE)


@pytest.fixture
async def backend(make_backend: Callable[[], BlobBackend]) -> AsyncIterator[BlobBackend]:
    impl = make_backend()
    yield impl
    await impl.close()


async def chunks_of(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(
    backend: BlobBackend, digest: Digest, start: int = 0, length: int | None = None
) -> bytes:
    async with backend.open(digest, start, length) as reader:
        return b"".join([chunk async for chunk in reader.chunks])


def blob(size: int, seed: int = 0) -> tuple[bytes, Digest]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)
    return data, Digest.of_bytes(data)


async def test_put_then_read_back(backend: BlobBackend) -> None:
    data, digest = blob(100_000)
    assert await backend.put_stream(digest, chunks_of(data, 7_000)) is PutOutcome.STORED
    assert await read_all(backend, digest) == data
    info = await backend.stat(digest)
    assert info is not None and info.size == len(data) and info.digest == digest
    assert await backend.exists(digest)


async def test_put_file_leaves_the_file_and_a_second_put_sends_nothing(
    backend: BlobBackend, tmp_path: Path
) -> None:
    data, digest = blob(50_000, seed=1)
    path = tmp_path / "layer"
    path.write_bytes(data)
    assert await backend.put_file(digest, path) is PutOutcome.STORED
    assert path.read_bytes() == data
    assert await backend.put_file(digest, path) is PutOutcome.ALREADY_PRESENT
    assert await read_all(backend, digest) == data


async def test_empty_blob(backend: BlobBackend) -> None:
    digest = Digest.of_bytes(b"")
    await backend.put_stream(digest, chunks_of(b""))
    assert await read_all(backend, digest) == b""
    info = await backend.stat(digest)
    assert info is not None and info.size == 0


async def test_ranges(backend: BlobBackend) -> None:
    data, digest = blob(10_000, seed=2)
    await backend.put_stream(digest, chunks_of(data))
    assert await read_all(backend, digest, 100, 50) == data[100:150]
    assert await read_all(backend, digest, 9_990) == data[9_990:]
    assert await read_all(backend, digest, 9_000, 5_000) == data[9_000:]  # clamped to the end
    async with backend.open(digest, 100, 50) as reader:
        assert (reader.size, reader.start, reader.length) == (10_000, 100, 50)
    with pytest.raises(RangeNotSatisfiableError):
        await read_all(backend, digest, 10_000)


async def test_wrong_digest_is_refused_and_nothing_is_stored(backend: BlobBackend) -> None:
    data, _ = blob(20_000, seed=3)
    _, claimed = blob(20_000, seed=4)
    with pytest.raises(DigestMismatchError):
        await backend.put_stream(claimed, chunks_of(data))
    assert not await backend.exists(claimed)
    assert claimed not in {info.digest async for info in backend.list()}


async def test_multipart_blob_round_trip_and_refusal(backend: BlobBackend, tmp_path: Path) -> None:
    data, digest = blob(BIG, seed=5)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert await backend.put_file(digest, path) is PutOutcome.STORED
    assert await read_all(backend, digest, BIG - 10) == data[-10:]
    assert hashlib.sha256(await read_all(backend, digest)).hexdigest() == digest.hex
    _, claimed = blob(BIG, seed=6)
    with pytest.raises(DigestMismatchError):
        await backend.put_file(claimed, path)
    assert not await backend.exists(claimed)


async def test_missing_blob(backend: BlobBackend) -> None:
    _, digest = blob(10, seed=7)
    assert await backend.stat(digest) is None
    assert not await backend.exists(digest)
    assert not await backend.delete(digest)
    with pytest.raises(BlobMissingError):
        await read_all(backend, digest)
    with pytest.raises(BlobMissingError):
        await read_all(backend, digest, 5)


async def test_delete(backend: BlobBackend) -> None:
    data, digest = blob(1_000, seed=8)
    await backend.put_stream(digest, chunks_of(data))
    assert await backend.delete(digest)
    assert not await backend.exists(digest)
    with pytest.raises(BlobMissingError):
        await read_all(backend, digest)


async def test_list_gives_every_blob_with_its_size(backend: BlobBackend) -> None:
    stored = {}
    for seed, size in enumerate((10, 2_000, 30_000)):
        data, digest = blob(size, seed=100 + seed)
        await backend.put_stream(digest, chunks_of(data))
        stored[digest] = size
    listed = {info.digest: info.size async for info in backend.list()}
    assert listed == stored
    assert all([info.modified > 0 async for info in backend.list()])


async def test_concurrent_puts_of_one_digest_leave_one_correct_blob(
    backend: BlobBackend, tmp_path: Path
) -> None:
    data, digest = blob(MIN_PART_SIZE + 1_000, seed=9)  # multipart on S3
    path = tmp_path / "same"
    path.write_bytes(data)
    outcomes = await asyncio.gather(*(backend.put_file(digest, path) for _ in range(4)))
    assert set(outcomes) <= {PutOutcome.STORED, PutOutcome.ALREADY_PRESENT}
    assert await read_all(backend, digest) == data
    assert [info.digest async for info in backend.list()] == [digest]


# S3 only: what the user is told when the store can't be used.


async def test_s3_wrong_secret_is_refused_by_the_store(
    seaweedfs: SeaweedFS, s3_location: S3Location
) -> None:
    wrong = Credentials(seaweedfs.credentials.access_key, "not-the-secret")
    backend = S3Backend(s3_location, wrong)
    try:
        with pytest.raises(S3CredentialsError, match="AWS_SECRET_ACCESS_KEY") as caught:
            await backend.client.check_bucket()
        assert "not-the-secret" not in str(caught.value)
        data, digest = blob(10)
        with pytest.raises(S3CredentialsError):
            await backend.put_stream(digest, chunks_of(data))
    finally:
        await backend.close()


async def test_s3_missing_bucket_says_to_create_it(seaweedfs: SeaweedFS) -> None:
    location = S3Location(seaweedfs.endpoint, "no-such-bucket-here")
    backend = S3Backend(location, seaweedfs.credentials)
    try:
        with pytest.raises(S3BucketMissingError, match="create it"):
            await backend.client.check_bucket()
    finally:
        await backend.close()


async def test_s3_unreachable_endpoint_names_it() -> None:
    endpoint = URL(f"http://127.0.0.1:{free_port()}")
    backend = S3Backend(S3Location(endpoint, "b"), Credentials("a", "s"), retry_delays=(0, 0))
    try:
        with pytest.raises(S3UnreachableError, match=str(endpoint.port)):
            await backend.exists(blob(1)[1])
    finally:
        await backend.close()


async def test_s3_refused_multipart_upload_is_aborted(
    seaweedfs: SeaweedFS, s3_location: S3Location
) -> None:
    backend = S3Backend(s3_location, seaweedfs.credentials, part_size=MIN_PART_SIZE)
    data, _ = blob(BIG, seed=10)
    _, claimed = blob(BIG, seed=11)
    try:
        with pytest.raises(DigestMismatchError):
            await backend.put_stream(claimed, chunks_of(data))
        query = {"uploads": "", "prefix": s3_location.prefix}
        async with await backend.client.send("GET", query=query) as resp:
            listing = await resp.text()
        assert "ListMultipartUploadsResult" in listing and "<UploadId>" not in listing
    finally:
        await backend.close()


@pytest.mark.parametrize("failures", [1, 2])
async def test_s3_requests_shed_by_the_store_are_sent_again(
    aiohttp_server: AiohttpServer, failures: int
) -> None:
    """A store under load answers 503 SlowDown: sent again after each retry delay (one here),
    re-signed each time; past the retries the error is the store's."""
    signatures: list[str] = []

    async def shed_then_accept(request: web.Request) -> web.Response:
        signatures.append(request.headers["Authorization"])
        if len(signatures) <= failures:
            return web.Response(status=503, text="<Error><Code>SlowDown</Code></Error>")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("PUT", "/{path:.*}", shed_then_accept)
    server = await aiohttp_server(app)
    location = S3Location(URL(f"http://127.0.0.1:{server.port}"), "b")
    backend = S3Backend(location, Credentials("a", "s"), retry_delays=(0,))
    try:
        request = backend.client.send("PUT", "k", body=b"bytes")
        if failures == 1:
            async with await request:
                pass
        else:
            with pytest.raises(S3Error, match="503 SlowDown"):
                await request
        assert len(signatures) == 2
    finally:
        await backend.close()
