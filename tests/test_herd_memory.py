"""scripts/herd_memory.py: what the herd bench does to the machine's memory before "go".

The bench changes a kernel setting for its run, so what matters is that it puts
it back whatever happens, says what it did, and leaves nothing on disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts_import import script_module

memory = script_module("herd_memory")  # as bench_herd imports it


@pytest.fixture
def reporting_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the kernel's page_reporting_order parameter, set to 9."""
    setting = tmp_path / "page_reporting_order"
    setting.write_text("9\n")
    monkeypatch.setattr(memory, "REPORTING_ORDER", setting)
    return setting


def test_reporting_is_paused_inside_and_restored_after(reporting_order: Path) -> None:
    with memory.page_reporting_paused() as said:
        assert reporting_order.read_text() == memory.NO_REPORTING
        assert "9 -> 11" in said and "restored" in said
    assert reporting_order.read_text() == "9"


def test_reporting_is_restored_when_the_run_fails(reporting_order: Path) -> None:
    with pytest.raises(RuntimeError), memory.page_reporting_paused():
        raise RuntimeError("the bench failed mid-run")
    assert reporting_order.read_text() == "9"


def test_a_pause_already_in_place_is_left_to_whoever_made_it(reporting_order: Path) -> None:
    reporting_order.write_text(memory.NO_REPORTING)
    with memory.page_reporting_paused() as said:
        assert "already paused" in said
    assert reporting_order.read_text() == memory.NO_REPORTING  # not "restored" to paused


def test_cold_memory_leaves_the_setting_alone(reporting_order: Path) -> None:
    with memory.page_reporting_paused(enabled=False) as said:
        assert reporting_order.read_text() == "9\n"
    assert "--cold-memory" in said


def test_a_kernel_without_page_reporting_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "REPORTING_ORDER", tmp_path / "absent")
    with memory.page_reporting_paused() as said:
        assert "no free page reporting" in said
    assert not (tmp_path / "absent").exists()


def test_backing_writes_timed_steps_and_leaves_no_file(tmp_path: Path) -> None:
    backing = memory.back_page_cache(tmp_path, 2 * memory.STEP_MIB)
    assert backing.mib == 2 * memory.STEP_MIB
    assert all(us > 0 for us in backing.step_us)
    assert list(tmp_path.iterdir()) == []


def test_the_report_line_counts_cold_steps_apart() -> None:
    line = memory.Backing([0.9, 12.0, 13.0]).describe()
    assert line.startswith("backed 192 MiB of fresh page cache, 128 MiB of it cold")
    assert "12.5 us per 4 KiB page cold" in line and "0.9 us per 4 KiB page backed" in line
    assert memory.Backing([1.0]).describe() == (
        "backed 64 MiB of fresh page cache, 0 MiB of it cold (1.0 us per 4 KiB page backed)"
    )
    assert "--cold-memory" in memory.Backing().describe()


def test_the_footprint_is_a_copy_per_node_with_a_quarter_to_spare() -> None:
    assert memory.pull_footprint_mib(16, 64) == 1280
    assert memory.pull_footprint_mib(10**6, 64) < 10**6 * 64  # capped by free memory


def test_a_prepared_machine_backs_each_phase_and_reports_it(
    reporting_order: Path, tmp_path: Path
) -> None:
    with memory.prepared_machine(tmp_path) as machine:
        assert reporting_order.read_text() == memory.NO_REPORTING
        machine.before_go("krill", memory.STEP_MIB)()  # as a pull calls it before "go"
        lines = machine.lines(["krill", "registry"])
    assert reporting_order.read_text() == "9"
    assert lines[0].startswith("machine: free page reporting paused")
    assert lines[1].startswith("machine before krill's 'go': backed 64 MiB")
    assert "not backed" in lines[2]  # the registry phase never ran
    assert list(machine.step_us()) == ["krill"]


def test_with_cold_memory_nothing_is_backed(reporting_order: Path, tmp_path: Path) -> None:
    with memory.prepared_machine(tmp_path, enabled=False) as machine:
        machine.back("krill", memory.STEP_MIB)
    assert machine.step_us() == {}
    assert reporting_order.read_text() == "9\n"
