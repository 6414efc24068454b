"""Draw the chart's Grafana dashboard from the metrics of a real demo run, without Grafana.

The docs show ``helm/krill/dashboards/krill.json`` filled in, and neither
Grafana nor Prometheus can be installed where Krill is built (no package on
PyPI, Debian or npm here). So this script does the two jobs itself, small and
in the open:

1. **Prometheus's part.** It runs ``scripts/demo`` unchanged (push v1, pull it
   through the agent with skopeo and containerd, push v2, pull v2 rebuilt from
   deltas) and, while it runs, scrapes the ``/metrics`` of the origin, the
   tracker and the agent every ``--interval`` seconds, adding the target labels
   a ServiceMonitor would (``namespace``, ``service``, ``pod``, ``job``,
   ``instance``). The demo's cluster is found through the data directory its
   first log line names (``up.json`` there has every address).
2. **Grafana's part.** It reads the dashboard JSON, and for each panel
   evaluates every target's ``expr`` as a range query over the scraped samples
   with ``promql_subset`` (the functions the dashboard uses, with Prometheus's
   semantics), labels the series with the target's ``legendFormat``, and draws
   the panels where their ``gridPos`` puts them, in the panel's unit. Grafana's
   variables get the values Grafana would give them for this run: ``$namespace``
   is "All" (``.*``); ``$__rate_interval`` is 4 scrape intervals (Grafana's
   ``max($__interval + scrape, 4 * scrape)`` with the step equal to the scrape
   interval). A target outside the subset is drawn as "not rendered: <why>".

The demo's step lines become vertical marks on every chart (the moment the
demo printed that the step had finished), numbered in the header.
``--save-samples`` keeps the scraped run as JSON and ``--samples`` draws a
saved run again, so a layout change costs no second demo.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
from dashboard_run import Run, record_demo_run
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: files only, no display or global state
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image  # matplotlib's own dependency
from promql_subset import (
    Labels,
    Unsupported,
    parse,
    query_range,
    substitute,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "krill" / "dashboards" / "krill.json"
OUTPUT = ROOT / "docs" / "img" / "dashboard.png"
SIZE_BUDGET = 300 * 1024  # bytes: the picture lives in git
# Grafana's dark theme and its classic palette, so the picture reads like the real thing.
BACKGROUND, PANEL, BORDER, TEXT, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#23272c"
PALETTE = ("#73BF69", "#F2CC0C", "#5794F2", "#FF9830", "#F2495C", "#B877D9", "#70DBED",
           "#FADE2A", "#8AB8FF", "#FFB357", "#FF7383", "#CA95E5")  # fmt: skip
ROW_INCHES = 0.34  # one gridPos row (Grafana: 30 px)
WIDTH_INCHES = 18.0  # 24 gridPos columns
HEADER_INCHES = 1.5
DPI = 90


# --- Grafana's part: panels to series ---------------------------------------------------------


@dataclass
class Series:
    """One line of a panel: its legend (the target's legendFormat filled in) and points."""

    legend: str
    points: list[tuple[float, float]]


@dataclass
class PanelData:
    """A panel's series, and the targets that could not be evaluated (with why)."""

    series: list[Series] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def evaluate_panel(panel: dict[str, Any], run: Run) -> PanelData:
    """Each target's expression as a range query over the run, one step per scrape."""
    variables = {"namespace": ".*", "__rate_interval": _rate_interval(run)}
    start, end = run.store.time_range()
    data = PanelData()
    for target in panel.get("targets", []):
        try:
            node = parse(substitute(target["expr"], variables))
            result = query_range(node, run.store, start, end, run.interval)
        except Unsupported as exc:
            data.skipped.append(f"target {target.get('refId', '?')}: {exc}")
            continue
        for labels, points in sorted(result.items()):
            data.series.append(Series(legend_for(target.get("legendFormat", ""), labels), points))
    return data


def legend_for(template: str, labels: Labels) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced; empty means the whole label set."""
    values = dict(labels)
    if not template:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)


# --- drawing -----------------------------------------------------------------------------------


def render(
    dashboard: dict[str, Any], run: Run, evaluated: dict[int, PanelData], output: Path
) -> None:
    """The whole dashboard as one PNG, each panel where its ``gridPos`` puts it."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = HEADER_INCHES + rows * ROW_INCHES
    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, facecolor=BACKGROUND)
    _draw_header(figure, dashboard, run, height)
    for panel in panels:
        box = _panel_box(panel["gridPos"], height)
        if panel["type"] == "row":
            _draw_row(figure, panel["title"], box)
        elif panel["type"] == "timeseries":
            _draw_timeseries(figure, panel, box, evaluated[panel["id"]], run)
        else:
            _draw_message(figure, panel, box, f"not rendered: panel type {panel['type']}")
    _save(figure, output)


