"""scripts/bench_delta_served.py: the containerd half of issue 15's bench, run for real.

The bench's figures come from real wheels on shaped links and take minutes, so the
suite runs its own machinery on a small synthetic pair instead: the same ``run_pair``
(origin, tracker and a fresh agent per mode in two namespaces, curl timing each mode,
then a fresh containerd per mode pulling and unpacking v2 through the agent with the
hosts.toml ``krill agent containerd-config`` writes) and the same ``report``. What it
checks is that every path the bench times really happened: curl's bytes matched their
digests (the bench raises otherwise), containerd unpacked v2 in every mode, the
agent took the delta when told to and the full layer when deltas were off, and the
report judges the choice by the path it took. No figure is asserted.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from tests import containerd
from tests.netns import Cluster
from tests.scripts_import import script_module

bench = script_module("bench_delta_served")


def _row(full: float, delta: float, fastest: float, choice: str) -> object:
    pull = bench.Pull(0.1, 1.0, "-")
    return bench.Row(
        "pair", 100.0, 5_000_000, 20_000,
        {"full": pull, "delta": pull, "fastest": pull},
        {"full": bench.Unpacked(full, "-"), "delta": bench.Unpacked(delta, "-"),
         "fastest": bench.Unpacked(fastest, f"choice={choice} reason=x")},
    )  # fmt: skip


def test_the_containerd_table_judges_the_path_the_agent_chose() -> None:
    """One containerd pull of a path varies more than a choice's margin, so the verdict
    compares the path's own timed mode, not the ``fastest`` pull's seconds."""
    text = bench.report([_row(full=3.0, delta=1.0, fastest=3.5, choice="delta")])
    assert "| pair | 100 Mbit/s | 3.00 s | 1.00 s | 0.33x | 3.50 s (delta) | yes |" in text
    text = bench.report([_row(full=3.0, delta=1.0, fastest=1.0, choice="full")])
    assert "(full) | no |" in text
    text = bench.report([_row(full=3.0, delta=1.0, fastest=1.0, choice="")])
    assert "(-) | - |" in text  # no choice logged: no verdict


def test_took_faster_allows_ten_percent_or_a_tenth_of_a_second() -> None:
    assert bench.took_faster(1.10, full=1.0, delta=2.0)
    assert not bench.took_faster(1.11, full=1.0, delta=2.0)
    assert bench.took_faster(0.19, full=0.09, delta=2.0)  # 0.1 s beats 10 % when small


def _layer(files: dict[str, bytes]) -> bytes:
    """A gzip'd tar of ``files``, as a build tool writes a layer."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _pair() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """~1.9 MB of text in 30 files; v2 changes two of them and adds one."""
    rng = random.Random(15)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(2000)]
    v1 = {
        f"usr/lib/app/mod{i:02d}.py": "\n".join(
            " ".join(rng.choices(words, k=10)) for _ in range(700)
        ).encode()
        for i in range(30)
    }
    v2 = dict(v1)
    v2["usr/lib/app/mod07.py"] = v1["usr/lib/app/mod07.py"][:4000] + b"\n# v2\n"
    v2["usr/lib/app/mod21.py"] += b"\nVERSION = 2\n"
    v2["usr/lib/app/release.txt"] = b"2\n"
    return v1, v2


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.skipif(
    not (containerd.available() and all(shutil.which(t) for t in ("ip", "tc", "curl"))),
    reason="needs containerd, ctr, ip, tc and curl (scripts/test installs them)",
)
def test_the_bench_times_curl_and_containerd_in_every_mode(tmp_path: Path) -> None:
    files_v1, files_v2 = _pair()
    v1 = bench.one_layer_image(_layer(files_v1), "1")
    v2 = bench.one_layer_image(_layer(files_v2), "2")
    net = Cluster(prefix=f"kbd{os.getpid()}-", subnet="10.79.0")
    try:
        net.build(hosts=2)
        rows = bench.run_pair(net, tmp_path, "synthetic", v1, v2, [200.0], with_containerd=True)
    finally:
        net.remove()

    (row,) = rows
    assert 0 < row.delta < row.layer / 10
    assert set(row.pulls) == set(row.unpacked) == set(bench.MODES)
    assert all(0 < p.first_byte <= p.last_byte for p in row.pulls.values())
    assert all(u.seconds > 0 for u in row.unpacked.values())
    # Told what to take, the agent took it, for curl and for containerd alike: with
    # deltas off it makes no choice at all ("-"), with "fewest-bytes" it takes the delta.
    assert row.pulls["full"].choice == row.unpacked["full"].choice == "-"
    assert "choice=delta " in row.pulls["delta"].choice
    assert "choice=delta " in row.unpacked["delta"].choice
    report = bench.report(rows)
    assert "| synthetic | 200 Mbit/s |" in report
    assert "containerd (`ctr images pull` of v2" in report
