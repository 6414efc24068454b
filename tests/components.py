"""Start the real components tests run against: docker-registry, skopeo, redis.

Every server binds to 127.0.0.1 on a free port and is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from krill import processes

SKOPEO_FLAGS = ("--src-tls-verify=false", "--dest-tls-verify=false")


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before in this test run.

    The kernel may give the same ephemeral port to two ``bind(0)`` calls in a row
    once the first socket is closed: two agents of one herd, started together from
    threads, then tried to listen on the same port and one exited with EADDRINUSE
    (a CI failure of test_agent_swarm). Remembering what was handed out rules that
    out; a port taken meanwhile by some other process's connection still can't be.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers any HTTP status; fail if ``proc`` dies first."""
    processes.wait_http(url, proc, timeout=timeout)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


@contextlib.contextmanager
def docker_registry(root: Path, port: int | None = None) -> Iterator[str]:
    """A real CNCF distribution registry on loopback; yields its base URL."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with _process(["docker-registry", "serve", str(config)], root / "registry.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc=proc)
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def redis_server(root: Path, port: int | None = None) -> Iterator[str]:
    """A real redis-server on loopback without persistence; yields its URL."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(root),
    ]
    with _process(cmd, root / "redis.log"):
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"


def _process(
    cmd: Sequence[str], log_path: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return processes.logged_process(cmd, log_path, grace=10)


def krill_command(*args: str) -> list[str]:
    """Run the krill CLI from this checkout's interpreter."""
    return [sys.executable, "-m", "krill.cli", *args]


@contextlib.contextmanager
def krill_process(
    args: Sequence[str], log_path: Path, health_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``krill ARGS`` as a real process until the block ends."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with processes.logged_process(krill_command(*args), log_path, grace=10, env=env) as proc:
        wait_http(health_url, proc=proc)
        yield proc


def skopeo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run skopeo; raise with its stderr when it fails."""
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc
