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

A run that fails (a service that does not start, or dies) exits 1 with one line
naming the service and its log, and keeps the logs of a temporary data dir (the
rest of it is removed): the line points at a file that still exists. A port
given as a flag is used or refused, never swapped for another: scripts and
the printed commands depend on it; only ports left unset move when taken.
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

from krill.clierror import CliError, listen_failure
from krill.datadir import hold_data_dir
from krill.processes import ProcessFailed, logged_process, wait_http
from krill.storageflags import add_storage_flags

HEALTH_TIMEOUT = 60.0

# Each port flag and the port used when it is not given (any free one if that is taken).
DEFAULT_PORTS = {
    "--origin-port": 5000,
    "--tracker-port": 7000,
    "--agent-port": 7400,
    "--registry-port": 7401,
}


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
    for flag, default in DEFAULT_PORTS.items():
        parser.add_argument(
            flag,
            type=int,
            default=None,
            help=f"must be free if given (default: {default}, or any free port if it is taken)",
        )
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
    ports = {flag: _port(getattr(args, _dest(flag)), flag) for flag in DEFAULT_PORTS}
    with _data_dir(args.data) as data:
        addresses = Addresses(
            origin=f"127.0.0.1:{ports['--origin-port']}",
            tracker=f"127.0.0.1:{ports['--tracker-port']}",
            agent=f"127.0.0.1:{ports['--agent-port']}",
            registry=f"127.0.0.1:{ports['--registry-port']}",
            data=str(data),
            storage=args.storage,
        )
        logs = _logs_dir(data)
        with contextlib.ExitStack() as services:
            if args.data is not None:
                services.enter_context(_sole_user_of(data))
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
                _watch(procs, logs)
            except KeyboardInterrupt:
                sys.stdout.write("\nstopping Krill...\n")
    return 0


def _dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` in: ``--origin-port`` -> ``origin_port``."""
    return flag.removeprefix("--").replace("-", "_")


def _logs_dir(data: Path) -> Path:
    """``data/logs``, created; a CliError when ``--data`` cannot be written."""
    logs = data / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"cannot write --data {data}: {exc.strerror or exc}; choose a directory you can write"
        ) from None
    return logs


@contextlib.contextmanager
def _sole_user_of(data: Path) -> Iterator[None]:
    """Hold ``data`` against a second ``krill up``, and fail fast if a service already runs
    on its origin or agent directory.

    Without this a second ``krill up --data`` on a running one's directory appended to
    its logs, and its services each waited the data lock's 10 s before failing. The lock
    on ``data`` itself names the other ``krill up``'s pid; the probes of the services'
    directories (taken and dropped at once) catch one started some other way.
    """
    lock = hold_data_dir(data, "krill up", wait=0)
    try:
        for service in ("origin", "agent"):
            hold_data_dir(data / service, service, wait=0).release()
        yield
    finally:
        lock.release()


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
    """``--data`` (created if need be), or a temporary directory removed at the end: all of
    it after a clean stop or Ctrl-C, all but its logs after a failure (the error names them).
    """
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
    except KeyboardInterrupt:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    except BaseException:
        _remove_all_but_logs(temp)
        raise
    shutil.rmtree(temp, ignore_errors=True)


def _remove_all_but_logs(temp: Path) -> None:
    """Everything in ``temp`` but ``logs/`` (all of it if there are none): a failed run's
    data is not worth keeping, the logs that say why are."""
    if not (temp / "logs").is_dir():
        shutil.rmtree(temp, ignore_errors=True)
        return
    for entry in temp.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def _service(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with logged_process(
        [sys.executable, "-m", "krill.cli", *argv],
        log_path,
        append=True,
        start_new_session=True,  # Ctrl-C reaches us, not them
    ) as proc:
        yield proc


def _watch(procs: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    """Block until Ctrl-C, or raise a CliError naming the service that died and its log.

    The error (the caller stops the other services on its way out) makes ``krill up``
    exit 1: a script or supervisor running it must see that Krill went down.
    """
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise CliError(
                    f"{name} exited with status {proc.returncode}, so Krill stopped; "
                    f"see why in {logs / f'{name}.log'}"
                )
        time.sleep(0.5)


def _port(given: int | None, flag: str) -> int:
    """The port for ``flag``: ``given`` if it is free on 127.0.0.1, else a CliError; when not
    given, its default if free, else any free port."""
    if given is None:
        default = _free_port(DEFAULT_PORTS[flag])
        return default if default is not None else _bind(0)
    if not 1 <= given <= 65535:
        raise CliError(f"{flag}: ports must be 1-65535, got {given}")
    try:
        _bind(given)
    except OSError as exc:
        error = listen_failure(exc, f"127.0.0.1:{given}", flag)
        if error is None:
            raise CliError(f"cannot listen on 127.0.0.1:{given} ({flag}): {exc}") from None
        raise error from None
    return given


def _free_port(port: int) -> int | None:
    """``port`` (0: one the kernel picks) if it can be bound on 127.0.0.1 now, else None."""
    try:
        return _bind(port)
    except OSError:
        return None


def _bind(port: int) -> int:
    """Bind ``port`` on 127.0.0.1 and let it go again: the port bound, or the OSError.

    SO_REUSEADDR, as asyncio's listeners (the services') set it: a port held only by
    connections in TIME_WAIT (the last run's) counts as free.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
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
