"""One serving process per data directory (``krill.datadir``), and the lines it shows."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from krill.config import ConfigError
from krill.datadir import LOCK_NAME, hold_data_dir
from tests.agent_cluster import agent_process, origin_process


def test_the_holder_writes_its_pid_and_a_second_holder_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "new" / "data"
    first = hold_data_dir(data, "agent")
    assert (data / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    busy = rf"in use by another krill process \(pid {os.getpid()} on {socket.gethostname()}\)"
    with pytest.raises(ConfigError, match=busy):
        hold_data_dir(data, "agent", wait=0)
    first.release()
    hold_data_dir(data, "agent", wait=0).release()


def test_a_second_holder_waits_for_the_first_to_let_go(tmp_path: Path) -> None:
    """A restart that overlaps its predecessor's shutdown gets the directory once it is free."""
    first = hold_data_dir(tmp_path, "agent")
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the first holder goes away during the third nap
        naps.append(seconds)
        now[0] += seconds
        if len(naps) == 3:
            first.release()

    second = hold_data_dir(tmp_path, "agent", wait=10, monotonic=lambda: now[0], sleep=sleep)
    assert len(naps) == 3
    second.release()


def test_a_directory_that_cannot_be_made_or_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"cannot use data directory .*: Not a directory"):
        hold_data_dir(tmp_path / "afile" / "sub", "origin")


def test_running_services_hold_their_data_directories(tmp_path: Path) -> None:
    """What a second agent or origin on the same --data would meet: the holder's pid."""
    with origin_process(tmp_path / "origin") as origin:
        with agent_process(tmp_path / "agent", origin) as agent:
            with pytest.raises(ConfigError, match=rf"\(pid {agent.process.pid} on "):
                hold_data_dir(agent.data, "agent", wait=0)
        hold_data_dir(agent.data, "agent", wait=0).release()  # free once it has stopped
        with pytest.raises(ConfigError, match="in use by another krill process"):
            hold_data_dir(tmp_path / "origin" / "data", "origin", wait=0)