def _panel_box(grid: dict[str, int], height: float) -> tuple[float, float, float, float]:
    """(left, bottom, width, height) in figure fractions, with Grafana's gap between panels."""
    gap = 0.06  # inches
    left = grid["x"] / 24 + gap / WIDTH_INCHES
    width = grid["w"] / 24 - 2 * gap / WIDTH_INCHES
    top = HEADER_INCHES + grid["y"] * ROW_INCHES + gap
    box_height = grid["h"] * ROW_INCHES - 2 * gap
    return left, 1 - (top + box_height) / height, width, box_height / height


def _draw_header(figure: Figure, dashboard: dict[str, Any], run: Run, height: float) -> None:
    """The dashboard's title, then how this picture was made and the demo's steps."""
    start, end = run.store.time_range()
    when = datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = "".join(f", {name}={value}" for name, value in sorted(run.settings.items()))
    key = "   ".join(f"{i} {label}" for i, (_, label) in enumerate(run.steps, 1))
    lines = [
        (dashboard["title"], 17, TEXT),
        (
            "Not Grafana: scripts/render-dashboard drew helm/krill/dashboards/krill.json with "
            "matplotlib, each panel's PromQL evaluated by scripts/promql_subset.py over the "
            "/metrics of origin, tracker and agent",
            9.5,
            TEXT,
        ),
        (
            f"scraped every {run.interval:g} s during one scripts/demo run ({when}, "
            f"{end - start:.0f} s, Krill {run.source}{settings}); $namespace = All, "
            f"$__rate_interval = {_rate_interval(run)}",
            9.5,
            TEXT,
        ),
        (f"Dashed marks: the demo reported the step done.   {key}", 9.5, "#8e8e8e"),
    ]
    top = 0.15
    for text, size, color in lines:
        weight = "bold" if size > 12 else "normal"
        figure.text(
            0.006,
            1 - top / height,
            text,
            color=color,
            fontsize=size,
            weight=weight,
            va="top",
            parse_math=False,  # "$namespace" is Grafana's, not TeX
        )
        top += 0.3 if size < 12 else 0.42


def _rate_interval(run: Run) -> str:
    """Grafana's max($__interval + scrape interval, 4 x scrape interval), the step being one."""
    return f"{round(4 * run.interval)}s"


def _draw_row(figure: Figure, title: str, box: tuple[float, float, float, float]) -> None:
    left, bottom, _, box_height = box
    figure.text(
        left, bottom + box_height / 2, title, color=TEXT, fontsize=12, weight="bold", va="center"
    )


def _panel_frame(figure: Figure, panel: dict[str, Any], box: tuple[float, ...]) -> None:
    """The panel's background, border and title, as Grafana draws them."""
    left, bottom, width, box_height = box
    figure.add_artist(
        Rectangle(
            (left, bottom),
            width,
            box_height,
            transform=figure.transFigure,
            facecolor=PANEL,
            edgecolor=BORDER,
            linewidth=0.8,
            zorder=0,
        )
    )
    figure.text(
        left + 0.006,
        bottom + box_height - 0.1 / figure.get_figheight(),
        panel["title"],
        color=TEXT,
        fontsize=10,
        weight="bold",
        va="top",
        zorder=2,
    )


