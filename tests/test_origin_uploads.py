"""Upload sessions under concurrency and floods: races end in spec errors, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from krill.origin.appkeys import STORE, UPLOADS
from krill.origin.uploads import UploadSession
from tests.fixtures_origin import StartOrigin, digest_of, error_code
from tests.polling import until


async def client_for(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient, **settings: Any
) -> TestClient:
    return await aiohttp_client(await start_origin(deltas=False, **settings))


async def start_session(client: TestClient) -> str:
    resp = await client.post("/v2/a/b/blobs/uploads/")
    assert resp.status == 202
    return resp.headers["Location"]


def session_at(client: TestClient, location: str) -> UploadSession:
    session = client.app[UPLOADS].get("a/b", location.rsplit("/", 1)[-1])
    assert session is not None
    return session


async def slow_body(*parts: bytes) -> AsyncIterator[bytes]:
    """A slow client's body: a pause after each part (the scenario, not a wait for an event)."""
    for part in parts:
        yield part
        await asyncio.sleep(0.3)


async def test_delete_during_a_patch_waits_for_it(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client = await client_for(start_origin, aiohttp_client)
    location = await start_session(client)
    patch = asyncio.create_task(client.patch(location, data=slow_body(b"x" * 100_000, b"y")))
    await until(session_at(client, location).lock.locked, "the PATCH to be mid-body")
    delete = await client.delete(location)
    assert delete.status == 204
    assert (await patch).status == 202  # it finished before the DELETE took effect
    assert (await client.get(location)).status == 404
    assert list((client.app[STORE].root / "incoming").iterdir()) == []


async def test_a_second_put_on_a_finished_session_is_upload_unknown(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client = await client_for(start_origin, aiohttp_client)
    location = await start_session(client)
    data = b"z" * 10
    url = f"{location}?digest={digest_of(data)}"
    first = asyncio.create_task(client.put(url, data=slow_body(data[:5], data[5:])))
    await until(session_at(client, location).lock.locked, "the first PUT to be mid-body")
    second = await client.put(url, data=b"")
    assert (await first).status == 201
    assert second.status == 404
    assert await error_code(second) == "BLOB_UPLOAD_UNKNOWN"


async def test_upload_sessions_are_capped_and_hold_no_file_until_bytes_arrive(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client = await client_for(start_origin, aiohttp_client, max_upload_sessions=3)
    locations = [await start_session(client) for _ in range(3)]
    incoming = client.app[STORE].root / "incoming"
    assert list(incoming.iterdir()) == []  # no temp file (no descriptor) per idle session
    refused = await client.post("/v2/a/b/blobs/uploads/")
    assert refused.status == 429
    assert await error_code(refused) == "TOOMANYREQUESTS"
    # A finished session frees its place; an empty blob can still be pushed by POST-PUT.
    empty = f"{locations[0]}?digest={digest_of(b'')}"
    assert (await client.put(empty)).status == 201
    assert (await client.post("/v2/a/b/blobs/uploads/")).status == 202
