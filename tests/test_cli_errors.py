"""An operator's mistakes get one line that says what to do, never a traceback.

The cases are the ones a fresh pair of eyes hit running the README's commands:
a port already taken, a data directory that cannot be written, a log level,
URL, port or Redis URL mistyped, a config path that is a directory, and the
agent subcommands' ``--agent``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from krill.agent.preheat import parse_image_reference
from krill.cli import main
from krill.clierror import CliError, ConfigError, user_error_in
from krill.config import check_log_level
from krill.names import image_reference
from tests.components import free_port, krill_command

DIGEST = "sha256:" + "a" * 64



def krill_fails(*args: str) -> str:
    """Run ``krill ARGS`` as a process; its stderr, once it has failed with one line."""
    proc = subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("service", ["origin", "tracker", "agent"])
def test_a_port_in_use_is_one_line_naming_the_flag(
    service: str, taken_port: int, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{taken_port}"
    args = {
        "origin": ["origin", "--listen", address, "--data", str(tmp_path)],
        "tracker": ["tracker", "--listen", address],
        "agent": [
            "agent", "--listen", f"127.0.0.1:{free_port()}", "--registry-listen", address,
            "--data", str(tmp_path), "--origin", "http://127.0.0.1:1",
        ],
    }[service]  # fmt: skip
    line = krill_fails(*args)
    flag = "--registry-listen" if service == "agent" else "--listen"
    assert line == (
        f"krill {service}: error: cannot listen on {address} ({flag}): Address already in "
        "use; another process listens there: stop it or choose another port"
    )


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``krill ARGV`` in this process, for mistakes caught before anything starts."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tracker", "--origin", "127.0.0.1:5000"],
         "--origin must be an http:// or https:// URL (http://HOST:PORT), got '127.0.0.1:5000'"),
        (["origin", "--tracker", "127.0.0.1:7000"], "--tracker must be an http:// or https:// URL"),
        (["origin", "--peer-port", "70000"], "--peer-port must be 0-65535"),
        (["tracker", "--redis", "http://x"], "--redis must be a redis://HOST:PORT/DB URL"),
        (["tracker", "--redis", "redis://h:abc/0"],
         "--redis is not a URL redis can use (Port could not be cast to integer value"),
        (["agent", "--listen", "127.0.0.1:7555", "--registry-listen", "0.0.0.0:7555",
          "--origin", "http://o"], "need different ports"),
        (["agent", "containerd-config", "--registry", "docker.io", "--agent", "garbage",
          "--dir", "d"], "--agent must be the agent's registry endpoint HOST:PORT"),
        (["up", "--origin-port", "99999"], "ports must be 1-65535, got 99999"),
    ],
)  # fmt: skip
def test_a_mistyped_setting_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, err = run_main(capsys, *argv)
    assert code != 0
    assert err.startswith(f"krill {argv[0]}: error: ") and expected in err
    assert "\n" not in err


def test_a_log_level_is_checked_from_flags_files_and_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('log_level = "bogus"\n')
    assert run_main(capsys, "tracker", "--config", str(config)) == (
        2, "krill tracker: error: log_level must be one of debug, info, warning, error, "
        "critical, got 'bogus'",
    )  # fmt: skip
    assert check_log_level(" WARN ") == "warning" and check_log_level("INFO") == "info"
    monkeypatch.setenv("KRILL_ORIGIN_LOG_LEVEL", "bogus")
    code, err = run_main(capsys, "origin", "--data", str(tmp_path / "o"))
    assert code == 2 and "log_level must be one of" in err
    with pytest.raises(SystemExit):  # argparse's own one line for the flag
        main(["agent", "--log-level", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_files_and_directories_that_cannot_be_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    code, err = run_main(capsys, "tracker", "--config", str(tmp_path))
    assert code == 2
    assert err == f"krill tracker: error: cannot read config file {tmp_path}: Is a directory"
    code, err = run_main(capsys, "up", "--data", str(afile / "sub"))
    assert code == 1 and err.endswith("Not a directory")
    code, err = run_main(
        capsys, "agent", "containerd-config", "--registry", "docker.io",
        "--agent", "127.0.0.1:7401", "--dir", str(afile / "sub"),
    )  # fmt: skip
    assert code == 1 and err.endswith(f"cannot write into --dir {afile / 'sub'}: Not a directory")


def test_a_user_error_inside_a_task_group_is_shown_as_its_line() -> None:
    error = CliError("cannot listen on x")
    group = ExceptionGroup("outer", [ValueError("other"), ExceptionGroup("inner", [error])])
    assert user_error_in(group) is error
    assert user_error_in(ExceptionGroup("g", [ValueError("x")])) is None
    setting = ConfigError("bad")
    assert user_error_in(ExceptionGroup("g", [setting])) is setting


def test_preheat_takes_name_tag_at_digest_and_messages_name_images_as_users_write_them() -> None:
    ref = parse_image_reference(f"registry.local:5000/team/app:1.0@{DIGEST}")
    assert (ref.host, ref.repository, ref.reference) == ("registry.local:5000", "team/app", DIGEST)
    assert parse_image_reference(f"team/app@{DIGEST}").repository == "team/app"
    assert image_reference("team/app", DIGEST) == f"team/app@{DIGEST}"
    assert image_reference("team/app", "1.0") == "team/app:1.0"
