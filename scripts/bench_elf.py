"""bench-elf: Krill's deltas of ELF executables and libraries against bsdiff, HDiffPatch,
xdelta3 and zstd --patch-from, per file and per layer, on real release pairs.

Why this benchmark: most bytes of a real layer are ELF code, and issue 21 measured Krill's
layer deltas at a median 1.04x bsdiff's on them; the ELF-aware transform is meant to take that
to <= 0.7x with encode time <= 0.5x bsdiff's. Each tool runs as its own process (the real
`krill delta create/apply` CLI for Krill) on the same files in the same run, and every rebuilt
output is compared with the target byte for byte.

Inputs come from scripts/realpairs.py (Debian bookworm vs bookworm-security packages and PyPI
wheels, x86-64 and aarch64); results stream to a JSONL file so a report or plot can be redrawn
(``--report-only``) and two runs compared (``--compare``: before and after a codec change).
Run it through scripts/bench-elf, which installs the tools first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import realpairs  # noqa: E402
from bench_elf_report import render, write_plot  # noqa: E402

TOOLS = ("krill", "bsdiff", "hdiffpatch", "xdelta3", "zstd")
# "krill-raw": the bare file through `krill delta create`, which codes a non-tar input as its
# meta stream (zstd with the base as prefix), not by its per-file diff path: not the default.
ALL_TOOLS = (*TOOLS, "krill-raw")
# HDiffPatch through its Python binding (the `hdiffpatch` package Krill itself uses), with
# zstd -19 over the diff as `hdiffz -c-zstd` would: an own process, like every other tool.
HDIFF = """
import sys, hdiffpatch
mode, a, b, out = sys.argv[1:]
old = open(a, "rb").read()
if mode == "diff":
    data = hdiffpatch.diff(old, open(b, "rb").read(), hdiffpatch.ZStdConfig(level=19),
                           validate=False)
else:
    data = hdiffpatch.apply(old, open(b, "rb").read())
open(out, "wb").write(data)
"""
HEADER = """
import json, sys
from pathlib import Path
from krill.delta import read_delta_header
print(json.dumps(read_delta_header(Path(sys.argv[1])).stats))
"""


def log(msg: str) -> None:
    print(f"[bench-elf] {msg}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    wall: float
    cpu: float  # user + system seconds of the process
    rss: int  # peak bytes
    stdout: str


def run(cmd: list[str], **kw: object) -> Proc:
    """One tool as its own process: wall time, CPU time and peak RSS from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, **kw)  # type: ignore[call-overload]
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            message = err.read().decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({code}): {message}")
        return Proc(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024,
                    out.read().decode(errors="replace"))


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- the Krill under test --------------------------------------------------------------------


@dataclass
class Krill:
    """Which Krill runs: a source tree (this checkout, or a clean export of a commit with its
    extension built in place, so a run measures committed code while others edit the tree)."""

    src: Path
    rev: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.src)}

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "krill.delta.cli", "delta", *args]


def krill_at(cache: Path, rev: str | None) -> Krill:
    if rev is None:
        head = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip()
        return Krill(ROOT, head or "worktree")
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    src = cache / "krill-src" / sha
    if not (src / "ready").exists():
        log(f"exporting krill at {sha} to {src} and building its extension")
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src,
                       check=True, capture_output=True)
        (src / "ready").write_text(sha + "\n")
    return Krill(src, sha)


# --- one tool on one (base, target) ----------------------------------------------------------


@dataclass
class Measure:
    tool: str
    size: int
    enc_wall: float
    enc_cpu: float
    enc_rss: int
    app_wall: float
    app_cpu: float
    app_rss: int
    enc_inproc: float = 0.0  # Krill only: the time the CLI reports (interpreter start excluded)
    stats: dict | None = None


