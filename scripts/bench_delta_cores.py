"""`scripts/bench-delta --apply-cores`: `krill delta apply` time against the cores it uses.

For zlib-made real layer pairs, the delta is made once by the current code (its
recipe carries zlib restart points) and once more with the points removed (as
deltas made before them: recompression in sequence). Each is applied with
``--workers 1`` and ``--workers 2``, every run its own `krill` process; the
table gives the in-process apply time (start-up excluded), its CPU seconds, tar
MB/s, and the break-even link rate: compressed layer bytes x 8 / apply time, the
fastest link on which the delta path still beats downloading the layer. The shared
machine is loaded, so wall time is also estimated for idle cores from CPU seconds:
the longer of the main thread's CPU and half of all threads' CPU (one worker: all of it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from realpairs import fetch_wheel, gzip_layer, tar_tree, unpack  # noqa: E402

KRILL = [sys.executable, "-m", "krill.delta.cli"]
# A layer of several wheels, as the 234 MB one: every x86-64 pair in the wheel cache.
WHEELS = [
    ("numpy", "2.2.5", "2.2.6"),
    ("pandas", "2.2.2", "2.2.3"),
    ("scipy", "1.14.0", "1.14.1"),
    ("pyarrow", "19.0.0", "19.0.1"),
    ("lxml", "5.3.0", "5.3.1"),
    ("cryptography", "44.0.0", "44.0.1"),
    ("grpcio", "1.68.0", "1.68.1"),
]


def log(msg: str) -> None:
    print(f"[bench-delta --apply-cores] {msg}", file=sys.stderr, flush=True)


def wheels_pair(cache: Path, wheels: list[tuple[str, str, str]], name: str) -> Path:
    """base/target .tar.gz of all ``wheels`` installed side by side (zlib level 6, as convert)."""
    d = cache / "pairs" / name
    if (d / "ready").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    for label, index in (("base", 1), ("target", 2)):
        tree, one = d / f"{label}-tree", d / "one-wheel"
        shutil.rmtree(tree, ignore_errors=True)
        for spec in wheels:  # unpack() empties its tree: one wheel at a time, then merged
            unpack("pypi", fetch_wheel(cache, spec[0], spec[index]), one)
            shutil.copytree(one, tree, dirs_exist_ok=True)
            shutil.rmtree(one)
        tar_tree(tree, d / f"{label}.tar")
        gzip_layer(d / f"{label}.tar", d / f"{label}.tar.gz")
        shutil.rmtree(tree)
    (d / "ready").write_text("ok")
    return d


def served_pair(cache: Path, package: str, old: str, new: str) -> Path | None:
    """The zlib-made layers scripts/bench-delta-served built, if they are cached."""
    src = cache / "served"
    base, target = src / f"{package}-{old}.tar.gz", src / f"{package}-{new}.tar.gz"
    if not (base.exists() and target.exists()):
        return None
    d = cache / "pairs" / f"served-{package}"
    d.mkdir(parents=True, exist_ok=True)
    for name, path in (("base.tar.gz", base), ("target.tar.gz", target)):
        if not (d / name).exists():
            os.symlink(path, d / name)
    return d


def without_restarts(delta: Path, out: Path) -> None:
    """The delta as made before restart points: the recipe's points removed, re-signed."""
    data = delta.read_bytes()
    magic, version, length = struct.unpack(">8sHI", data[:14])
    header = json.loads(data[14 : 14 + length])
    for key in ("restarts", "deflate_bits"):
        header["recipe"].pop(key, None)
    text = json.dumps(header).encode()
    body = struct.pack(">8sHI", magic, version, len(text)) + text + data[14 + length : -32]
    out.write_bytes(body + hashlib.sha256(body).digest())


