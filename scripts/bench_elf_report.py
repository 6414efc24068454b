"""bench-elf's report and plot, from the JSONL rows scripts/bench_elf.py streams.

Kept apart from the measuring so a finished run (or two: before and after a codec change) can
be redrawn without measuring again. Every ratio is a median of per-file (or per-layer) ratios
to bsdiff on the same input, the figure issue 21 states its goal in (<= 0.7x size, <= 0.5x
encode time).
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

Row = dict  # one JSONL line: level, pair, kind, arch, bytes, tools{tool: Measure as dict}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(rows: list[Row], tool: str, key: str = "size", base: str = "bsdiff") -> list[float]:
    out = []
    for r in rows:
        t, b = r["tools"].get(tool), r["tools"].get(base)
        if t and b and b[key] > 0:
            out.append(t[key] / b[key])
    return out


def elf_aware(measure: dict) -> bool:
    """Whether a Krill delta used the ELF transform, as far as its header's stats say."""
    stats = measure.get("stats") or {}
    return any("elf" in k.lower() and v for k, v in stats.items())


def machine_facts() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.machine()}")


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:.2f}x"


def krill_by_file(rows: list[Row]) -> dict[tuple[str, str, str], dict]:
    return {(r["level"], r["pair"], r.get("file", "")): r["tools"]["krill"] for r in rows
            if "krill" in r["tools"]}


def summary(rows: list[Row], tools: list[str], level: str) -> list[str]:
    rows = [r for r in rows if r["level"] == level]
    groups = [("all", rows)]
    for arch in ("x86_64", "aarch64"):
        groups.append((arch, [r for r in rows if r["arch"] == arch]))
    for kind in ("deb", "pypi"):
        groups.append((kind, [r for r in rows if r["kind"] == kind]))
    lines = [f"| tool | size vs bsdiff: {' | '.join(f'{g} ({len(rs)})' for g, rs in groups)} "
             "| encode wall | encode CPU | apply wall |",
             "|---|" + "---|" * (len(groups) + 3)]
    for tool in tools:
        if tool == "bsdiff":
            continue
        cells = [fmt(median(ratios(rs, tool))) for _, rs in groups]
        lines.append(f"| {tool} | {' | '.join(cells)} | "
                     f"{fmt(median(ratios(rows, tool, 'enc_wall')))} | "
                     f"{fmt(median(ratios(rows, tool, 'enc_cpu')))} | "
                     f"{fmt(median(ratios(rows, tool, 'app_wall')))} |")
    if "krill" in tools:
        inproc = [r["tools"]["krill"]["enc_inproc"] / r["tools"]["bsdiff"]["enc_wall"]
                  for r in rows if "bsdiff" in r["tools"] and r["tools"]["bsdiff"]["enc_wall"]]
        lines += ["", f"Krill's encode time as the CLI reports it (interpreter start-up "
                      f"excluded) vs bsdiff's wall: median {fmt(median(inproc))}."]
    return lines