def measure(tool: str, base: Path, target: Path, work: Path, krill: Krill,
            gz: tuple[Path, Path] | None = None) -> Measure:
    """``gz``: what Krill (and only Krill) diffs and rebuilds exactly instead: a layer's gzip
    files (the other tools diff the tars under them, as a user of theirs would), or a single
    file's one-member tars (``one_file_tar``)."""
    patch, out = work / f"{tool}.patch", work / f"{tool}.out"
    want = target
    inproc, stats = 0.0, None
    if tool in ("krill", "krill-raw"):
        b, t = gz or (base, target)
        want = t
        kw = {"cwd": krill.src, "env": krill.env()}
        enc = run(krill.cli("create", "--no-verify", str(b), str(t), str(patch)), **kw)
        app = run(krill.cli("apply", str(b), str(patch), str(out)), **kw)
        inproc = float(enc.stdout.strip().rsplit(", ", 1)[-1].removesuffix("s"))
        stats = json.loads(run([sys.executable, "-c", HEADER, str(patch)], **kw).stdout)
    elif tool == "bsdiff":
        enc = run(["bsdiff", str(base), str(target), str(patch)])
        app = run(["bspatch", str(base), str(out), str(patch)])
    elif tool == "hdiffpatch":
        enc = run([sys.executable, "-c", HDIFF, "diff", str(base), str(target), str(patch)])
        app = run([sys.executable, "-c", HDIFF, "apply", str(base), str(patch), str(out)])
    elif tool == "xdelta3":
        enc = run(["xdelta3", "-9", "-f", "-e", "-s", str(base), str(target), str(patch)])
        app = run(["xdelta3", "-f", "-d", "-s", str(base), str(patch), str(out)])
    elif tool == "zstd":
        size = max(base.stat().st_size, target.stat().st_size, 1)
        wlog = min(31, max(27, (size - 1).bit_length() + 1))
        enc = run(["zstd", "-q", "-f", "-19", f"--long={wlog}", f"--patch-from={base}",
                   str(target), "-o", str(patch)])
        app = run(["zstd", "-q", "-f", "-d", f"--long={wlog}", f"--patch-from={base}",
                   str(patch), "-o", str(out)])
    else:
        raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(ALL_TOOLS)}")
    if digest(out) != digest(want):
        raise RuntimeError(f"{tool} rebuilt the wrong bytes for {target}")
    size = patch.stat().st_size
    patch.unlink()
    out.unlink()
    return Measure(tool, size, enc.wall, enc.cpu, enc.rss, app.wall, app.cpu, app.rss, inproc,
                   stats)


# --- what gets measured ----------------------------------------------------------------------


def select_specs(pairs: str, arches: str) -> list[realpairs.PairSpec]:
    wanted = set(filter(None, pairs.split(",")))
    arch_set = set(arches.split(","))
    specs = [s for s in realpairs.corpus_specs()
             if s.arch in arch_set and (not wanted or s.package in wanted or s.name in wanted)]
    # Both architectures of a package next to each other: a run cut short stays balanced.
    order = {s.package: i for i, s in enumerate(specs)}
    return sorted(specs, key=lambda s: (order[s.package], s.arch != "x86_64"))


def select_files(spec: realpairs.PairSpec, pair_dir: Path, per_pair: int, min_bytes: int,
                 max_bytes: int) -> list[tuple[str, str, str]]:
    """The pair's largest changed ELF files within the size bounds: identical files (common
    in a security update) say nothing about a delta codec and would flatter every tool."""
    picked = []
    for b, t, machine in realpairs.elf_pairs(pair_dir / "base", pair_dir / "target", spec.old,
                                             spec.new):
        bp, tp = pair_dir / "base" / b, pair_dir / "target" / t
        size = tp.stat().st_size
        if not min_bytes <= size <= max_bytes:
            continue
        if bp.stat().st_size == size and bp.read_bytes() == tp.read_bytes():
            continue
        picked.append((size, b, t, machine))
    picked.sort(reverse=True)
    return [(b, t, m) for _, b, t, m in picked[:per_pair]]


def layer_files(cache: Path, spec: realpairs.PairSpec, pair_dir: Path) -> dict[str, Path]:
    """base/target .tar and .tar.gz of the pair's trees, as bench-delta builds layers."""
    d = cache / "elf-layers" / spec.name
    if not (d / "ready").exists():
        d.mkdir(parents=True, exist_ok=True)
        for side in ("base", "target"):
            realpairs.tar_tree(pair_dir / side, d / f"{side}.tar")
            realpairs.gzip_layer(d / f"{side}.tar", d / f"{side}.tar.gz")
        (d / "ready").write_text(spec.name + "\n")
    return {f"{side}{ext}": d / f"{side}{ext}" for side in ("base", "target")
            for ext in (".tar", ".tar.gz")}


def one_file_tar(base: Path, target: Path, rel: str, work: Path) -> tuple[Path, Path]:
    """Each side as a one-member layer tar under the target's path, as the file sits in a
    layer: Krill's per-file coding (pairing, binary diff, and the ELF transform) runs on tar
    members; a bare file would be coded as the meta stream instead (tool ``krill-raw``)."""
    out = []
    for side, src in (("base", base), ("target", target)):
        tar = work / f"onefile-{side}.tar"
        info = tarfile.TarInfo(rel)
        info.size, info.mode, info.mtime = src.stat().st_size, 0o755, 1700000000
        with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf, open(src, "rb") as f:
            tf.addfile(info, f)
        out.append(tar)
    return out[0], out[1]


