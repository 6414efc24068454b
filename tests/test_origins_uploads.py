"""An upload begun on one origin replica and continued on another fails cleanly there.

Upload sessions live on the replica that began them (``origin.uploads``: not
in the bucket). A client sent to another replica midway (the Service
balanced its next connection elsewhere, or the first replica died) gets the
distribution spec's 404 ``BLOB_UPLOAD_UNKNOWN`` for every step of the
session, with a message that says why and what to do, and nothing of the
half-sent blob reaches the bucket; starting again on that replica works, and
the first replica's session is untouched by it all.
"""

from __future__ import annotations

from krill.s3backend import S3Backend
from tests.fixtures_origin import digest_of, error_code
from tests.s3_fixtures import s3_location, seaweedfs
from tests.test_origin_s3 import payload, push
from tests.test_origin_s3_replicas import StartReplica, bucket, bucket_digests, start_replica

__all__ = ["bucket", "s3_location", "seaweedfs", "start_replica"]  # fixtures used here


async def test_every_step_of_an_upload_begun_elsewhere_is_blob_upload_unknown(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    data = payload(71, 300_000)
    digest = digest_of(data)
    resp = await a.client.post("/v2/team/app/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    assert (await a.client.patch(location, data=data[:1000])).status == 202

    steps = [
        b.client.get(location),
        b.client.patch(location, data=data[1000:2000]),
        b.client.put(location, params={"digest": digest}, data=data[1000:]),
        b.client.delete(location),
    ]
    for step in steps:
        resp = await step
        assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
        text = await resp.text()
        assert "another origin replica" in text and "start the upload again" in text
    assert digest not in await bucket_digests(bucket)

    # The session goes on where it began; a fresh one on B works too.
    resp = await a.client.put(location, params={"digest": digest}, data=data[1000:])
    assert resp.status == 201
    other = payload(72, 100_000)
    assert (await push(b.client, "team/app", other)).status == 201
    assert {digest, digest_of(other)} <= await bucket_digests(bucket)
