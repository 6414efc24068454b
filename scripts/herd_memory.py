"""Back the VM's free memory before a herd's "go", and say what it cost.

Why: this machine is a VM whose host takes free memory back (free page
reporting, ``page_reporting_order`` on the kernel command line). A page the
host took back costs ~12 us to touch again against ~1 us once it is backed
(measured 2026-12-07, docs/profile-agent.md "Memory the host took back"),
and only the last few hundred MB freed stay backed for more than a few
seconds. A herd of N nodes on one machine writes N copies of the layer into
fresh page cache at once: 1 GiB for 16 nodes, which on a cold machine is
~2.5 CPU-seconds of the host's work landing on the 2 cores that emulate 16
hosts. In a real cluster each node backs its own 64 MiB on its own cores, and
on the cloud VMs Kubernetes nodes run on memory stays backed.

So for the run the bench pauses the VM's free page reporting (where the
kernel has it: ``/sys/module/page_reporting/parameters/page_reporting_order``
raised above the largest block the buddy allocator has, restored on exit),
and before each timed pull (Krill's and docker-registry's alike) writes as
much fresh page cache as the pull will write, then deletes it: the pull then
finds backed pages, as a node whose memory is its own would. Backing alone is
not enough: freed pages are reported again within ~2 s, before a 7 s pull has
used them. The write is timed in 64 MiB steps and the report prints how much of
it was cold. ``--cold-memory`` does neither (the pulls then pay the host's cost
too), as on benchmarks that pin a CPU's clock: a state of the machine, not of
what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
NO_REPORTING = "11"  # above MAX_PAGE_ORDER (10 on x86-64): no free block is that large
STEP_MIB = 64
COLD_US = 4.0  # us per 4 KiB page above which a step counts as cold (backed ~1, cold ~12)


@dataclass
class Backing:
    """What backing the memory before one pull measured, per 64 MiB step."""

    step_us: list[float] = field(default_factory=list)  # wall us per 4 KiB page, per step

    @property
    def mib(self) -> int:
        return len(self.step_us) * STEP_MIB

    @property
    def cold_mib(self) -> int:
        return sum(STEP_MIB for us in self.step_us if us > COLD_US)

    def describe(self) -> str:
        if not self.step_us:
            return "not backed (--cold-memory): the pull paid for any page the host had taken back"
        warm = [us for us in self.step_us if us <= COLD_US]
        cold = [us for us in self.step_us if us > COLD_US]
        costs = [
            f"{sum(us) / len(us):.1f} us per 4 KiB page {what}"
            for us, what in ((cold, "cold"), (warm, "backed"))
            if us
        ]
        return (
            f"backed {self.mib} MiB of fresh page cache, {self.cold_mib} MiB of it cold "
            f"({' against '.join(costs)})"
        )


def back_page_cache(work: Path, mib: int) -> Backing:
    """Write ``mib`` MiB of fresh page cache under ``work``, timed per step, then free it."""
    chunk = os.urandom(1 << 20)
    path = work / "page-cache-backing"
    backing = Backing()
    with open(path, "wb") as f:
        for _ in range(max(1, mib // STEP_MIB)):
            start = time.perf_counter()
            for _ in range(STEP_MIB):
                f.write(chunk)
            f.flush()
            backing.step_us.append((time.perf_counter() - start) * 1e6 / (STEP_MIB * 256))
    path.unlink()  # freed just before "go": the pull's page cache reuses these pages
    return backing


def pull_footprint_mib(nodes: int, size_mib: int, copies: int = 1) -> int:
    """MiB of fresh page cache a pull writes (``copies`` per node), with a quarter to
    spare, never more than half the memory the machine has free."""
    available_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    return min(nodes * size_mib * copies * 5 // 4, available_kib // 2048)


@contextlib.contextmanager
def page_reporting_paused(enabled: bool = True) -> Iterator[str]:
    """Pause free page reporting for the block; yields a line saying what was done."""
    if not enabled:
        yield "free page reporting left as it is (--cold-memory)"
        return
    try:
        before = REPORTING_ORDER.read_text().strip()
        if before == NO_REPORTING:  # another run's pause: that run puts it back
            yield (
                f"free page reporting already paused (page_reporting_order {before}: another "
                f"bench run, or one killed before it could restore the setting; the kernel's "
                f"default is on its command line, /proc/cmdline)"
            )
            return
        REPORTING_ORDER.write_text(NO_REPORTING)
    except OSError:
        yield "no free page reporting to pause on this machine"
        return
    try:
        yield (
            f"free page reporting paused for the run (page_reporting_order {before} -> "
            f"{NO_REPORTING}, restored on exit)"
        )
    finally:
        REPORTING_ORDER.write_text(before)


class PreparedMachine:
    """One run's preparation: what was done to free page reporting, and each phase's backing.

    Built by ``prepared_machine``; a bench calls ``back`` (or hands out ``before_go``)
    just before each phase's "go", and prints ``lines`` with its figures.
    """

    def __init__(self, work: Path, reporting: str, enabled: bool) -> None:
        self.work = work
        self.reporting = reporting  # the line page_reporting_paused yielded
        self.enabled = enabled
        self.backing: dict[str, Backing] = {}  # phase ("krill", "registry") -> its backing

    def back(self, phase: str, mib: int) -> None:
        """Back ``mib`` MiB of page cache for ``phase`` (nothing with --cold-memory)."""
        if self.enabled:
            self.backing[phase] = back_page_cache(self.work, mib)

    def before_go(self, phase: str, mib: int) -> Callable[[], None]:
        """``back`` as a callback for a pull that calls it just before its "go"."""
        return lambda: self.back(phase, mib)

    def lines(self, phases: Iterable[str]) -> list[str]:
        """The report's lines: page reporting, then each phase's backing."""
        return [f"machine: {self.reporting}"] + [
            f"machine before {phase}'s 'go': {self.backing.get(phase, Backing()).describe()}"
            for phase in phases
        ]

    def step_us(self) -> dict[str, list[float]]:
        """Each phase's backing, us per 4 KiB page per 64 MiB step (for the JSON record)."""
        return {phase: backing.step_us for phase, backing in self.backing.items()}


@contextlib.contextmanager
def prepared_machine(work: Path, enabled: bool = True) -> Iterator[PreparedMachine]:
    """Free page reporting paused for the block (``enabled``), and a ``PreparedMachine``."""
    with page_reporting_paused(enabled) as reporting:
        yield PreparedMachine(work, reporting, enabled)


def add_cold_memory_argument(parser: argparse.ArgumentParser) -> None:
    """``--cold-memory``: the same flag, and help, in every herd bench."""
    parser.add_argument(
        "--cold-memory",
        action="store_true",
        help="neither pause the VM's free page reporting nor back its free memory before "
        "each 'go' (herd_memory): the pulls then also pay for pages the host took back",
    )
