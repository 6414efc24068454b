"""The delta pipeline's work done in worker processes, and what each job reports back.

Computing a delta decompresses and diffs whole layers: seconds of CPU and
hundreds of MiB of memory, so it runs in the engine's process pool
(``origin.deltapool``), never on the event loop. The jobs are top-level
functions because the pool pickles them by name; what they return
(``JobResult`` with a ``DeltaOutcome``) is pickled back. Scratch files go to
the ``work_dir`` the engine empties at start, so a killed worker leaves
nothing in the store.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from krill.delta import DeltaFormatError, RecipeError, apply_delta, create_delta

__all__ = ["DeltaOutcome", "JobResult", "compute_delta_job", "file_list_job"]


class DeltaOutcome(Enum):
    """What computing one (target, base) pair came to; the value is the metrics label."""

    OK = "ok"  # kept: small enough, and rebuilding the target reproduced its digest
    TOO_BIG = "too_big"  # not under max_ratio of the target's size
    UNREPRODUCIBLE = "unreproducible"  # the target's compression cannot be redone bit for bit
    FAILED = "failed"  # a corrupt or unreadable layer, or the worker died


@dataclass(frozen=True, slots=True)
class JobResult:
    outcome: DeltaOutcome
    size: int | None = None  # the delta's bytes (OK, TOO_BIG)
    path: str | None = None  # OK: the verified delta file, in work_dir
    reason: str = ""  # UNREPRODUCIBLE, FAILED: what went wrong


def compute_delta_job(base: str, target: str, work_dir: str, max_ratio: float) -> JobResult:
    """Create, verify and size-check one delta; runs in a worker process."""
    fd, name = tempfile.mkstemp(prefix="delta-", suffix=".krd", dir=Path(work_dir))
    os.close(fd)
    out = Path(name)
    try:
        result = _create_and_verify(Path(base), Path(target), out, max_ratio)
    except RecipeError as exc:
        result = JobResult(DeltaOutcome.UNREPRODUCIBLE, reason=str(exc))
    except (DeltaFormatError, OSError, ValueError) as exc:
        result = JobResult(DeltaOutcome.FAILED, reason=str(exc))
    except Exception as exc:  # a corrupt layer (EOFError, zlib.error), MemoryError, ...
        result = JobResult(DeltaOutcome.FAILED, reason=f"{exc.__class__.__name__}: {exc}")
    if result.outcome is not DeltaOutcome.OK:
        out.unlink(missing_ok=True)
    return result


def _create_and_verify(base: Path, target: Path, out: Path, max_ratio: float) -> JobResult:
    created = create_delta(base, target, out)
    if created.size >= max_ratio * target.stat().st_size:
        return JobResult(DeltaOutcome.TOO_BIG, size=created.size)
    scratch = out.with_suffix(".verify")
    try:
        apply_delta(base, out, scratch)  # verifies diff_id and digest
    finally:
        scratch.unlink(missing_ok=True)
    return JobResult(DeltaOutcome.OK, size=created.size, path=str(out))


def file_list_job(blob: str, work_dir: str) -> list[str]:
    """The member names of a layer (for pairing by file-list overlap); runs in a worker.

    The decompressed tar goes to ``work_dir`` (emptied at start), not next to
    the blob, so a killed worker leaves nothing in the store.
    """
    from krill.delta.layerfiles import materialize_tar
    from krill.delta.tarscan import scan

    tar = materialize_tar(Path(blob), Path(work_dir))
    try:
        with open(tar.path, "rb") as f:
            return sorted({m.name for m in scan(f, tar.size).members})
    finally:
        tar.discard()