def _draw_message(figure: Figure, panel: dict[str, Any], box: tuple[float, ...], text: str) -> None:
    _panel_frame(figure, panel, box)
    left, bottom, width, box_height = box
    figure.text(
        left + width / 2,
        bottom + box_height / 2,
        text,
        color="#FF9830" if text.startswith("not rendered") else "#8e8e8e",
        fontsize=10,
        ha="center",
        va="center",
        wrap=True,
    )


def _draw_timeseries(
    figure: Figure,
    panel: dict[str, Any],
    box: tuple[float, float, float, float],
    data: PanelData,
    run: Run,
) -> None:
    if not data.series:
        reason = "; ".join(data.skipped)
        _draw_message(figure, panel, box, f"not rendered: {reason}" if reason else "No data")
        return
    _panel_frame(figure, panel, box)
    ax = figure.add_axes(_plot_area(box, figure, legend_lines=_legend_lines(data, box)))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    for i, series in enumerate(data.series):
        times, values = _with_gaps(series.points, run.interval)
        ax.plot(times, values, color=PALETTE[i % len(PALETTE)], linewidth=1.3, label=series.legend)
    _style_axes(ax, unit, run)
    _draw_steps(ax, run)
    _draw_legend(ax, data, box)
    if data.skipped:
        ax.set_title("not rendered: " + "; ".join(data.skipped), color="#FF9830", fontsize=8)


def _legend_columns(box: tuple[float, ...]) -> int:
    return max(1, round(box[2] * 24 / 4))  # one column per 4 gridPos columns


def _legend_lines(data: PanelData, box: tuple[float, ...]) -> int:
    return min(3, math.ceil(len(data.series) / _legend_columns(box)))


def _plot_area(
    box: tuple[float, float, float, float], figure: Figure, legend_lines: int
) -> tuple[float, float, float, float]:
    """The chart inside a panel: room for the title above and the legend below."""
    left, bottom, width, box_height = box
    fig_w, fig_h = figure.get_figwidth(), figure.get_figheight()
    title, ticks, legend = 0.36 / fig_h, 0.22 / fig_h, (0.06 + 0.19 * legend_lines) / fig_h
    y_labels = 0.72 / fig_w
    return (
        left + y_labels,
        bottom + ticks + legend,
        width - y_labels - 0.12 / fig_w,
        box_height - title - ticks - legend,
    )


def _with_gaps(
    points: list[tuple[float, float]], interval: float
) -> tuple[list[float], list[float]]:
    """Grafana leaves a gap where a series has no point (spanNulls off): NaN breaks the line."""
    times: list[float] = []
    values: list[float] = []
    previous = None
    for t, value in points:
        if previous is not None and t - previous > 1.5 * interval:
            times.append(_clock(previous + interval))
            values.append(math.nan)
        times.append(_clock(t))
        values.append(value)
        previous = t
    return times, values


def _clock(t: float) -> float:
    """A Unix time as matplotlib's date number, so the x axis reads as UTC clock time."""
    return float(mdates.date2num(datetime.datetime.fromtimestamp(t, datetime.UTC)))


def _style_axes(ax: Axes, unit: str, run: Run) -> None:
    start, end = run.store.time_range()
    ax.set_facecolor(PANEL)
    ax.set_xlim(_clock(start), _clock(end))
    ax.set_ylim(bottom=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.tick_params(colors="#9fa7b3", labelsize=8, length=0)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=datetime.UTC))
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(unit, v)))