# `krill delta apply`'s function in a fresh process, timed three ways: wall, CPU of the main
# thread (decompressing the base, the ops, hashing, handing out segments) and CPU of all threads.
APPLY = """
import resource, sys, time
from pathlib import Path
from krill.delta import apply_delta
wall, main, total = time.perf_counter(), time.thread_time(), time.process_time()
apply_delta(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), workers=int(sys.argv[4]))
print(time.perf_counter() - wall, time.thread_time() - main, time.process_time() - total,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def timed(
    base: Path,
    delta: Path,
    out: Path,
    workers: int,
    tree: Path = ROOT,
    lock: str | None = None,
) -> tuple[float, float, float, float]:
    """(wall, main-thread CPU, all-threads CPU) seconds and peak RSS (MiB) of one apply in its
    own process (the RSS includes the interpreter and imports, ~40 MiB), with ``tree``'s krill;
    ``lock``: a file held (flock) for the run, so benchmarks on a shared machine never overlap."""
    cmd = [sys.executable, "-c", APPLY, str(base), str(delta), str(out), str(workers)]
    cmd = ["flock", lock, *cmd] if lock else cmd
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tree)
    wall, main, total, rss = map(float, done.stdout.split())
    return wall, main, total, rss


def bench_pair(name: str, d: Path, work: Path, repeat: int) -> list[str]:
    delta, old = work / "d.krd", work / "old.krd"
    log(f"{name}: create")
    subprocess.run(
        [
            *KRILL,
            "delta",
            "create",
            "--no-verify",
            str(d / "base.tar.gz"),
            str(d / "target.tar.gz"),
            str(delta),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    without_restarts(delta, old)
    recipe = json.loads(
        delta.read_bytes()[14:][: struct.unpack(">I", delta.read_bytes()[10:14])[0]]
    )
    points = len(recipe["recipe"].get("restarts", []))
    blob = (d / "target.tar.gz").stat().st_size
    with gzip.open(d / "target.tar.gz") as f:
        tar = sum(len(c) for c in iter(lambda: f.read(1 << 20), b""))
    want = hashlib.sha256((d / "target.tar.gz").read_bytes()).hexdigest()
    rows = []
    for label, which in (("before (no points)", old), ("after", delta)):
        for workers in (1, 2):
            best = None
            for _ in range(repeat):
                out = work / "out.tar.gz"
                log(f"{name}: {label}, {workers} worker(s)")
                run = timed(d / "base.tar.gz", which, out, workers)
                if hashlib.sha256(out.read_bytes()).hexdigest() != want:
                    raise RuntimeError(f"{name}: apply rebuilt other bytes")
                out.unlink()
                best = run if best is None or run[2] < best[2] else best
            wall, main, total, rss = best
            # On 2 idle cores: the main thread's work, or half of all work, whichever is longer.
            idle = max(main, total / 2) if workers > 1 else total
            rows.append(
                f"| {name} | {blob / 1e6:.1f} / {tar / 1e6:.1f} | {points} | {label} | {workers} "
                f"| {wall:.2f} | {main:.2f} | {total:.2f} | {idle:.2f} "
                f"| {tar / 1e6 / idle:.0f} | {blob * 8 / idle / 1e6:.0f} | {rss:.0f} |"
            )
    return rows


def create(tree: Path, d: Path, delta: Path, lock: str | None) -> None:
    """The pair's delta made by ``tree``'s encoder (cached: an existing file is kept)."""
    if delta.exists():
        return
    log(f"create with {tree}")
    cmd = [*KRILL, "delta", "create", "--no-verify"]
    cmd += [str(d / "base.tar.gz"), str(d / "target.tar.gz"), str(delta)]
    cmd = ["flock", lock, *cmd] if lock else cmd
    subprocess.run(cmd, check=True, cwd=tree, capture_output=True)


def alternate(args: argparse.Namespace, d: Path) -> list[str]:
    """Before (``--alternate TREE``, e.g. a git worktree) and after (this tree) applied in
    turns, 2 workers, each tree's delta made by its own encoder: the load changes between runs,
    so the two are compared round by round."""
    work = args.cache / "work" / "alternate"
    work.mkdir(parents=True, exist_ok=True)
    trees = {"before": args.alternate.resolve(), "after": ROOT}
    deltas = {name: work / f"{name}.krd" for name in trees}
    for name, tree in trees.items():
        create(tree, d, deltas[name], args.lock)
    blob = (d / "target.tar.gz").stat().st_size
    want = hashlib.sha256((d / "target.tar.gz").read_bytes()).hexdigest()
    rows = []
    for round_ in range(1, args.repeat + 1):
        for name, tree in trees.items():
            out = work / "out.tar.gz"
            load = os.getloadavg()[0]
            at = time.strftime("%H:%M:%S", time.gmtime())
            wall, main, total, rss = timed(d / "base.tar.gz", deltas[name], out, 2, tree, args.lock)
            same = hashlib.sha256(out.read_bytes()).hexdigest() == want
            out.unlink()
            if not same:
                raise RuntimeError(f"{name}: apply rebuilt other bytes")
            rows.append(
                f"| {round_} | {name} | {at} | {load:.1f} | {deltas[name].stat().st_size} "
                f"| {wall:.2f} | {main:.2f} | {total:.2f} | {rss:.0f} "
                f"| {blob * 8 / wall / 1e6:.0f} | yes |"
            )
            log(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench-delta --apply-cores")
    parser.add_argument("--apply-cores", action="store_true")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench-cache")
    parser.add_argument("--pairs", default="wheels-layer,served-numpy,served-pandas,libssl3-deb")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--wheels",
        help="pkg:old:new,... for the pair 'wheels-offline' (wheels already in CACHE/wheels, "
        "e.g. copied from a local index, when WHEELS' versions cannot be downloaded)",
    )
    parser.add_argument(
        "--alternate",
        type=Path,
        help="a tree to compare with (e.g. a git worktree of the commit before): its apply and "
        "this tree's, 2 workers, in turns, --repeat rounds, on the first pair",
    )
    parser.add_argument("--lock", help="flock this file around every run (a shared machine)")
    args = parser.parse_args()
    if args.alternate:
        name = args.pairs.split(",")[0]
        specs = [tuple(s.split(":")) for s in (args.wheels or "").split(",") if s]
        d = wheels_pair(args.cache, specs, name) if specs else args.cache / "pairs" / name
        head = (
            "| round | tree | UTC | load | delta bytes | wall s | main-thread CPU s "
            "| all-threads CPU s | peak RSS MiB | break-even Mbit/s (wall) | bit-exact |"
        )
        rows = alternate(args, d)
        print("\n".join([head, "|---|---|---|---|---|---|---|---|---|---|---|", *rows]))
        return
    pairs: dict[str, Path | None] = {}
    for name in args.pairs.split(","):
        if name == "wheels-layer":
            pairs[name] = wheels_pair(args.cache, WHEELS, name)
        elif name == "wheels-offline":
            specs = [tuple(s.split(":")) for s in (args.wheels or "").split(",") if s]
            pairs[name] = wheels_pair(args.cache, specs, name)  # type: ignore[arg-type]
        elif name.startswith("served-"):
            versions = {"numpy": ("2.2.5", "2.2.6"), "pandas": ("2.2.2", "2.2.3")}
            pkg = name.removeprefix("served-")
            pairs[name] = served_pair(args.cache, pkg, *versions[pkg])
        else:
            pairs[name] = (
                args.cache / "pairs" / name if (args.cache / "pairs" / name).is_dir() else None
            )
    lines = [
        f"Command: `scripts/bench-delta --apply-cores --pairs {args.pairs}"
        f"{' --repeat ' + str(args.repeat) if args.repeat > 1 else ''}`; "
        f"{os.cpu_count()} cores; load before: {os.getloadavg()[0]:.1f} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        "| pair | gzip / tar MB | points | delta | workers | wall s (loaded) | main-thread CPU s "
        "| all-threads CPU s | est. wall s, idle cores | tar MB/s | break-even Mbit/s "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in pairs.items():
        if d is None:
            log(f"{name}: not cached, skipped")
            continue
        work = args.cache / "work" / f"cores-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        lines += bench_pair(name, d, work, args.repeat)
        shutil.rmtree(work, ignore_errors=True)
    lines.append("")
    lines.append(f"Load after: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
