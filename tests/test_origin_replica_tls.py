"""Origin replicas over https reach each other at pod addresses their certificate does not name.

The chart gives every origin replica one certificate (for the Service name) and
``--replica-url https://$(POD_IP):PORT``. A review found the replicas' probes
checked that certificate against the system's CAs and the pod address, so every
probe failed and each replica saw only itself alive: each owned, cached and
seeded every blob. ``auth_tls.replica_ssl_context`` trusts the origin's own
certificate (the leaf of its chain file, not the issuer after it), the host
name aside, and presents it (for ``client_ca``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from krill.origin.auth_tls import replica_ssl_context
from krill.origin.config import load_origin_config
from krill.tls import ServerTls, server_ssl_context
from tests.test_origin_auth_tls import EC_KEY, openssl


def issue(root: Path, name: str, ca: Path | None = None) -> tuple[Path, Path]:
    """A certificate for DNS:krill-origin only, signed by ``ca`` (self-signed without)."""
    key, cert = root / f"{name}.key", root / f"{name}.crt"
    ext = "subjectAltName=DNS:krill-origin\nextendedKeyUsage=serverAuth,clientAuth\n"
    (root / f"{name}.ext").write_text(ext)
    if ca is None:
        openssl("req", "-x509", *EC_KEY, "-keyout", key, "-out", cert, "-days", "2",
                "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:krill-origin",
                "-addext", "extendedKeyUsage=serverAuth,clientAuth")  # fmt: skip
        return cert, key
    csr = root / f"{name}.csr"
    openssl("req", "-new", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca.with_suffix(".key"),
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", root / f"{name}.ext",
    )  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    ca_cert, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    openssl("req", "-x509", *EC_KEY, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
            "-subj", "/CN=krill test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    origin_cert, origin_key = issue(tmp_path, "origin", ca=ca_cert)
    chain = tmp_path / "origin-chain.crt"  # as cert-manager writes tls.crt: leaf, then issuer
    chain.write_text(origin_cert.read_text() + ca_cert.read_text())
    return {
        "ca": (ca_cert, ca_key),
        "origin": (chain, origin_key),
        "sibling": issue(tmp_path, "sibling", ca=ca_cert),  # same CA, another certificate
        "stranger": issue(tmp_path, "stranger"),
    }


async def replica(cert: Path, key: Path, client_ca: Path) -> AsyncIterator[str]:
    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/ready", ready)
    tls = server_ssl_context(ServerTls(cert, key, client_ca))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls)
    try:
        yield f"https://127.0.0.1:{server.port}"  # a pod address: not in the certificate
    finally:
        await server.close()


async def probe(url: str, context: ssl.SSLContext) -> bool:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with session.get(f"{url}/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False


async def test_a_replica_with_our_certificate_is_reached_and_a_stranger_is_not(
    pki: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    cert, key = pki["origin"]
    ca = pki["ca"][0]
    config = load_origin_config(
        flags={"data": str(tmp_path / "data"), "tls_cert": cert, "tls_key": key}, environ={}
    )
    context = replica_ssl_context(config)
    assert context is not None
    async for url in replica(cert, key, client_ca=ca):  # mutual TLS on, as with client_ca
        assert await probe(url, context)
        by_the_book = ssl.create_default_context(cafile=ca)  # CA and host name checked
        assert not await probe(url, by_the_book)  # what the probes did: the pod address fails
    for other in ("stranger", "sibling"):  # a sibling from our CA is not one of us either
        other_cert, other_key = pki[other]
        async for url in replica(other_cert, other_key, client_ca=ca):
            assert not await probe(url, context), other
    plain = load_origin_config(flags={"data": str(tmp_path / "data")}, environ={})
    assert replica_ssl_context(plain) is None