def _draw_steps(ax: Axes, run: Run) -> None:
    """A dashed line per demo step, its number at the top; close numbers are stacked."""
    start, end = run.store.time_range()
    previous, level = -1.0, 0
    for i, (t, _) in enumerate(run.steps, 1):
        position = (t - start) / (end - start)
        level = level + 1 if position - previous < 0.025 else 0
        previous = position
        ax.axvline(_clock(t), color="#6e7079", linewidth=0.8, linestyle=(0, (3, 3)), zorder=0)
        ax.annotate(
            str(i),
            (_clock(t), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2 - 8 * level),
            textcoords="offset points",
            color="#8e8e8e",
            fontsize=7,
            va="top",
        )


def _draw_legend(ax: Axes, data: PanelData, box: tuple[float, ...]) -> None:
    columns = _legend_columns(box)
    handles, labels = ax.get_legend_handles_labels()
    room = 3 * columns
    if len(handles) > room:
        labels = [*labels[: room - 1], f"... {len(handles) - room + 1} more"]
        handles = handles[:room]
    legend = ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(0, -0.12),
        ncol=columns,
        frameon=False,
        fontsize=8,
        handlelength=1.2,
        borderaxespad=0,
        labelcolor=TEXT,
    )
    for text in legend.get_texts():
        text.set_text(_shorten(text.get_text(), 60 // min(columns, 4) + 14))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_IEC = ((2.0**30, "Gi"), (2.0**20, "Mi"), (2.0**10, "Ki"))


def format_value(unit: str, value: float) -> str:
    """A tick label in the panel's Grafana unit (the few units the dashboard uses)."""
    if unit == "percentunit":
        return f"{100 * value:.0f}%"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if 0 < abs(value) < 1 else f"{value:.3g} s"
    if unit == "bytes":
        return _scaled(value, _IEC, "B")
    suffix = {"Bps": "B/s", "ops": "ops/s", "reqps": "req/s"}.get(unit, "")
    return _scaled(value, _SI, suffix)


def _scaled(value: float, prefixes: tuple[tuple[float, str], ...], unit: str) -> str:
    """``value`` with the largest prefix it reaches: 1.5 MB/s, 12 MiB, 3 ops/s."""
    factor, prefix = next(((f, p) for f, p in prefixes if abs(value) >= f), (1.0, ""))
    return f"{value / factor:.3g} {prefix}{unit}".rstrip()


def _save(figure: Figure, output: Path) -> None:
    """PNG, reduced to a 256-colour palette when over budget (it is a screenshot in git)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".png") as raw:
        figure.savefig(raw.name, facecolor=BACKGROUND, dpi=DPI)
        image = Image.open(raw.name).convert("RGB")
        if Path(raw.name).stat().st_size > SIZE_BUDGET:
            image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.save(output, optimize=True)
    print(f"wrote {output} ({output.stat().st_size // 1024} KiB)")


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    if args.save_samples:
        args.save_samples.write_text("")  # fail now on a bad path, not after the run
    run = Run.load(args.samples) if args.samples else record_demo_run(args.interval)
    if args.save_samples:
        run.save(args.save_samples)
    dashboard = json.loads(args.dashboard.read_text())
    evaluated = {
        panel["id"]: evaluate_panel(panel, run)
        for panel in dashboard["panels"]
        if panel["type"] == "timeseries"
    }
    render(dashboard, run, evaluated, args.output)
    for panel in dashboard["panels"]:
        if panel["id"] in evaluated:
            print(f"  {panel['title']}: {_summary(evaluated[panel['id']])}")
    return 0


def _summary(data: PanelData) -> str:
    """How many series a panel drew, and which targets it could not."""
    skipped = f"; not rendered: {'; '.join(data.skipped)}" if data.skipped else ""
    return f"{len(data.series)} series{skipped}"


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run scripts/demo, scrape its cluster, and draw the chart's Grafana "
        "dashboard from those metrics into a PNG (no Grafana needed)."
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes (default 1)"
    )
    parser.add_argument("--save-samples", type=Path, help="also write the scraped run as JSON")
    parser.add_argument("--samples", type=Path, help="draw a run saved with --save-samples")
    return parser


if __name__ == "__main__":
    sys.exit(main())
