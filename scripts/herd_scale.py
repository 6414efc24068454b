"""The herd at several sizes: one ``bench_herd`` run per N, then a plot of how it scales.

``run``: for each ``--nodes`` entry (with its ``--rate-mbit`` entry), one
real-agent herd (``bench_herd.py --mtu 1500 --skip-registry``: the registry
pull of 32 x 64 MiB takes minutes and the scaling figures are Krill's own),
one after another; each run's JSON line goes into ``--out``. On a machine
whose cores emulate every host, the agents' CPU grows with N while the
links stay the same, so large N get lower link rates: then the pull is
still limited by the links and the figures (multiples of size / rate)
compare across N.

``plot``: p50 and p99 pull time (multiples of the limit) and the origin's
egress (multiples of the blob) against N, from the JSON ``run`` wrote, as a
PNG (matplotlib, the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from herd_common import log, percentile

HERE = Path(__file__).resolve().parent


def numbers(text: str, kind: type = int) -> list[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def one_run(nodes: int, rate: float, extra: list[str]) -> dict[str, Any]:
    """One herd; its JSON record with the run's N and rate added (stderr passes through)."""
    cmd = [
        sys.executable,
        str(HERE / "bench_herd.py"),
        "--nodes",
        str(nodes),
        "--rate-mbit",
        str(rate),
        "--mtu",
        "1500",
        "--skip-registry",
        *extra,
    ]
    load_start = os.getloadavg()
    log(f"scale: N={nodes} at {rate:g} Mbit/s, load {load_start[0]:.1f}: {' '.join(cmd)}")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"bench_herd.py --nodes {nodes} failed ({done.returncode})")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    record.update(nodes=nodes, rate_mbit=rate, load_start=load_start)  # "load" is at its end
    return record


def run(args: argparse.Namespace) -> int:
    sizes, rates = numbers(args.nodes), numbers(args.rate_mbit, float)
    if len(rates) == 1:
        rates *= len(sizes)
    if len(rates) != len(sizes):
        raise SystemExit("--rate-mbit: one rate, or one per --nodes entry")
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() and args.append else []
    for nodes, rate in zip(sizes, rates, strict=True):
        records.append(one_run(nodes, rate, args.extra))
        out.write_text(json.dumps(records, indent=1))  # each run kept even if a later one fails
    return 0


def plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(json.loads(Path(args.results).read_text()), key=lambda r: r["nodes"])
    nodes = [r["nodes"] for r in records]
    p50 = [percentile(r["krill_s"], 50) / r["limit_s"] for r in records]
    p99 = [percentile(r["krill_s"], 99) / r["limit_s"] for r in records]
    egress = [r["origin_egress_x"] for r in records]
    fig, left = plt.subplots(figsize=(7, 4.2), dpi=110)
    left.plot(nodes, p50, "o-", label="p50 pull time")
    left.plot(nodes, p99, "s-", label="p99 pull time")
    left.set_xscale("log", base=2)
    left.set_xticks(
        nodes, [f"{n}\n{r['rate_mbit']:g} Mbit/s" for n, r in zip(nodes, records, strict=True)]
    )
    left.set_xlabel("nodes (N) and link rate")
    left.set_ylabel("pull time / (size / link rate)")
    left.set_ylim(0, max(p99) * 1.25)
    for n, top, record in zip(nodes, p99, records, strict=True):
        start, end = record.get("load_start", record["load"])[0], record["load"][0]
        left.annotate(
            f"load {start:.0f}-{end:.0f}",
            (n, top),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
            color="dimgray",
        )
    right = left.twinx()
    right.plot(nodes, egress, "^--", color="tab:green", label="origin egress")
    right.set_ylabel("origin egress / blob size")
    right.set_ylim(0, max(2.0, max(egress) * 1.25))
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    first = records[0]
    size_mib = round(first["limit_s"] * first["rate_mbit"] * 1e6 / 8 / 2**20)
    left.set_title(f"Krill herd: real agents, one {size_mib} MiB layer, MTU 1500")
    fig.tight_layout()
    fig.savefig(args.png)
    log(f"wrote {args.png}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("run", help="one herd per N; JSON records to --out")
    runs.add_argument("--nodes", default="4,8,16,32")
    runs.add_argument("--rate-mbit", default="100,100,50,25", help="one, or one per N")
    runs.add_argument("--out", default="herd-scaling.json")
    runs.add_argument("--append", action="store_true", help="add to the records in --out")
    runs.add_argument("extra", nargs="*", help="more bench_herd.py flags, after --")
    plots = sub.add_parser("plot", help="PNG of p50, p99 and origin egress against N")
    plots.add_argument("results")
    plots.add_argument("--png", default="docs/img/herd-scaling.png")
    args = parser.parse_args()
    try:
        return run(args) if args.command == "run" else plot(args)
    except RuntimeError as exc:
        log(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
