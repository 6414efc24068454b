"""The Go oracle for Krill's Go gzip port: tests/goflate/main.go, built once per session.

``GoOracle.gzip(data, level, chunk)`` is what Go's own ``compress/gzip`` writes
for ``data`` (in Write calls of ``chunk`` bytes; 0: one Write), served by one
long-lived ``goflate -batch`` process so hypothesis can ask hundreds of times.
The Go used is the ``go`` on PATH: run the tests with another Go first on
PATH to verify the port against that version.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

SOURCE = Path(__file__).with_name("main.go")


class GoOracle:
    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.version = subprocess.run(
            ["go", "version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self._proc = subprocess.Popen(
            [str(binary), "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def gzip(self, data: bytes, level: int, chunk: int = 0) -> bytes:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(struct.pack("<iiI", level, chunk, len(data)) + data)
        proc.stdin.flush()
        (size,) = struct.unpack("<I", _read_exactly(proc.stdout, 4))
        return _read_exactly(proc.stdout, size)

    def gzip_file(self, path: Path, level: int, out: Path, chunk: int = 0) -> None:
        """The one-shot command, for inputs too big to pass through memory twice."""
        with open(path, "rb") as src, open(out, "wb") as dst:
            command = [str(self.binary), str(level), str(chunk)]
            subprocess.run(command, stdin=src, stdout=dst, check=True)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)  # a BufferedReader: n bytes unless the process ended
    if len(data) != n:
        raise RuntimeError("goflate -batch died (see its stderr above)")
    return data


@pytest.fixture(scope="session")
def go_oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoOracle]:
    if shutil.which("go") is None:
        pytest.skip("no `go` on PATH (scripts/test installs golang-go)")
    binary = tmp_path_factory.mktemp("goflate") / "goflate"
    subprocess.run(["go", "build", "-o", str(binary), str(SOURCE)], check=True, timeout=300)
    oracle = GoOracle(binary)
    yield oracle
    oracle.close()
