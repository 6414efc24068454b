"""TLS between Krill's components (issue 19), with a CA made in the test.

Real processes: an https origin with ``--auth`` that requires client
certificates (``--client-ca``), a tracker serving https with its own
``--client-ca`` and reaching the origin with ``--ca``, a client certificate
and node credentials, and an agent whose control API serves https with
``--client-ca`` and which reaches the origin the same way. Checked: the
tracker's metainfo (fetched from the https origin) and the agent's control
API answer a client that trusts the CA and shows a certificate, and refuse
one without the certificate or without the CA; a pull through the agent
from the https origin works.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from krill import processes
from krill.config import ConfigError
from krill.tls import ClientTls, ServerTls, client_ssl_context, server_ssl_context
from krill.tracker.config import TrackerConfig
from tests import imagebuild
from tests.agent_cluster import build_layout
from tests.components import free_port, krill_command, skopeo
from tests.fixtures_origin import digest_of
from tests.origin_auth import PASSWORDS
from tests.polling import until_sync
from tests.test_origin_auth_tls import Pki, answers, cert_dir, make_pki
from tests.test_security_nodes import write_credentials, write_node_auth


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def trusting(pki: Pki, *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if client_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def https_get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def refuses(url: str, context: ssl.SSLContext) -> bool:
    """The TLS handshake fails (no HTTP answer at all)."""
    return not answers(url, context)


@contextlib.contextmanager
def https_process(args: list[str], log: Path, health: str, pki: Pki) -> Iterator[None]:
    context = trusting(pki, client_cert=True)
    with processes.logged_process(krill_command(*args), log, grace=10) as proc:
        until_sync(
            lambda: proc.poll() is not None or answers(health, context),
            f"{health} to answer over https",
        )
        assert proc.poll() is None, log.read_text()
        yield


def client_flags(pki: Pki, credentials: Path) -> list[str]:
    return [
        "--ca", str(pki.ca), "--client-cert", str(pki.client_cert),
        "--client-key", str(pki.client_key), "--origin-credentials", str(credentials),
    ]  # fmt: skip


def server_flags(pki: Pki) -> list[str]:
    return [
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--client-ca", str(pki.ca),
    ]  # fmt: skip


@pytest.mark.slow
def test_tracker_and_agent_speak_mutual_tls_with_a_ca_made_here(tmp_path: Path, pki: Pki) -> None:
    auth = write_node_auth(tmp_path / "auth")
    origin_port, tracker_port, api_port, registry_port = (free_port() for _ in range(4))
    origin = f"https://127.0.0.1:{origin_port}"
    tracker = f"https://127.0.0.1:{tracker_port}"
    api = f"https://127.0.0.1:{api_port}"
    image = build_layout(tmp_path / "layout", seed=47, layer_size=64 * 1024)
    layer = image.images[0].layers[0]
    certs = cert_dir(tmp_path / "certs", pki, client=True)
    origin_args = [
        "origin", "--listen", f"127.0.0.1:{origin_port}", "--data", str(tmp_path / "origin"),
        "--auth", str(auth), "--tracker", tracker, *server_flags(pki),
    ]  # fmt: skip
    tracker_args = [
        "tracker", "--listen", f"127.0.0.1:{tracker_port}", "--origin", origin,
        *server_flags(pki),
        *client_flags(pki, write_credentials(tmp_path / "tracker.toml", "tracker")),
    ]  # fmt: skip
    agent_config = tmp_path / "agent.toml"
    agent_config.write_text("use_swarm = false\n")  # libtorrent has no client certificate
    agent_args = [
        "agent", "--listen", f"127.0.0.1:{api_port}",
        "--registry-listen", f"127.0.0.1:{registry_port}", "--data", str(tmp_path / "agent"),
        "--origin", origin, "--tracker", tracker, "--config", str(agent_config),
        *server_flags(pki), *client_flags(pki, write_credentials(tmp_path / "node1.toml", "node1")),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            https_process(origin_args, tmp_path / "origin.log", f"{origin}/health", pki)
        )
        skopeo(
            "copy", "--all", "--dest-cert-dir", str(certs),
            "--dest-creds", f"alice:{PASSWORDS['alice']}",
            f"oci:{image.layout}:latest", f"docker://127.0.0.1:{origin_port}/public/tls:1",
        )  # fmt: skip
        stack.enter_context(
            https_process(tracker_args, tmp_path / "tracker.log", f"{tracker}/health", pki)
        )
        metainfo = f"{tracker}/krill/v1/metainfo/{layer.digest}"
        status, _ = https_get(metainfo, trusting(pki, client_cert=True))
        assert status == 200  # the tracker reached the https origin with CA, cert, credentials
        assert refuses(metainfo, trusting(pki, client_cert=False))
        assert refuses(metainfo, ssl.create_default_context())  # the system store lacks our CA
        stack.enter_context(https_process(agent_args, tmp_path / "agent.log", f"{api}/health", pki))
        status, _ = https_get(f"{api}/health", trusting(pki, client_cert=True))
        assert status == 200
        assert refuses(f"{api}/health", trusting(pki, client_cert=False))
        out = tmp_path / "pulled"
        skopeo(
            "copy", "--src-tls-verify=false", "--src-no-creds",
            f"docker://127.0.0.1:{registry_port}/public/tls:1", f"oci:{out}:v1",
        )  # fmt: skip
        assert imagebuild.read_oci_layout_digests(out) == image.digests
        status, body = https_get(f"{api}/blobs/{layer.digest}", trusting(pki, client_cert=True))
        assert status == 200 and digest_of(body) == layer.digest
        preheat = [
            "agent", "preheat", "public/tls:1", "--agent", api, "--ca", str(pki.ca),
        ]  # fmt: skip
        tls_client = ["--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key)]
        done = subprocess.run(
            krill_command(*preheat, *tls_client), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        refused = subprocess.run(
            krill_command(*preheat), capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0 and "cannot reach the agent" in refused.stderr


def test_tls_settings_of_tracker_and_clients_are_checked_at_start(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        TrackerConfig(tls_cert=pki.server_cert)
    with pytest.raises(ConfigError, match="client_ca needs tls_cert"):
        TrackerConfig(client_ca=pki.ca)
    with pytest.raises(ConfigError, match="client_cert and client_key go together"):
        TrackerConfig(client_cert=pki.client_cert)
    with pytest.raises(ConfigError, match="cannot load ca"):
        client_ssl_context(ClientTls(ca=tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        client_ssl_context(ClientTls(cert=pki.client_cert, key=pki.server_key))
    assert client_ssl_context(ClientTls()) is None
    assert server_ssl_context(ServerTls()) is None
    context = client_ssl_context(ClientTls(ca=pki.ca))
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
