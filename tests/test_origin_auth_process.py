"""The real ``krill origin --auth`` process: skopeo through it, and what its log holds.

Issue 19: credentials are never logged. The origin runs at debug level
while skopeo pushes with a password, fails with a wrong one and pulls with a
token; afterwards no password, Basic header value or token is anywhere in
its log.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import imagebuild
from tests.agent_cluster import agent_process, origin_process
from tests.components import free_port, krill_process, skopeo
from tests.origin_auth import PASSWORDS, TLS_OFF, creds, write_auth_files

WRONG = "not-alices-password-9"


def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def basic_value(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_passwords_and_tokens_never_reach_the_origin_log(tmp_path: Path) -> None:
    auth = write_auth_files(tmp_path / "auth")
    image = imagebuild.build_image([imagebuild.random_files(3, count=1, size=4096)])
    layout = imagebuild.write_oci_layout(tmp_path / "layout", image.manifest, [image], "v1")
    port = free_port()
    base, host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    args = ["origin", "--listen", host, "--data", str(tmp_path / "data"), "--auth", str(auth)]
    log_path = tmp_path / "origin.log"
    with krill_process([*args, "--log-level", "debug"], log_path, f"{base}/health"):
        skopeo(
            "copy",
            *TLS_OFF,
            "--dest-creds",
            creds("alice"),
            f"oci:{layout}:v1",
            f"docker://{host}/private/app:v1",
        )
        wrong = subprocess.run(
            [
                "skopeo",
                "copy",
                *TLS_OFF,
                "--dest-creds",
                f"alice:{WRONG}",
                f"oci:{layout}:v1",
                f"docker://{host}/private/app:v2",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert wrong.returncode != 0
        skopeo(
            "copy",
            *TLS_OFF,
            "--src-creds",
            creds("bob"),
            f"docker://{host}/private/app:v1",
            f"oci:{tmp_path / 'pulled'}:v1",
        )
        status, body = get(
            f"{base}/auth/token?service=krill&scope=repository:private/app:pull",
            {"Authorization": "Basic " + basic_value("bob", PASSWORDS["bob"])},
        )
        assert status == 200
        token = json.loads(body)["token"]
        status, _ = get(f"{base}/v2/private/app/tags/list", {"Authorization": f"Bearer {token}"})
        assert status == 200
        status, _ = get(f"{base}/v2/", {"Authorization": "Basic " + basic_value("bob", WRONG)})
        assert status == 401
    log = log_path.read_text()
    assert "origin.auth_enabled" in log and "origin.auth_disabled" not in log
    assert "auth.token_issued user=bob" in log  # the log does say who did what
    secrets = [
        *PASSWORDS.values(),
        WRONG,
        token,
        token.split(".")[-1],
        basic_value("bob", PASSWORDS["bob"]),
        basic_value("alice", WRONG),
    ]
    for secret in secrets:
        assert secret not in log


def test_an_origin_without_auth_warns_once_that_it_is_open(tmp_path: Path) -> None:
    port = free_port()
    args = ["origin", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "data")]
    log_path = tmp_path / "origin.log"
    with krill_process(args, log_path, f"http://127.0.0.1:{port}/health"):
        status, _ = get(f"http://127.0.0.1:{port}/v2/", {})
        assert status == 200
    assert log_path.read_text().count("origin.auth_disabled") == 1


def test_through_an_agent_public_images_pull_and_private_ones_do_not(tmp_path: Path) -> None:
    """An agent without node credentials: what anonymous may read works through it; a
    private repository is refused with 401 and a challenge at the agent's own token
    endpoint (not a 502), even for bob: such an agent cannot check who reads its cache
    later, so it does not fetch with a client's credentials (with node credentials it
    does: tests/test_security_private.py)."""
    auth = write_auth_files(tmp_path / "auth")
    image = imagebuild.build_image([imagebuild.random_files(4, count=1, size=4096)])
    layout = imagebuild.write_oci_layout(tmp_path / "layout", image.manifest, [image], "v1")
    with origin_process(tmp_path / "origin", "--auth", str(auth)) as origin:
        host = origin.removeprefix("http://")
        for repo in ("public/app", "private/app"):
            skopeo(
                "copy",
                *TLS_OFF,
                "--dest-creds",
                creds("alice"),
                f"oci:{layout}:v1",
                f"docker://{host}/{repo}:v1",
            )
        with agent_process(tmp_path / "agent", origin) as agent:
            via_agent = f"docker://{agent.registry_hostport}"
            skopeo(
                "copy",
                *TLS_OFF,
                "--src-no-creds",
                f"{via_agent}/public/app:v1",
                f"oci:{tmp_path / 'public'}:v1",
            )
            refused = subprocess.run(
                [
                    "skopeo",
                    "copy",
                    *TLS_OFF,
                    "--src-no-creds",
                    f"{via_agent}/private/app:v1",
                    f"oci:{tmp_path / 'private'}:v1",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert refused.returncode != 0
            assert not (tmp_path / "private" / "index.json").exists()
            manifest = f"{agent.registry}/v2/private/app/manifests/v1"
            accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            status, _ = get(manifest, accept)
            assert status == 401
            status, _ = get(manifest, {**accept, "Authorization": "Basic " + basic_value(
                "bob", PASSWORDS["bob"])})  # fmt: skip
            assert status == 401
            request = urllib.request.Request(manifest, headers=accept)
            with pytest.raises(urllib.error.HTTPError) as challenged:
                urllib.request.urlopen(request, timeout=30)
            assert challenged.value.headers["WWW-Authenticate"].startswith(
                f'Bearer realm="{agent.registry}/auth/token"'
            )
