"""A demo run for ``scripts/render_dashboard.py``: its scraped samples and its steps.

``record_demo_run`` runs ``scripts/demo`` unchanged and, while it runs, scrapes the
``/metrics`` of the origin, the tracker and the agent every ``interval`` seconds, adding
the target labels a ServiceMonitor would (``namespace``, ``service``, ``pod``, ``job``,
``instance``); the demo's step lines become the run's marks. ``Run.save`` and
``Run.load`` keep a run as JSON, so a layout change costs no second demo.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from promql_subset import SampleStore, ingest_exposition, labels_of

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "krill"  # what the chart's ServiceMonitor would report; one namespace here

# The demo's lines that end a step, and what the mark on the charts is called.
DEMO_STEPS = (
    (r"pushed it to the origin", "v1 pushed"),
    (r"pulled it through the agent with skopeo", "v1 pulled via agent (skopeo)"),
    (r"containerd pulled and unpacked \S+:1\.0", "v1 pulled via agent (containerd)"),
    (r"pushed demo/app:2\.0", "v2 pushed"),
    (r"computed a delta", "origin's deltas ready"),
    (r"pulled demo/app:2\.0 through the agent", "v2 pulled via agent (skopeo)"),
    (r"containerd pulled and unpacked \S+:2\.0", "v2 pulled via agent (containerd)"),
)
DEMO_WORK_LINE = re.compile(r"starting krill up \(logs in (\S+)/up/logs\)")


@dataclass
class Run:
    """What one demo run left: every scraped sample and when each demo step finished."""

    store: SampleStore = field(default_factory=SampleStore)
    steps: list[tuple[float, str]] = field(default_factory=list)
    interval: float = 1.0
    source: str = ""  # which code ran: `git describe --always --dirty`
    settings: dict[str, str] = field(default_factory=dict)  # KRILL_* variables the demo saw

    def save(self, path: Path) -> None:
        """Write the run as JSON (``--samples`` reads it back)."""
        series = [
            {"labels": dict(labels), "points": points}
            for by_labels in self.store.by_name.values()
            for labels, points in by_labels.items()
        ]
        body = {
            "interval": self.interval,
            "source": self.source,
            "settings": self.settings,
            "steps": self.steps,
        }
        path.write_text(json.dumps({**body, "series": series}))

    @classmethod
    def load(cls, path: Path) -> Run:
        """A run written by ``save``."""
        raw = json.loads(path.read_text())
        run = cls(interval=raw["interval"], source=raw["source"], settings=raw["settings"])
        run.steps = [(t, label) for t, label in raw["steps"]]
        for entry in raw["series"]:
            labels = labels_of(entry["labels"])
            for t, value in entry["points"]:
                run.store.append(labels, t, value)
        return run


def record_demo_run(interval: float) -> Run:
    """Run ``scripts/demo`` and scrape its cluster until the demo ends."""
    run = Run(interval=interval, source=_git_describe(), settings=_krill_settings())
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert demo.stdout is not None and demo.stderr is not None
    work_dirs: queue.Queue[Path] = queue.Queue()
    readers = [
        threading.Thread(target=_read_demo_stdout, args=(demo.stdout, run), daemon=True),
        threading.Thread(target=_read_demo_stderr, args=(demo.stderr, work_dirs), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        targets = _demo_targets(demo, work_dirs)
        stop = threading.Event()
        scraper = threading.Thread(target=_scrape, args=(targets, run, stop), daemon=True)
        scraper.start()
        demo.wait()
        stop.set()
        scraper.join()
    except BaseException:
        demo.terminate()  # the demo's trap stops its cluster and removes its files
        demo.wait()
        raise
    for reader in readers:
        reader.join()
    if demo.returncode != 0:
        raise SystemExit(f"scripts/demo failed (exit {demo.returncode}); nothing rendered")
    return run


def _krill_settings() -> dict[str, str]:
    """The KRILL_* variables the demo's services inherit (they change what the picture shows),
    leaving out any that may hold a secret: the header prints them."""
    secret = re.compile(r"PASSWORD|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith("KRILL_") and not secret.search(name)
    }


def _read_demo_stdout(stream: IO[str], run: Run) -> None:
    """Echo the demo's output and note when each of its steps finished."""
    for line in stream:
        sys.stdout.write(line)
        for pattern, label in DEMO_STEPS:
            if re.search(pattern, line):
                run.steps.append((time.time(), label))


def _read_demo_stderr(stream: IO[str], work_dirs: queue.Queue[Path]) -> None:
    for line in stream:
        sys.stderr.write(line)
        match = DEMO_WORK_LINE.search(line)
        if match:
            work_dirs.put(Path(match.group(1)))


def _demo_targets(demo: subprocess.Popen[str], work_dirs: queue.Queue[Path]) -> dict[str, str]:
    """Service name -> its host:port, from the ``up.json`` of the demo's ``krill up``."""
    work = _next_or_exit(demo, work_dirs)
    up_json = work / "up" / "up.json"
    while not up_json.exists():
        if demo.poll() is not None:
            raise SystemExit("scripts/demo ended before its cluster was up")
        time.sleep(0.1)
    up = json.loads(up_json.read_text())
    return {name: up[name] for name in ("origin", "tracker", "agent")}


def _next_or_exit(demo: subprocess.Popen[str], work_dirs: queue.Queue[Path]) -> Path:
    while True:
        try:
            return work_dirs.get(timeout=0.5)
        except queue.Empty:
            if demo.poll() is not None:
                raise SystemExit(
                    "scripts/demo ended without naming its data directory: did its "
                    "'starting krill up (logs in ...)' line change? Update DEMO_WORK_LINE."
                ) from None


def _scrape(targets: dict[str, str], run: Run, stop: threading.Event) -> None:
    """Every ``run.interval`` s, each target's ``/metrics`` into the store, as Prometheus would.

    A failed scrape stores nothing for that target (the demo stops its cluster
    at the end, so the last scrapes fail); the sample time is the scrape's
    start, as Prometheus stamps it.
    """
    next_tick = time.monotonic()
    while not stop.is_set():
        for name, address in targets.items():
            started = time.time()
            try:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            ingest_exposition(run.store, started, text, _target_labels(name, address))
        next_tick += run.interval
        stop.wait(max(0.0, next_tick - time.monotonic()))


def _target_labels(service: str, address: str) -> dict[str, str]:
    return {
        "namespace": NAMESPACE,
        "service": f"krill-{service}",
        "pod": f"krill-{service}-0",
        "job": f"krill-{service}",
        "instance": address,
    }


def _git_describe() -> str:
    answer = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return answer.stdout.strip() or "unknown"
