"""`scripts/demo` (the README's first command) runs end to end and verifies what it pulled."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_pushes_and_pulls_through_the_agent() -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pushed it to the origin with skopeo" in proc.stdout
    assert "digests match and verify" in proc.stdout
    assert "where the agent's bytes came from" in proc.stdout
    assert "shipped only what changed" in proc.stdout
    changed = [line for line in proc.stdout.splitlines() if "changed layers from its v1" in line]
    assert changed and "rebuilt 2 of 2" in changed[0], proc.stdout  # v2 rebuilt from deltas
    assert "done; stopping Krill" in proc.stdout
