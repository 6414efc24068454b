"""A real containerd for tests: own config, root, state and socket under a temp dir.

containerd runs as root (it must, to mount snapshots), but touches nothing
outside its directory: CRI and the kernel-specific snapshotters are disabled,
``native`` (plain copies) is the snapshotter, and the gRPC socket lives in the
test's directory. ``ctr`` talks to that socket only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from krill.processes import logged_process

NAMESPACE = "krill-test"
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.internal.v1.tracing",
)


def available() -> bool:
    """Whether containerd and ctr are installed (the demo pulls with them when they are)."""
    return shutil.which("containerd") is not None and shutil.which("ctr") is not None


@dataclass
class Containerd:
    root: Path
    socket: Path

    def ctr(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd; raise with its output when it fails."""
        cmd = ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        return proc

    def pull(
        self,
        reference: str,
        hosts_dir: Path,
        *,
        platforms: Sequence[str] = (),
        all_platforms: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr images pull`` with hosts.toml from ``hosts_dir``, unpacked with native."""
        args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native"]
        for platform in platforms:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        return self.ctr(*args, reference)

    def image_digest(self, reference: str) -> str:
        """The digest containerd recorded for an image (its top manifest or index)."""
        out = self.ctr("images", "ls").stdout.splitlines()
        for line in out[1:]:
            fields = line.split()
            if fields and fields[0] == reference:
                return next(f for f in fields if f.startswith("sha256:"))
        raise AssertionError(f"{reference} not in ctr images ls:\n" + "\n".join(out))

    def snapshots(self) -> list[str]:
        out = self.ctr("snapshots", "--snapshotter", "native", "ls").stdout.splitlines()
        return [line.split()[0] for line in out[1:] if line.strip()]


def _config(root: Path, sockets: Path) -> str:
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    return (
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        f"disabled_plugins = [{disabled}]\n"
        "[grpc]\n"
        f'  address = "{sockets / "c.sock"}"\n'
        "[ttrpc]\n"
        f'  address = "{sockets / "c-ttrpc.sock"}"\n'
        "[debug]\n"
        '  address = ""\n'
        '  level = "info"\n'
        "[metrics]\n"
        '  address = ""\n'
    )


@contextlib.contextmanager
def running_containerd(root: Path) -> Iterator[Containerd]:
    """Start containerd with everything under ``root``; stop it when the block ends.

    The native snapshotter mounts nothing, so there is nothing to unmount. The sockets
    live in a short directory of their own: a unix socket's path has room for ~104
    bytes, which a root deep in pytest's or a bench's work directory overruns
    (containerd then exits with "unix socket path too long").
    """
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctrd-", dir="/tmp") as short:
        sockets = Path(short)
        config = root / "config.toml"
        config.write_text(_config(root, sockets))
        cmd = ["containerd", "--config", str(config)]
        with logged_process(cmd, root / "containerd.log") as proc:
            instance = Containerd(root, sockets / "c.sock")
            _wait_ready(instance, proc)
            yield instance


def _wait_ready(instance: Containerd, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (instance.root / "containerd.log").read_text()[-2000:]
            raise RuntimeError(f"containerd exited with {proc.returncode}: {log}")
        if instance.socket.exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                instance.ctr("version", timeout=5)
                return
        time.sleep(0.1)
    raise TimeoutError(f"containerd did not answer on {instance.socket} within {timeout}s")
