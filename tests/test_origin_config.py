"""The origin's settings (file < env < flags) and its command line as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from krill.config import ConfigError
from krill.origin.config import OriginConfig, load_origin_config
from tests.components import free_port, krill_command, krill_process


def test_file_env_and_flags_layer_in_order(tmp_path: Path) -> None:
    config_file = tmp_path / "origin.toml"
    config_file.write_text(
        'listen = "127.0.0.1:6000"\ndata = "/srv/a"\ntag-ttl = 5.0\nupstream = "http://up:5000"\n'
    )
    config = load_origin_config(
        file=config_file,
        environ={"KRILL_ORIGIN_DATA": "/srv/b", "KRILL_ORIGIN_TAG_TTL": "7"},
        flags={"data": "/srv/c", "listen": None},
    )
    assert config.listen == "127.0.0.1:6000"
    assert config.data == Path("/srv/c")
    assert config.tag_ttl == 7.0
    assert config.upstream == "http://up:5000"
    assert (config.tracker, config.peer_port, config.seed_ttl) == (None, 0, 600.0)


def test_credentials_come_from_a_file_or_env_and_stay_out_of_repr(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("alice:pa:ss\n")
    from_file = OriginConfig(upstream="https://r.example", upstream_credentials=creds)
    assert from_file.upstream_auth() == ("alice", "pa:ss")
    from_env = load_origin_config(
        environ={"KRILL_ORIGIN_UPSTREAM_USERNAME": "bob", "KRILL_ORIGIN_UPSTREAM_PASSWORD": "pw1"}
    )
    assert from_env.upstream_auth() == ("bob", "pw1")
    assert "pw1" not in repr(from_env)
    creds.write_text("no separator")
    with pytest.raises(ConfigError, match="username:password"):
        from_file.upstream_auth()


def test_bad_settings_are_refused_with_their_name() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        OriginConfig(listen="nowhere")
    with pytest.raises(ConfigError, match="upstream"):
        OriginConfig(upstream="ftp://x")
    with pytest.raises(ConfigError, match="KRILL_ORIGIN_TAG_TTL"):
        load_origin_config(environ={"KRILL_ORIGIN_TAG_TTL": "soon"})


def test_upstream_and_upload_limits_from_env() -> None:
    config = load_origin_config(
        environ={
            "KRILL_ORIGIN_UPSTREAM_TOKEN_HOSTS": "auth.example,auth2.example",
            "KRILL_ORIGIN_UPSTREAM_TAG_TIMEOUT": "2.5",
            "KRILL_ORIGIN_MAX_UPLOAD_SESSIONS": "10",
        }
    )
    assert config.upstream_token_hosts == ("auth.example", "auth2.example")
    assert (config.upstream_tag_timeout, config.max_upload_sessions) == (2.5, 10)
    with pytest.raises(ConfigError, match="max_upload_sessions"):
        OriginConfig(max_upload_sessions=0)
    with pytest.raises(ConfigError, match="upstream_tag_timeout"):
        OriginConfig(upstream_tag_timeout=0)


def test_cli_serves_until_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["origin", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "data")]
    with krill_process(args, tmp_path / "origin.log", f"{base}/health") as proc:
        with urllib.request.urlopen(f"{base}/health") as resp:
            assert json.load(resp)["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert (tmp_path / "data" / "blobs").is_dir()


def test_cli_reports_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        krill_command("origin", "--listen", "bad", "--data", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "HOST:PORT" in result.stderr


def test_credentials_in_the_upstream_url_are_not_shown() -> None:
    config = OriginConfig(upstream="https://bob:hunter2@registry.example:5000")
    assert config.upstream_for_display == "https://registry.example:5000"
