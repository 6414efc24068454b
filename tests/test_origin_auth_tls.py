"""``krill origin --tls-cert/--tls-key [--client-ca]``: skopeo over https with a CA made here.

issue 19: with a certificate from a CA made in the test, skopeo pulls over
https when given that CA and refuses without it; with ``--client-ca``, a
client without a certificate is refused. The origin also has ``--auth``, so
the token flow runs over https too (the challenge's realm is https).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krill import processes
from krill.config import ConfigError
from krill.origin.auth_tls import server_ssl_context
from krill.origin.config import OriginConfig
from tests import imagebuild
from tests.components import free_port, krill_command, skopeo
from tests.origin_auth import creds, write_auth_files
from tests.polling import until_sync

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True)
    ca, ca_key = root / "ca.crt", root / "ca.key"
    openssl(
        "req", "-x509", *EC_KEY, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=krill test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        key, csr, ext = root / f"{name}.key", root / f"{name}.csr", root / f"{name}.ext"
        ext.write_text(extensions)
        openssl("req", "-new", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN=krill {name}")
        openssl(
            "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", root / f"{name}.crt", "-days", "2", "-extfile", ext,
        )  # fmt: skip
    return Pki(
        ca, root / "server.crt", root / "server.key", root / "client.crt", root / "client.key"
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def cert_dir(root: Path, pki: Pki, *, client: bool) -> Path:
    """A containers-style certs directory: ``*.crt`` CAs, ``*.cert``/``*.key`` client pair."""
    root.mkdir(parents=True)
    (root / "ca.crt").write_bytes(pki.ca.read_bytes())
    if client:
        (root / "client.cert").write_bytes(pki.client_cert.read_bytes())
        (root / "client.key").write_bytes(pki.client_key.read_bytes())
    return root


def answers(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def https_origin(tmp_path: Path, pki: Pki, *extra: str) -> Iterator[str]:
    """A real ``krill origin --auth ... --tls-cert ... --tls-key ...``; yields host:port."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    auth = write_auth_files(tmp_path / "auth")
    args = [
        "origin", "--listen", host, "--data", str(tmp_path / "data"), "--auth", str(auth),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), *extra,
    ]  # fmt: skip
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    with processes.logged_process(krill_command(*args), tmp_path / "origin.log", grace=10) as proc:
        until_sync(
            lambda: proc.poll() is not None or answers(f"https://{host}/health", context),
            "the https origin to answer",
        )
        assert proc.poll() is None, (tmp_path / "origin.log").read_text()
        yield host


def refused(*args: str) -> str:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, f"skopeo {' '.join(args)} succeeded; expected a refusal"
    return proc.stderr


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    image = imagebuild.build_image([imagebuild.random_files(5, count=1, size=4096)])
    return imagebuild.write_oci_layout(tmp_path / "layout", image.manifest, [image], "v1")


def test_skopeo_over_https_trusts_the_ca_it_is_given_and_no_other(
    tmp_path: Path, pki: Pki, layout: Path
) -> None:
    certs = cert_dir(tmp_path / "certs", pki, client=False)
    with https_origin(tmp_path, pki) as host:
        skopeo(
            "copy", "--dest-cert-dir", str(certs), "--dest-creds", creds("alice"),
            f"oci:{layout}:v1", f"docker://{host}/public/app:v1",
        )  # fmt: skip
        out = tmp_path / "pulled"
        skopeo(
            "copy", "--src-cert-dir", str(certs), "--src-no-creds",
            f"docker://{host}/public/app:v1", f"oci:{out}:v1",
        )  # fmt: skip
        assert imagebuild.read_oci_layout_digests(out) == imagebuild.read_oci_layout_digests(layout)
        error = refused("inspect", "--no-creds", f"docker://{host}/public/app:v1")
        assert "certificate" in error  # x509: certificate signed by unknown authority
        context = ssl.create_default_context(cafile=pki.ca)
        with pytest.raises(urllib.error.HTTPError) as challenged:
            urllib.request.urlopen(f"https://{host}/v2/", timeout=10, context=context)
        assert challenged.value.headers["WWW-Authenticate"].startswith(
            f'Bearer realm="https://{host}/auth/token"'
        )


def test_with_a_client_ca_a_client_without_a_certificate_is_refused(
    tmp_path: Path, pki: Pki, layout: Path
) -> None:
    with_cert = cert_dir(tmp_path / "with-cert", pki, client=True)
    without_cert = cert_dir(tmp_path / "without-cert", pki, client=False)
    with https_origin(tmp_path, pki, "--client-ca", str(pki.ca)) as host:
        skopeo(
            "copy", "--dest-cert-dir", str(with_cert), "--dest-creds", creds("alice"),
            f"oci:{layout}:v1", f"docker://{host}/public/app:v1",
        )  # fmt: skip
        error = refused(
            "inspect", "--cert-dir", str(without_cert), "--no-creds",
            f"docker://{host}/public/app:v1",
        )  # fmt: skip
        assert "pinging container registry" in error  # the handshake, before any HTTP
        context = ssl.create_default_context(cafile=pki.ca)
        assert not answers(f"https://{host}/health", context)


def test_tls_settings_are_checked_at_start(tmp_path: Path, pki: Pki) -> None:
    data = tmp_path / "data"
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        OriginConfig(data=data, tls_cert=pki.server_cert)
    with pytest.raises(ConfigError, match="client_ca needs tls_cert"):
        OriginConfig(data=data, client_ca=pki.ca)
    mismatched = OriginConfig(data=data, tls_cert=pki.server_cert, tls_key=pki.client_key)
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        server_ssl_context(mismatched)
    assert server_ssl_context(OriginConfig(data=data)) is None
