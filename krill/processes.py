"""Run helper processes with their output in a log, and stop them cleanly.

Used by ``krill up`` and by the tests and benchmarks that start real
servers (krill services, docker-registry, redis, containerd): one place
that knows how to wait for a process to answer and how to stop it.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


class ProcessFailed(RuntimeError):
    """A helper process exited, or did not become ready in time."""


@contextlib.contextmanager
def logged_process(
    cmd: Sequence[str],
    log_path: Path,
    *,
    append: bool = False,
    grace: float = 15.0,
    env: Mapping[str, str] | None = None,
    start_new_session: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` with stdout and stderr in ``log_path``; stop it when the block ends.

    ``env`` replaces the environment (None: inherit ours); ``start_new_session``
    keeps a terminal's Ctrl-C from reaching the process (its owner stops it).
    """
    with open(log_path, "ab" if append else "wb") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=start_new_session,
        )
    try:
        yield proc
    finally:
        stop_process(proc, grace)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    timeout: float = 30.0,
    name: str | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``url`` until it answers any HTTP status.

    Fails early if ``proc`` exits first, with one line: the last line of its log
    (a Krill service's last line says why it stopped) and where the rest is.
    """
    what = name or url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = ""
            if log_path is not None:
                detail = f" ({last_line(log_path)}); see {log_path}"
            raise ProcessFailed(f"{what} exited with status {proc.returncode}{detail}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    where = f"; see {log_path}" if log_path else ""
    raise ProcessFailed(f"{what} did not answer {url} within {timeout:.0f}s{where}")


def last_line(path: Path) -> str:
    """The last non-empty line of a log file, for a one-line error message."""
    lines = [line for line in tail(path, 50).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "its log is empty"


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