def render(rows: list[Row], before: list[Row] | None, command: str) -> str:
    tools = list(rows[0]["tools"]) if rows else []
    revs = sorted({r["krill_rev"] for r in rows})
    loads = [r["load"] for r in rows if "load" in r]
    files = [r for r in rows if r["level"] == "file"]
    layers = [r for r in rows if r["level"] == "layer"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine_facts()}  ",
        f"Krill: {', '.join(revs)}; load average (1 min) during the run: "
        + (f"{min(loads):.2f}-{max(loads):.2f}" if loads else "?") + "  ",
        f"Inputs: {len(files)} changed ELF files from {len({r['pair'] for r in files})} pairs, "
        f"{len(layers)} layers. Ratios are medians of per-input ratios to bsdiff; every "
        "output was rebuilt and compared byte for byte.",
        "",
        "Per file:",
        "",
        *summary(rows, tools, "file"),
        "",
    ]
    # A security update often changes a file by a build ID and a date only: bsdiff's ~200 B
    # there is under Krill's fixed cost per delta (header, signature, the member's tar header),
    # so the medians also come without those files, and as a total of bytes.
    real = [r for r in files if r["tools"].get("bsdiff", {}).get("size", 0) >= 1000]
    for tool in (t for t in tools if t != "bsdiff"):
        total = sum(r["tools"][tool]["size"] for r in files) / max(
            1, sum(r["tools"]["bsdiff"]["size"] for r in files if "bsdiff" in r["tools"]))
        lines.append(f"- {tool}: median {fmt(median(ratios(real, tool)))} of bsdiff over the "
                     f"{len(real)} files whose bsdiff delta is >= 1 KB; all files' bytes summed "
                     f"{fmt(total)}.")
    lines.append("")
    aware = sum(1 for r in files if "krill" in r["tools"] and elf_aware(r["tools"]["krill"]))
    lines += [f"Krill deltas that used the ELF transform (header stats): {aware} of {len(files)}.",
              ""]
    old = krill_by_file(before) if before else {}
    if old:
        pairs = [(r["tools"]["krill"]["size"], old[k]["size"]) for r in rows
                 if (k := (r["level"], r["pair"], r.get("file", ""))) in old]
        lines += [f"Against the earlier run ({len(pairs)} inputs in both): Krill's size now "
                  f"{fmt(median([a / b for a, b in pairs if b]))} of then (median).", ""]
    if layers:
        lines += ["Per layer (Krill diffs and rebuilds the gzip layer exactly; the others diff "
                  "the tar under it):", "", *summary(rows, tools, "layer"), ""]
        head = " | ".join(f"{t} KB" for t in tools)
        lines += [f"| layer | tar MB | gzip MB | {head} | Krill/bsdiff | Krill encode s "
                  "| bsdiff encode s |", "|---|---|---|" + "---|" * (len(tools) + 3)]
        for r in layers:
            t = r["tools"]
            cells = " | ".join(f"{t[x]['size'] / 1e3:.1f}" for x in tools)
            ratio = t["krill"]["size"] / t["bsdiff"]["size"] if "bsdiff" in t else float("nan")
            lines.append(f"| {r['pair']} | {r['bytes'] / 1e6:.1f} | {r['gzip_bytes'] / 1e6:.1f} "
                         f"| {cells} | {fmt(ratio)} | {t['krill']['enc_wall']:.1f} | "
                         f"{t.get('bsdiff', {}).get('enc_wall', float('nan')):.1f} |")
        lines.append("")
    lines += ["Per pair (files measured, median size vs bsdiff):", "",
              "| pair | files | MB | bsdiff KB | " + " | ".join(
                  t for t in tools if t != "bsdiff") + " |",
              "|---|---|---|---|" + "---|" * (len(tools) - 1)]
    for pair in sorted({r["pair"] for r in files}):
        rs = [r for r in files if r["pair"] == pair]
        cells = " | ".join(fmt(median(ratios(rs, t))) for t in tools if t != "bsdiff")
        bs = sum(r["tools"].get("bsdiff", {}).get("size", 0) for r in rs)
        lines.append(f"| {pair} | {len(rs)} | {sum(r['bytes'] for r in rs) / 1e6:.1f} | "
                     f"{bs / 1e3:.1f} | {cells} |")
    return "\n".join(lines)


def write_plot(rows: list[Row], before: list[Row] | None, path: Path) -> None:
    """Log-log: each file's delta size against bsdiff's; y = x and the goal's y = 0.7x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [r for r in rows if r["level"] == "file" and "bsdiff" in r["tools"]]
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    if before:
        old = krill_by_file(before)
        xs, ys = [], []
        for r in files:
            k = ("file", r["pair"], r["file"])
            if k in old:
                xs.append(r["tools"]["bsdiff"]["size"])
                ys.append(old[k]["size"])
        ax.scatter(xs, ys, s=22, facecolors="none", edgecolors="0.55",
                   label=f"Krill before ({before[0]['krill_rev']}), generic")
    for tool, colour, mark in (("hdiffpatch", "tab:green", "x"), ("zstd", "tab:purple", "+")):
        pts = [(r["tools"]["bsdiff"]["size"], r["tools"][tool]["size"]) for r in files
               if tool in r["tools"]]
        if pts:
            xs, ys = (list(v) for v in zip(*pts, strict=True))
            ax.scatter(xs, ys, s=14, c=colour, marker=mark, alpha=0.45,
                       label=tool if tool != "zstd" else "zstd --patch-from")
    for arch, colour in (("x86_64", "tab:blue"), ("aarch64", "tab:orange")):
        for aware in (False, True):
            pts = [(r["tools"]["bsdiff"]["size"], r["tools"]["krill"]["size"]) for r in files
                   if r["arch"] == arch and "krill" in r["tools"]
                   and elf_aware(r["tools"]["krill"]) == aware]
            if pts:
                xs, ys = (list(v) for v in zip(*pts, strict=True))
                ax.scatter(xs, ys, s=26, c=colour,
                           marker="D" if aware else "o",
                           label=f"Krill {files[0]['krill_rev']} {arch}"
                                 + (" ELF-aware" if aware else ""))
    sizes = [r["tools"][t]["size"] for r in files for t in r["tools"]]
    if sizes:
        lo, hi = max(10, min(sizes) / 1.5), max(sizes) * 1.5
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x (bsdiff's size)")
        ax.plot([lo, hi], [0.7 * lo, 0.7 * hi], "k--", lw=0.8, label="y = 0.7x (issue 21 goal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bsdiff delta, bytes")
    ax.set_ylabel("delta, bytes")
    ax.set_title(f"Per-file ELF deltas vs bsdiff ({len(files)} changed files, "
                 "Debian + PyPI, x86-64 + aarch64)", fontsize=10)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
