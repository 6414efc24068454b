"""`krill up` starts origin, tracker and agent; pushes and pulls work; Ctrl-C stops all."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.agent_cluster import build_layout, push
from tests.components import SKOPEO_FLAGS, free_port, krill_command, skopeo
from tests.imagebuild import read_oci_layout_digests


def wait_for_banner(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"krill up exited ({proc.wait()}):\n{''.join(lines)}")
        lines.append(line)
        if "Press Ctrl-C to stop" in line:
            return "".join(lines)
    raise AssertionError("krill up printed no banner:\n" + "".join(lines))


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def test_krill_up_runs_a_working_cluster_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(4)]
    cmd = krill_command(
        "up",
        "--data",
        str(tmp_path / "data"),
        "--origin-port",
        ports[0],
        "--tracker-port",
        ports[1],
        "--agent-port",
        ports[2],
        "--registry-port",
        ports[3],
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = wait_for_banner(proc)
        up = json.loads((tmp_path / "data" / "up.json").read_text())
        assert up["registry"] in banner and "skopeo copy" in banner and "ctr images pull" in banner
        image = build_layout(tmp_path / "layout", seed=51)
        push(image, f"http://{up['origin']}", "team/up:1")
        out = tmp_path / "out"
        skopeo("copy", *SKOPEO_FLAGS, f"docker://{up['registry']}/team/up:1", f"oci:{out}:latest")
        assert read_oci_layout_digests(out) == read_oci_layout_digests(image.layout)
        health = json.loads(urllib.request.urlopen(f"http://{up['agent']}/health").read())
        assert health["status"] == "ok" and health["swarm"] is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for key, path in (("origin", "/v2/"), ("tracker", "/health"), ("agent", "/health")):
        assert not answers(f"http://{up[key]}{path}"), f"{key} still running after Ctrl-C"
