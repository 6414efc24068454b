"""Preheat (API and CLI), streaming before a blob is complete, and containerd-config output."""

from __future__ import annotations

import json
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import ClientSession, web

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import ServingThread, agent_process, build_layout, origin_process, push
from tests.components import krill_command


def post_json(url: str, body: dict[str, object]) -> tuple[int, list[dict[str, object]]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, [json.loads(line) for line in response if line.strip()]
    except urllib.error.HTTPError as exc:
        return exc.code, [json.loads(exc.read())]


def stored(agent_data: Path, digest: str) -> bool:
    return BlobStore(agent_data / "blobs").has(Digest.parse(digest))


def test_preheat_pulls_this_platform_or_all_platforms(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=41, platforms=("amd64", "arm64"))
        push(image, origin, "team/pre:1")
        amd64, arm64 = image.images
        settings = {"platform_architecture": "amd64"}
        with agent_process(tmp_path / "agent", origin, settings=settings) as agent:
            status, events = post_json(f"{agent.api}/preheat", {"image": "team/pre:1"})
            assert status == 200
            assert events[0]["event"] == "start" and events[0]["blobs"] == 3
            index_digest = events[0]["digest"]  # the tag's manifest, as the agent resolved it
            assert index_digest.startswith("sha256:")
            assert events[-1] == {
                "event": "done",
                "blobs": 3,
                "total_bytes": sum(len(b.data) for b in amd64.blobs()),
            }
            assert all(stored(agent.data, b.digest) for b in amd64.blobs())
            assert not any(stored(agent.data, b.digest) for b in arm64.blobs())

            host = origin.removeprefix("http://")
            proc = subprocess.run(
                krill_command(
                    "agent",
                    "preheat",
                    f"{host}/team/pre:1",
                    "--agent",
                    agent.api,
                    "--all-platforms",
                ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            assert "6/6 blobs" in proc.stderr  # the progress bar's last state
            # which image the tag named: it may name another by the time a node pulls it
            assert f"team/pre:1 is {index_digest}, on this node now" in proc.stderr
            assert all(stored(agent.data, b.digest) for b in arm64.blobs())


def test_preheat_bad_input(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=42, platforms=("arm64",))
        push(image, origin, "team/arm:1")
        settings = {"platform_architecture": "amd64"}
        with agent_process(tmp_path / "agent", origin, settings=settings) as agent:
            status, body = post_json(f"{agent.api}/preheat", {"image": "team/missing:1"})
            assert status == 404 and body[0]["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            status, body = post_json(f"{agent.api}/preheat", {"image": "Team/Bad:1"})
            assert status == 400 and body[0]["errors"][0]["code"] == "NAME_INVALID"
            status, body = post_json(f"{agent.api}/preheat", {"nothing": 1})
            assert status == 400
            proc = subprocess.run(
                krill_command("agent", "preheat", "team/missing:1", "--agent", agent.api),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode != 0
            assert "not on the origin" in proc.stderr
            assert "Traceback" not in proc.stderr


def test_containerd_config_writes_hosts_toml(tmp_path: Path) -> None:
    hosts = tmp_path / "certs.d"
    proc = subprocess.run(
        krill_command(
            "agent",
            "containerd-config",
            "--agent",
            "127.0.0.1:7401",
            "--dir",
            str(hosts),
            "--registry",
            "docker.io",
            "--registry",
            "registry.local:5000=http://registry.local:5000",
            "--registry",
            "ghcr.io",
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.count("wrote") == 3
    docker = tomllib.loads((hosts / "docker.io" / "hosts.toml").read_text())
    assert docker["server"] == "https://registry-1.docker.io"
    assert docker["host"]["http://127.0.0.1:7401"]["capabilities"] == ["pull", "resolve"]
    local = tomllib.loads((hosts / "registry.local:5000" / "hosts.toml").read_text())
    assert local["server"] == "http://registry.local:5000"
    ghcr = tomllib.loads((hosts / "ghcr.io" / "hosts.toml").read_text())
    assert ghcr["server"] == "https://ghcr.io"
    for registry in ("a/b", "..", 'x=http://a"b'):  # ".." would write outside --dir
        bad = subprocess.run(
            krill_command(
                "agent",
                "containerd-config",
                "--agent",
                "x:1",
                "--dir",
                str(hosts),
                "--registry",
                registry,
            ),
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and "bad " in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hosts.toml").exists()


def manifests_only_origin(origin: str) -> web.Application:
    """A real front for the origin that serves manifests but fails every blob GET."""

    async def forward(request: web.Request) -> web.Response:
        if "/blobs/" in request.path:
            return web.Response(status=500, text="disk on fire")
        headers = {"Accept": request.headers.get("Accept", "*/*")}
        async with ClientSession() as session:
            async with session.get(f"{origin}{request.path_qs}", headers=headers) as upstream:
                body = await upstream.read()
                content_type = upstream.headers.get("Content-Type", "application/json")
                return web.Response(
                    status=upstream.status, body=body, headers={"Content-Type": content_type}
                )

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    return app


def test_preheat_reports_a_blob_that_cannot_be_fetched(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=44)
        push(image, origin, "team/broken:1")
        server = ServingThread()
        try:
            front = server.serve(manifests_only_origin(origin))
            with agent_process(tmp_path / "agent", front) as agent:
                status, events = post_json(f"{agent.api}/preheat", {"image": "team/broken:1"})
                assert status == 200  # the stream had started; the failure is its last event
                assert events[0]["event"] == "start"
                assert events[-1]["event"] == "error"
                assert "origin answered 500" in events[-1]["message"]
                proc = subprocess.run(
                    krill_command("agent", "preheat", "team/broken:1", "--agent", agent.api),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert proc.returncode == 1 and "origin answered 500" in proc.stderr
                assert "Traceback" not in proc.stderr
        finally:
            server.close()
