"""``krill.processes.wait_http``: a service that exits while it is waited for is one line.

``krill up`` showed the last 15 lines of the service's log inside its error; the
rule for the CLI is one line, and a Krill service's last log line already says
why it stopped (new-user review, stop 39).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krill.processes import ProcessFailed, wait_http
from tests.components import free_port


def test_an_exited_service_is_its_last_log_line_and_where_the_log_is(tmp_path: Path) -> None:
    log = tmp_path / "origin.log"
    log.write_text("info starting\nkrill origin: error: cannot listen on 127.0.0.1:1\n\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    proc.wait()
    with pytest.raises(ProcessFailed) as failed:
        wait_http(f"http://127.0.0.1:{free_port()}/", proc, name="origin", log_path=log)
    assert str(failed.value) == (
        "origin exited with status 2 (krill origin: error: cannot listen on 127.0.0.1:1); "
        f"see {log}"
    )
