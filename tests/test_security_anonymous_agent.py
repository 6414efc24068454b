"""An agent without node credentials serves only what anonymous may read, even from its cache.

Blobs reach such an agent through the swarm too (the tracker hands out any
blob's metainfo; peers send pieces to whoever asks), so a private layer another
node pulled could sit in its cache; it served it to anyone naming the digest
(security review, stop 39). Here the private layer is put in the agent's cache
directly, as the swarm would; the agent must still ask the origin, as anonymous,
and pass the 401 on. A public layer is served as before.
"""

from __future__ import annotations

from pathlib import Path

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import agent_process, build_layout, origin_process, push
from tests.test_security_nodes import write_node_auth
from tests.test_security_private import ALICE, get


def test_a_private_layer_in_the_cache_is_not_served_to_anonymous(tmp_path: Path) -> None:
    auth = write_node_auth(tmp_path / "auth")
    with origin_process(tmp_path / "origin", "--auth", str(auth)) as origin:
        private = build_layout(tmp_path / "private", seed=61)
        public = build_layout(tmp_path / "public", seed=62)
        push(private, origin, "private/app:1", creds=ALICE)
        push(public, origin, "public/app:1", creds=ALICE)
        secret = private.images[0].layers[0]
        shown = public.images[0].layers[0]
        cache = BlobStore(tmp_path / "agent" / "data" / "blobs")
        cache.put_bytes(secret.data, Digest.parse(secret.digest))  # as the swarm would
        with agent_process(tmp_path / "agent", origin) as agent:  # no node credentials
            status, headers, _ = get(f"{agent.registry}/v2/private/app/blobs/{secret.digest}")
            assert status == 401, "the origin's challenge, passed on"
            assert "Bearer" in headers["WWW-Authenticate"]
            status, _, _ = get(f"{agent.registry}/v2/public/app/blobs/{secret.digest}")
            assert status == 404, "public/app does not hold it"
            status, _, body = get(f"{agent.registry}/v2/public/app/blobs/{shown.digest}")
            assert status == 200 and body == shown.data
            assert (agent.data / "origin-access").read_text().strip() == "closed"
