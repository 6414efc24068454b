"""What a new user's review of the CLI found, each case fixed: one readable line, a nonzero
exit, no traceback, nothing lost and nothing left behind.

The "unwritable" directories are under ``/proc``: the tests run as root in CI, for whom
no mode bit makes a directory unwritable, and ``/proc`` refuses new files to everyone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from krill.cli import main
from krill.clierror import unwritable
from tests.components import free_port, krill_command
from tests.imagebuild import write_oci_layout
from tests.test_convert import _image
from tests.test_delta_cli import _layer, _layers

LOG_KEYS = {"time", "level", "logger", "message", "request_id"}



def krill_fails(*args: str | Path) -> str:
    """Run ``krill ARGS``; its one line of stderr, once it has failed without a traceback."""
    proc = subprocess.run(
        krill_command(*map(str, args)), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- 1. --log-format json: the fatal error is a JSON log line too ----------------------------


def test_in_json_mode_the_error_is_one_json_log_object_and_the_exit_status_is_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRILL_LOG_FORMAT", "text")  # main sets it; restored after the test
    handlers_before = logging.getLogger().handlers[:]
    assert main(["--log-format", "json", "tracker", "--redis", "http://x"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    entry = json.loads(line)
    assert set(entry) == LOG_KEYS
    assert entry["level"] == "error" and entry["logger"] == "krill.cli"
    assert entry["message"].startswith("krill tracker: error: --redis must be a redis://")
    assert logging.getLogger().handlers == handlers_before


def test_a_json_logging_service_that_cannot_listen_writes_only_json(
    taken_port: int, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{taken_port}"
    args = ["--log-format", "json", "origin", "--listen", address, "--data", str(tmp_path)]
    proc = subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    entries = [json.loads(line) for line in proc.stderr.strip().splitlines()]
    assert all(set(entry) == LOG_KEYS for entry in entries)
    assert entries[-1]["level"] == "error"
    assert entries[-1]["message"].startswith(f"krill origin: error: cannot listen on {address}")


# --- 2-3. krill convert: unwritable DST, missing SRC, nothing left behind --------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    image = _image(7)
    return write_oci_layout(tmp_path / "img", image.manifest, [image], "v1")


@pytest.mark.parametrize("dst", ["/proc/krill-convert-review", "/proc"])
def test_convert_into_a_directory_it_cannot_write_names_dst(layout: Path, dst: str) -> None:
    line = krill_fails("convert", f"oci:{layout}:v1", f"oci:{dst}")
    assert line.startswith(f"krill convert: error: cannot write DST oci:{dst}: ")
    assert line.endswith("; choose a directory you can write")


def test_convert_from_a_missing_layout_says_so_and_creates_nothing(tmp_path: Path) -> None:
    line = krill_fails("convert", f"oci:{tmp_path / 'nope'}:latest", f"oci:{tmp_path / 'out'}")
    assert line == (
        f"krill convert: error: {tmp_path / 'nope'} does not exist; "
        "SRC oci:DIR must name an OCI image layout"
    )
    (tmp_path / "empty").mkdir()
    line = krill_fails("convert", f"oci:{tmp_path / 'empty'}", f"oci:{tmp_path / 'out'}")
    assert line.endswith("empty has no index.json; SRC oci:DIR must name an OCI image layout")
    assert not (tmp_path / "out").exists()


def test_a_failed_convert_removes_the_directories_it_created_and_only_those(
    layout: Path, tmp_path: Path
) -> None:
    manifest = json.loads((layout / "blobs/sha256" / _top_digest(layout)).read_bytes())
    (layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]).unlink()
    new = tmp_path / "new" / "deeper"
    assert "is missing" in krill_fails("convert", f"oci:{layout}:v1", f"oci:{new}")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine").write_text("not krill's")
    assert "is missing" in krill_fails("convert", f"oci:{layout}:v1", f"oci:{kept}")
    assert (kept / "mine").read_text() == "not krill's"
    assert not [p for p in kept.iterdir() if p.name.startswith(".krill-convert-")]


def _top_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return str(index["manifests"][0]["digest"]).split(":")[1]


# --- 4. krill delta: an OUT that cannot be written is named ----------------------------------


def test_delta_create_and_apply_name_an_out_they_cannot_write(tmp_path: Path) -> None:
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    delta = tmp_path / "d.krd"
    assert subprocess.run(krill_command("delta", "create", str(base), str(target), str(delta)),
                          capture_output=True, timeout=120).returncode == 0  # fmt: skip
    for action, second in (("create", target), ("apply", delta)):
        out = "/proc/krill-review.out"
        line = krill_fails("delta", action, base, second, out)
        assert line == (
            f"krill delta: error: cannot write OUT {out}: No such file or directory; "
            "choose a directory you can write"
        ), action


def test_unwritable_names_what_the_user_gave_for_its_directory_and_nothing_else() -> None:
    """A temporary file beside OUT counts as OUT; an input that sits there does not."""
    denied = OSError(13, "Permission denied", "/srv/out/.krill-tar-x1.tmp")
    error = unwritable(denied, Path("/srv/out"), "OUT /srv/out/d.krd")
    assert error is not None and str(error) == (
        "cannot write OUT /srv/out/d.krd: Permission denied; choose a directory you can write"
    )
    base = OSError(5, "Input/output error", "/srv/out/base.tgz")
    assert unwritable(base, Path("/srv/out"), "OUT d.krd", [Path("/srv/out/base.tgz")]) is None
    elsewhere = OSError(13, "Permission denied", "/srv/other/x")
    assert unwritable(elsewhere, Path("/srv/out"), "OUT d.krd") is None


# --- 2, 5. krill up ---------------------------------------------------------------------------


def up_ports(origin: int | None = None) -> list[str]:
    """Every port flag, each a free port (``origin`` for --origin-port if given)."""
    return [
        "--origin-port", str(origin or free_port()), "--tracker-port", str(free_port()),
        "--agent-port", str(free_port()), "--registry-port", str(free_port()),
    ]  # fmt: skip


def up_fails(*args: str | Path, within: float) -> str:
    """Run ``krill up ARGS``, expecting it to fail within ``within`` seconds; its last line.

    A ``krill up`` still running then is stopped (Ctrl-C, which stops its services) before
    the test fails, so a regression leaves no cluster behind.
    """
    proc = subprocess.Popen(
        krill_command("up", *map(str, args)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        raise AssertionError(f"krill up {args} still ran after {within}s") from None
    assert proc.returncode != 0 and "Traceback" not in err, (out, err)
    return err.strip().splitlines()[-1]


def test_up_on_a_data_directory_it_cannot_write_is_one_line() -> None:
    line = up_fails("--data", "/proc", *up_ports(), within=30)
    assert line == (
        "krill up: error: cannot write --data /proc: No such file or directory; "
        "choose a directory you can write"
    )


def test_up_refuses_a_given_port_that_is_taken(taken_port: int) -> None:
    line = up_fails(*up_ports(origin=taken_port), within=30)
    assert line.startswith(
        f"krill up: error: cannot listen on 127.0.0.1:{taken_port} (--origin-port): "
        "Address already in use"
    )


class RunningUp:
    """A ``krill up`` started for a test, stopped (by its pid) when the test ends."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            krill_command("up", *map(str, args), *up_ports()),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = self._wait_for_banner()

    def _wait_for_banner(self) -> str:
        assert self.proc.stdout is not None
        lines: list[str] = []
        while line := self.proc.stdout.readline():
            lines.append(line)
            if "Press Ctrl-C to stop" in line:
                return "".join(lines)
        raise AssertionError(f"krill up exited ({self.proc.wait()}):\n{''.join(lines)}")

    def data(self) -> Path:
        return Path(self.banner.split("data in ", 1)[1].split(",", 1)[0])

    def service_pid(self, name: str) -> int:
        """The pid of the ``krill NAME`` process this ``krill up`` started."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        for pid in map(int, children.split()):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if name.encode() in argv:
                return pid
        raise AssertionError(f"krill up runs no {name}: {children}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.communicate(timeout=60)


def test_a_second_up_on_a_running_ones_data_fails_at_once_and_leaves_its_logs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = RunningUp("--data", data)
    try:
        logs = {p.name: p.read_bytes() for p in (data / "logs").iterdir()}
        started = time.monotonic()
        line = up_fails("--data", data, *up_ports(), within=30)
        assert time.monotonic() - started < 5  # not the services' 10 s wait for the lock
        assert line == (
            f"krill up: error: data directory {data.resolve()} is in use by another krill "
            f"process (pid {first.proc.pid} on {socket.gethostname()}); give each krill up "
            "its own --data directory"
        )
        assert {p.name: p.read_bytes() for p in (data / "logs").iterdir()} == logs
    finally:
        first.stop()
    assert first.proc.returncode == 0


def test_a_service_that_dies_fails_up_and_its_log_is_kept() -> None:
    up = RunningUp()
    data = up.data()
    try:
        os.kill(up.service_pid("agent"), signal.SIGKILL)  # ours: that krill up started it
        _, err = up.proc.communicate(timeout=60)
        assert up.proc.returncode == 1
        log = data / "logs" / "agent.log"
        assert err.strip() == (
            f"krill up: error: agent exited with status -9, so Krill stopped; see why in {log}"
        )
        assert log.is_file() and [p.name for p in data.iterdir()] == ["logs"]
    finally:
        up.stop()
        shutil.rmtree(data, ignore_errors=True)
