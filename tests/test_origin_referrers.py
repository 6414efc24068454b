"""The referrers API: signatures and SBOMs pushed with a ``subject`` are listed for it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from krill import oci
from tests.fixtures_origin import StartOrigin, digest_of

SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"


async def push_manifest(client: TestClient, reference: str, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    resp = await client.put(
        f"/v2/team/app/manifests/{reference or digest_of(body)}",
        data=body,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    return body


def artifact(config_blob: bytes, subject: bytes, artifact_type: str) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": digest_of(config_blob),
            "size": 2,
        },
        "layers": [],
        "subject": {
            "mediaType": oci.OCI_MANIFEST,
            "digest": digest_of(subject),
            "size": len(subject),
        },
        "annotations": {"org.example.kind": artifact_type},
    }


async def test_referrers_list_the_manifests_naming_a_subject(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(await start_origin(deltas=False))
    config = b"{}"
    await client.post(f"/v2/team/app/blobs/uploads/?digest={digest_of(config)}", data=config)
    image = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(config),
            "size": 2,
        },
        "layers": [],
    }
    subject = await push_manifest(client, "v1", image)
    empty = await client.get(f"/v2/team/app/referrers/{digest_of(subject)}")
    assert empty.status == 200
    assert (await empty.json())["manifests"] == []

    signature = json.dumps(artifact(config, subject, SIGNATURE)).encode()
    resp = await client.put(
        f"/v2/team/app/manifests/{digest_of(signature)}",
        data=signature,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert resp.headers["OCI-Subject"] == digest_of(subject)  # clients skip the tag fallback
    await push_manifest(client, "", artifact(config, subject, SBOM))

    resp = await client.get(f"/v2/team/app/referrers/{digest_of(subject)}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == oci.OCI_INDEX
    index = await resp.json()
    assert index["mediaType"] == oci.OCI_INDEX
    assert sorted(d["artifactType"] for d in index["manifests"]) == [SBOM, SIGNATURE]
    sig = next(d for d in index["manifests"] if d["artifactType"] == SIGNATURE)
    assert sig == {
        "mediaType": oci.OCI_MANIFEST,
        "digest": digest_of(signature),
        "size": len(signature),
        "artifactType": SIGNATURE,
        "annotations": {"org.example.kind": SIGNATURE},
    }

    filtered = await client.get(
        f"/v2/team/app/referrers/{digest_of(subject)}", params={"artifactType": SBOM}
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["artifactType"] for d in (await filtered.json())["manifests"]] == [SBOM]

    # A deleted referrer is no longer listed; other repositories see none.
    assert (await client.delete(f"/v2/team/app/manifests/{digest_of(signature)}")).status == 202
    after = await (await client.get(f"/v2/team/app/referrers/{digest_of(subject)}")).json()
    assert [d["artifactType"] for d in after["manifests"]] == [SBOM]
    other = await (await client.get(f"/v2/team/other/referrers/{digest_of(subject)}")).json()
    assert other["manifests"] == []
    bad = await client.get("/v2/team/app/referrers/sha256:nothex")
    assert bad.status == 400
