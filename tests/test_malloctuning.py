"""The malloc settings `krill delta apply` makes (krill/malloctuning.py) are taken by glibc
and cut the page faults of a rebuild's buffer traffic.

Each case runs in a child process: the settings are process-wide, and pytest's own
process keeps its defaults."""

from __future__ import annotations

import subprocess
import sys

# One thread makes buffers of 256 KiB-8 MiB and another frees them, as a rebuild's op
# threads hand their output to the writer; prints the process's minor page faults.
_CHURN = """
import queue, random, resource, sys, threading
from krill.malloctuning import keep_freed_memory
taken = keep_freed_memory() if sys.argv[1] == "tuned" else None
handed = queue.Queue(maxsize=4)
def make():
    rng = random.Random(1)
    for _ in range(300):
        handed.put(bytes(rng.randrange(256 << 10, 8 << 20)))
    handed.put(None)
def free():
    while handed.get() is not None:
        pass
threads = [threading.Thread(target=make), threading.Thread(target=free)]
for t in threads: t.start()
for t in threads: t.join()
print(taken, resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_glibc_takes_the_settings_and_reuses_freed_buffers() -> None:
    taken, tuned = _faults("tuned")
    _, default = _faults("default")
    assert taken == "True"
    # Default: most buffers are fresh mappings the kernel faults in (74,000 faults here);
    # tuned: the heap keeps freed ones for the next (10,000).
    assert tuned * 3 < default, (tuned, default)
