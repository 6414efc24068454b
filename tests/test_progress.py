"""Progress for long CLI work: a status line on a terminal, nothing anywhere else.

The line itself runs on a clock the test moves; ``krill convert`` and
``krill delta create`` run as real processes with stderr on a pseudo-terminal
(progress drawn, then erased) and on a pipe (stderr stays empty).
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from krill.progress import Progress, format_bytes
from tests.clocks import ManualClock
from tests.components import krill_command
from tests.imagebuild import write_oci_layout
from tests.polling import until_sync
from tests.test_convert import _image
from tests.test_delta_cli import _layer, _layers

ERASE = "\r\x1b[K"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_at_most_once_per_interval_and_clears() -> None:
    clock, screen = ManualClock(), Terminal()
    progress = Progress(screen, clock=clock, interval=0.1)
    assert progress.enabled
    progress.update("a")
    progress.update("b")  # within the interval: not drawn
    clock.advance(0.1)
    progress.update("c")
    progress.update("d", force=True)
    progress.clear()
    assert screen.getvalue() == f"{ERASE}a{ERASE}c{ERASE}d{ERASE}"


def test_nothing_is_written_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    assert not progress.enabled
    progress.update("x", force=True)
    with progress.ticking("working"):
        pass
    progress.clear()
    assert stream.getvalue() == ""


def test_ticking_counts_seconds_until_the_block_ends() -> None:
    clock, screen = ManualClock(), Terminal()
    progress = Progress(screen, clock=clock)
    with progress.ticking("creating", every=0.01):
        until_sync(lambda: "creating 0s" in screen.getvalue(), "the first tick")
        clock.advance(12)
        until_sync(lambda: "creating 12s" in screen.getvalue(), "a tick after 12 s")
    assert screen.getvalue().endswith(ERASE)


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (999, 12_300_000, 4.2e9)] == ["999 B", "12.3 MB", "4.2 GB"]


# ---- the commands, on a pseudo-terminal and on a pipe ----------------------------


def run_with_stderr_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal received on stderr)."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        krill_command(*args), stdout=subprocess.PIPE, stderr=terminal, text=True
    )
    os.close(terminal)
    received = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        received += chunk
    os.close(controller)
    stdout = proc.stdout.read() if proc.stdout else ""
    return proc.wait(60), stdout, received.decode(errors="replace")


def test_convert_shows_each_layer_on_a_terminal_and_nothing_on_a_pipe(tmp_path: Path) -> None:
    image = _image(3)
    write_oci_layout(tmp_path / "src", image.manifest, [image], "v1")
    src = f"oci:{tmp_path / 'src'}:v1"
    code, stdout, screen = run_with_stderr_on_a_terminal("convert", src, f"oci:{tmp_path / 'a'}:v1")
    assert code == 0, screen
    assert "layer 1/2" in screen and "layer 2/2" in screen
    assert "fetching" in screen
    assert screen.rstrip("\n").endswith(ERASE)  # the line is gone before the summary
    assert "manifest sha256:" in stdout
    piped = subprocess.run(
        krill_command("convert", src, f"oci:{tmp_path / 'b'}:v1"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stderr == ""


def test_delta_create_ticks_on_a_terminal(tmp_path: Path) -> None:
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.zst", target_tar, "zstd3")
    code, stdout, screen = run_with_stderr_on_a_terminal(
        "delta", "create", str(base), str(target), str(tmp_path / "d.krd")
    )
    assert code == 0, screen
    assert "creating the delta of target.zst" in screen
    assert "verifying" in screen
    assert "bytes" in stdout