def emit(results: Path, row: dict) -> None:
    row["load"] = round(os.getloadavg()[0], 2)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")


def bench(args: argparse.Namespace, krill: Krill, results: Path) -> None:
    tools = args.tools.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-elf-", dir=args.cache))
    layer_set = set(filter(None, args.layers.split(",")))
    try:
        for spec in select_specs(args.pairs, args.arch):
            try:
                pair_dir = realpairs.build_tree_pair(args.cache, spec, args.corpus)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                log(f"skipping {spec.name}: {exc}")
                continue
            files = select_files(spec, pair_dir, args.per_pair, args.min_kb * 1024,
                                 int(args.max_mb * 1e6))
            for b, t, machine in files:
                base, target = pair_dir / "base" / b, pair_dir / "target" / t
                row: dict[str, Any] = {
                    "level": "file", "pair": spec.name, "kind": spec.kind, "arch": spec.arch,
                    "machine": machine, "file": t, "bytes": target.stat().st_size,
                    "krill_rev": krill.rev, "tools": {}}
                tars = one_file_tar(base, target, t, work)
                for tool in tools:
                    row["tools"][tool] = asdict(measure(tool, base, target, work, krill,
                                                        gz=tars if tool == "krill" else None))
                emit(results, row)
                sizes = " ".join(f"{k}={v['size']}" for k, v in row["tools"].items())
                log(f"{spec.name} {t}: {row['bytes']} B; {sizes}")
            if spec.package in layer_set or spec.name in layer_set or "all" in layer_set:
                lay = layer_files(args.cache, spec, pair_dir)
                row = {"level": "layer", "pair": spec.name, "kind": spec.kind,
                       "arch": spec.arch, "bytes": lay["target.tar"].stat().st_size,
                       "gzip_bytes": lay["target.tar.gz"].stat().st_size,
                       "krill_rev": krill.rev, "tools": {}}
                for tool in tools:
                    row["tools"][tool] = asdict(measure(
                        tool, lay["base.tar"], lay["target.tar"], work, krill,
                        gz=(lay["base.tar.gz"], lay["target.tar.gz"])))
                emit(results, row)
                sizes = " ".join(f"{k}={v['size']}" for k, v in row["tools"].items())
                log(f"{spec.name} layer: {row['bytes']} B tar; {sizes}")
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


# The layers measured by default: both architectures, several kinds of package (many small
# executables, one big library, wheels), kept to what 2 shared cores do in minutes.
DEFAULT_LAYERS = "openssh-client,libc-bin,libxml2,systemd,sudo,lxml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench-elf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench-cache")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="where the pair trees live (default CACHE/elfpairs; "
                             "scripts/realpairs.py corpus DIR builds the same layout)")
    parser.add_argument("--pairs", default="", help="packages or pair names (default: all)")
    parser.add_argument("--arch", default="x86_64,aarch64")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--per-pair", type=int, default=2,
                        help="changed ELF files measured per pair, largest first (default 2)")
    parser.add_argument("--min-kb", type=int, default=16)
    parser.add_argument("--max-mb", type=float, default=12.0,
                        help="skip bigger files (bsdiff's time and memory grow fast)")
    parser.add_argument("--layers", default=DEFAULT_LAYERS,
                        help="packages whose whole layer is also measured ('all', '' for none)")
    parser.add_argument("--rev", default=None,
                        help="measure Krill at this commit (a clean export), not the worktree")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSONL of measurements (default CACHE/bench-elf-REV.jsonl)")
    parser.add_argument("--report-only", action="store_true",
                        help="redraw the report and plot from --results without measuring")
    parser.add_argument("--compare", type=Path, default=None,
                        help="an earlier run's JSONL: its Krill sizes go beside this run's")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of per-file sizes")
    args = parser.parse_args(argv)
    args.corpus = args.corpus or args.cache / "elfpairs"
    args.cache.mkdir(parents=True, exist_ok=True)
    krill = krill_at(args.cache, args.rev)
    results = args.results or args.cache / f"bench-elf-{krill.rev}.jsonl"
    if not args.report_only:
        results.unlink(missing_ok=True)
        load = os.getloadavg()
        log(f"krill {krill.rev} from {krill.src}; results to {results}; load {load[0]:.2f}")
        started = time.time()
        bench(args, krill, results)
        log(f"done in {time.time() - started:.0f} s; load {os.getloadavg()[0]:.2f}")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line]
    before = ([json.loads(line) for line in args.compare.read_text().splitlines() if line]
              if args.compare else None)
    command = "scripts/bench-elf " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(rows, before, command.strip())
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        write_plot(rows, before, args.plot)
        log(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
