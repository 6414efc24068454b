"""``krill up``: a whole Krill on loopback (origin, tracker, one agent) in one command.

Each service runs as its own ``krill`` subprocess with embedded defaults:
data under a temporary directory (or ``--data``), the tracker's in-memory
peer store, loopback addresses only; with ``--storage s3://BUCKET[/PREFIX]``
the origin keeps everything durable in that bucket (credentials from the
environment, as for ``krill origin``; docs/storage.md) and its directory is
its local cache. When all answer their health checks the
addresses and the skopeo/containerd commands to use are printed, and a
machine-readable ``up.json`` is written into the data directory (scripts read
it). Ctrl-C (or SIGTERM) stops everything; a temporary data dir is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from krill.clierror import CliError
from krill.processes import ProcessFailed, logged_process, wait_http
from krill.storageflags import add_storage_flags

HEALTH_TIMEOUT = 60.0


@dataclass
class Addresses:
    origin: str  # host:port
    tracker: str
    agent: str  # control API host:port
    registry: str  # the agent's registry endpoint host:port
    data: str
    storage: str | None = None  # the origin's s3:// URL, None: on its directory

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run origin, tracker and an agent on loopback",
        description="Start a complete Krill on this machine (loopback only) and print how to "
        "push to it and pull through it. Ctrl-C stops it.",
    )
    parser.add_argument("--data", type=Path, help="keep data here (default: a temp dir)")
    parser.add_argument("--origin-port", type=int, default=5000)
    parser.add_argument("--tracker-port", type=int, default=7000)
    parser.add_argument("--agent-port", type=int, default=7400)
    parser.add_argument("--registry-port", type=int, default=7401)
    add_storage_flags(
        parser,
        "the origin's object storage, s3://BUCKET[/PREFIX][?endpoint=URL] "
        "(credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; default: on --data)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    # SIGINT too: a shell starting us in the background (`krill up &`, CI runners) leaves
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with _data_dir(args.data) as data:
        addresses = Addresses(
            origin=f"127.0.0.1:{_usable_port(args.origin_port)}",
            tracker=f"127.0.0.1:{_usable_port(args.tracker_port)}",
            agent=f"127.0.0.1:{_usable_port(args.agent_port)}",
            registry=f"127.0.0.1:{_usable_port(args.registry_port)}",
            data=str(data),
            storage=args.storage,
        )
        logs = data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as services:
            procs: dict[str, subprocess.Popen[bytes]] = {}
            try:
                commands = service_commands(addresses, data, _storage_flags(args))
                for name, argv, health in commands:
                    proc = services.enter_context(_service(argv, logs / f"{name}.log"))
                    procs[name] = proc
                    wait_http(
                        health,
                        proc,
                        timeout=HEALTH_TIMEOUT,
                        name=name,
                        log_path=logs / f"{name}.log",
                    )
            except ProcessFailed as exc:
                raise CliError(str(exc)) from None
            (data / "up.json").write_text(addresses.as_json())
            sys.stdout.write(_banner(addresses, logs))
            sys.stdout.flush()
            try:
                _watch(procs)
            except KeyboardInterrupt:
                sys.stdout.write("\nstopping Krill...\n")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _storage_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for flag, value in (
        ("--storage", args.storage),
        ("--s3-endpoint", args.s3_endpoint),
        ("--s3-region", args.s3_region),
    ):
        if value:
            flags += [flag, value]
    return flags


def service_commands(
    a: Addresses, data: Path, origin_flags: list[str] | None = None
) -> list[tuple[str, list[str], str]]:
    """(name, krill arguments, health URL) for each service, in start order."""
    return [
        (
            "origin",
            [
                "origin",
                "--listen",
                a.origin,
                "--data",
                str(data / "origin"),
                "--tracker",
                f"http://{a.tracker}",
                *(origin_flags or []),
            ],
            f"http://{a.origin}/v2/",
        ),
        (
            "tracker",
            ["tracker", "--listen", a.tracker, "--origin", f"http://{a.origin}"],
            f"http://{a.tracker}/health",
        ),
        (
            "agent",
            [
                "agent",
                "--listen",
                a.agent,
                "--registry-listen",
                a.registry,
                "--data",
                str(data / "agent"),
                "--tracker",
                f"http://{a.tracker}",
                "--origin",
                f"http://{a.origin}",
                # Loopback only, as everything here (the agent's default is every interface).
                "--peer-host",
                "127.0.0.1",
            ],
            f"http://{a.agent}/health",
        ),
    ]


@contextlib.contextmanager
def _data_dir(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        try:
            requested.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create --data {requested}: {exc.strerror or exc}") from None
        yield requested.resolve()
        return
    temp = Path(tempfile.mkdtemp(prefix="krill-up-"))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def _service(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with logged_process(
        [sys.executable, "-m", "krill.cli", *argv],
        log_path,
        append=True,
        start_new_session=True,  # Ctrl-C reaches us, not them
    ) as proc:
        yield proc


def _watch(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Block until Ctrl-C, or until a service dies (then say which; the caller stops the rest)."""
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                sys.stdout.write(f"{name} exited with status {proc.returncode}; stopping\n")
                return
        time.sleep(0.5)


def _usable_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    if not 1 <= preferred <= 65535:
        raise CliError(f"ports must be 1-65535, got {preferred}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _banner(a: Addresses, logs: Path) -> str:
    hosts = "/etc/containerd/certs.d"
    where = f"; the origin's store: {a.storage}" if a.storage else ""
    return f"""Krill is up (loopback only; data in {a.data}, logs in {logs}{where}):
  origin    http://{a.origin}    push images here
  tracker   http://{a.tracker}
  agent     http://{a.agent}    /health /metrics /preheat /blobs/<digest>
  registry  http://{a.registry}    the agent's pull-only endpoint for containerd

Push an image:
  skopeo copy --dest-tls-verify=false oci:./my-image:latest docker://{a.origin}/team/app:1
Pull it through the agent:
  skopeo copy --src-tls-verify=false docker://{a.registry}/team/app:1 oci:./pulled:latest
Point containerd at the agent (images keep their names) and pull:
  krill agent containerd-config --registry {a.origin}=http://{a.origin} \\
      --agent {a.registry} --dir {hosts}
  ctr images pull --hosts-dir {hosts} {a.origin}/team/app:1
Preheat a node:
  krill agent preheat --agent http://{a.agent} team/app:1

Press Ctrl-C to stop.
"""
