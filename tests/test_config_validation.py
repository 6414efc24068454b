"""A bad setting stops a service at start-up with one line naming it and where it was set.

The cases are a new user's: URLs with a bad port or a stray space, numbers that
load fine and then break every request (a zero timeout, a negative TTL, ``nan``),
TOML values of the wrong type that used to be truncated (``10.7`` read as 10),
and messages that did not say which file, variable or flag held the value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from krill.agent.config import AgentConfig
from krill.config import ConfigError, load_config
from krill.origin.config import OriginConfig
from krill.tracker.config import TrackerConfig
from tests.components import krill_command

PREFIXES: dict[type, str] = {
    AgentConfig: "KRILL_AGENT_",
    OriginConfig: "KRILL_ORIGIN_",
    TrackerConfig: "KRILL_TRACKER_",
}


def load(
    cls: type[Any],
    *,
    file: Path | None = None,
    environ: dict[str, str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Any:
    """``cls`` loaded as its service loads it, from nothing but what the test gives."""
    return load_config(cls, file=file, env_prefix=PREFIXES[cls], environ=environ or {}, flags=flags)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


# -- 1. URLs ------------------------------------------------------------------------------

BAD_URLS = [
    (AgentConfig, "origin", "http://127.0.0.1:notaport", "port"),
    (AgentConfig, "tracker", "http://127.0.0.1:99999", "port"),
    (AgentConfig, "tracker", "http://127.0.0.1:abc", "port"),
    (AgentConfig, "origin", "http://127.0.0.1:43510 ", "whitespace"),
    (AgentConfig, "origin", "http://[::1", "not a valid URL"),
    (AgentConfig, "origin", "http://a:8000,http://[::1", "not a valid URL"),
    (AgentConfig, "origin", "http://a:8000, http://b:0", "port"),
    (AgentConfig, "origin", "dns+http://replicas:abc", "port"),
    (OriginConfig, "upstream", "http://", "URL"),
    (OriginConfig, "upstream", "https://:443", "no host"),
    (OriginConfig, "tracker", "http://127.0.0.1:99999", "port"),
    (OriginConfig, "replica_url", "http://10.0.0.1:notaport", "port"),
    (OriginConfig, "replicas", "http://a:5000,http://b:5000x", "port"),
    (OriginConfig, "s3_endpoint", "http://minio:abc", "port"),
    (TrackerConfig, "origin", ["http://127.0.0.1:0"], "port"),
    (TrackerConfig, "origin", ["http://[::1"], "not a valid URL"),
]


@pytest.mark.parametrize(("cls", "name", "value", "reason"), BAD_URLS)
def test_a_url_with_a_bad_port_host_or_space_is_refused_naming_the_setting(
    cls: type[Any], name: str, value: Any, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        load(cls, flags={name: value})
    assert f"--{name.replace('_', '-')}" in str(refused.value)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (AgentConfig, "origin", "http://[::1]:5000/"),
        (AgentConfig, "origin", "http://a:8000, http://b:8000/"),
        (AgentConfig, "origin", "dns+http://replicas:5000"),
        (AgentConfig, "tracker", "https://tracker.example/announce"),
        (OriginConfig, "upstream", "https://bob:pw@registry.example:5000"),
        (OriginConfig, "s3_endpoint", "http://127.0.0.1:8333"),
        (TrackerConfig, "origin", ["http://origin:5000", "https://[fd00::5]:5000"]),
    ],
)
def test_good_urls_still_load(cls: type[Any], name: str, value: Any) -> None:
    load(cls, flags={name: value})


@pytest.mark.parametrize(
    "args",
    [
        ["agent", "--listen", "127.0.0.1:0", "--registry-listen", "127.0.0.1:0",
         "--origin", "http://[::1"],
        ["origin", "--listen", "127.0.0.1:0", "--upstream", "http://"],
        ["tracker", "--listen", "127.0.0.1:0", "--origin", "http://127.0.0.1:abc"],
    ],
)  # fmt: skip
def test_a_bad_url_flag_is_one_line_and_exit_status_2(args: list[str], tmp_path: Path) -> None:
    if args[0] in ("agent", "origin"):
        args = [*args, "--data", str(tmp_path)]
    proc = subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(f"krill {args[0]}: error: --")


# -- 2. numbers ---------------------------------------------------------------------------


def numeric_settings() -> list[tuple[type[Any], str, type]]:
    """Every int and float field of the three services' settings."""
    found = []
    for cls in PREFIXES:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if hints[field.name] in (int, float):
                found.append((cls, field.name, hints[field.name]))
    return found


NUMERIC = numeric_settings()
NUMERIC_IDS = [f"{cls.__name__}.{name}" for cls, name, _ in NUMERIC]


@pytest.mark.parametrize(("cls", "name", "kind"), NUMERIC, ids=NUMERIC_IDS)
def test_every_numeric_setting_refuses_a_negative_value_naming_the_variable(
    cls: type[Any], name: str, kind: type
) -> None:
    variable = f"{PREFIXES[cls]}{name.upper()}"
    with pytest.raises(ConfigError, match=variable):
        load(cls, environ={variable: "-1"})


FLOATS = [(cls, name) for cls, name, kind in NUMERIC if kind is float]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "name"), FLOATS, ids=[f"{c.__name__}.{n}" for c, n in FLOATS])
def test_every_float_setting_refuses_nan_and_infinity(
    cls: type[Any], name: str, text: str, tmp_path: Path
) -> None:
    variable = f"{PREFIXES[cls]}{name.upper()}"
    with pytest.raises(ConfigError, match=f"{variable}.*finite"):
        load(cls, environ={variable: text})
    with pytest.raises(ConfigError, match="finite"):
        load(cls, file=toml(tmp_path, f"{name} = {text}\n"))
    with pytest.raises(ConfigError, match="finite"):  # argparse's type=float takes "nan"
        load(cls, flags={name: float(text)})
    with pytest.raises(ConfigError, match=name):  # built in code, not loaded
        cls(**{name: float(text)})


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (AgentConfig, "stall_timeout"),  # every pull aborted
        (AgentConfig, "cache_check_interval"),  # a busy loop
        (AgentConfig, "cache_max_age"),  # every blob evicted as it lands
        (OriginConfig, "upload_idle_timeout"),  # every push fails
        (OriginConfig, "delta_max_queue"),  # asyncio.Queue(0) has no bound
        (TrackerConfig, "interval"),
    ],
)
def test_zero_is_refused_where_it_would_break_every_request(cls: type[Any], name: str) -> None:
    variable = f"{PREFIXES[cls]}{name.upper()}"
    with pytest.raises(ConfigError, match=rf"{name} must be .*{variable}"):
        load(cls, environ={variable: "0"})


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (AgentConfig, "tag_ttl"),
        (AgentConfig, "seed_ttl"),
        (AgentConfig, "unreachable_after"),
        (AgentConfig, "origin_resume_attempts"),
        (AgentConfig, "upload_rate_limit"),
        (AgentConfig, "download_rate_limit"),
        (AgentConfig, "peer_port"),
        (OriginConfig, "tag_ttl"),
        (OriginConfig, "seed_ttl"),
        (OriginConfig, "gc_interval"),
        (OriginConfig, "piece_burst_slots"),
        (OriginConfig, "local_cache_max_bytes"),
    ],
)
def test_zero_still_means_off_or_no_limit_where_it_did(cls: type[Any], name: str) -> None:
    assert getattr(load(cls, environ={f"{PREFIXES[cls]}{name.upper()}": "0"}), name) == 0


def test_the_defaults_pass_their_own_checks() -> None:
    for cls in PREFIXES:
        config = load(cls)
        for field in dataclasses.fields(cls):
            value = getattr(config, field.name)
            if isinstance(value, float):
                assert math.isfinite(value)


# -- 3. types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "line"),
    [
        (OriginConfig, "max_upload_sessions = 10.7"),  # was read as 10
        (OriginConfig, "max_upload_sessions = true"),  # was read as 1
        (OriginConfig, "max_upload_sessions = 10.0"),
        (TrackerConfig, "interval = 0.5"),  # was "interval must be positive, got 0"
        (AgentConfig, "cache_budget = 1e10"),
    ],
)
def test_a_toml_float_or_bool_for_a_whole_number_is_refused(
    cls: type[Any], line: str, tmp_path: Path
) -> None:
    path = toml(tmp_path, line + "\n")
    where = re.escape(f"{path}:{line.partition(' ')[0]}")
    with pytest.raises(ConfigError, match=f"{where}: expected a whole number"):
        load(cls, file=path)


@pytest.mark.parametrize("text", ["10.7", "true", "1e3", "1_000", "٣", "ten"])
def test_an_env_whole_number_is_parsed_strictly(text: str) -> None:
    with pytest.raises(ConfigError, match="KRILL_ORIGIN_MAX_UPLOAD_SESSIONS: expected a whole"):
        load(OriginConfig, environ={"KRILL_ORIGIN_MAX_UPLOAD_SESSIONS": text})


def test_whole_numbers_and_decimals_of_the_right_type_load(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_upload_sessions = 12\ntag_ttl = 5\ndelta_max_ratio = 0.25\n")
    config = load(OriginConfig, file=path, environ={"KRILL_ORIGIN_UPLOAD_IDLE_TIMEOUT": " 90 "})
    assert config.max_upload_sessions == 12
    assert config.tag_ttl == 5.0 and isinstance(config.tag_ttl, float)
    assert (config.delta_max_ratio, config.upload_idle_timeout) == (0.25, 90.0)
    assert load(OriginConfig, flags={"max_manifest_size": 1024}).max_manifest_size == 1024


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("listen = 43570", "expected a string"),
        ("deltas = 1", "expected true or false"),
        ('tag_ttl = "soon"', "expected a finite number"),
        ("tag_ttl = false", "expected a finite number"),
    ],
)
def test_other_toml_values_of_the_wrong_type_are_refused(
    line: str, expected: str, tmp_path: Path
) -> None:
    path = toml(tmp_path, line + "\n")
    where = f"{path}:{line.partition(' ')[0]}"
    with pytest.raises(ConfigError, match=f"{re.escape(where)}: {expected}"):
        load(OriginConfig, file=path)


# -- 4. where a value came from -----------------------------------------------------------


def test_a_bad_value_from_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen = "43570"\n')
    with pytest.raises(ConfigError, match="HOST:PORT.*" + re.escape(f"(from {path}:listen)")):
        load(OriginConfig, file=path)
    path = toml(tmp_path, "stall-timeout = 0\n")
    where = re.escape(f"(from {path}:stall-timeout)")
    with pytest.raises(ConfigError, match=f"stall_timeout must be .*{where}"):
        load(AgentConfig, file=path)


def test_the_last_source_that_set_a_value_is_named(tmp_path: Path) -> None:
    path = toml(tmp_path, "tag_ttl = -5\n")
    with pytest.raises(ConfigError, match=r"\(from KRILL_ORIGIN_TAG_TTL\)"):
        load(OriginConfig, file=path, environ={"KRILL_ORIGIN_TAG_TTL": "-1"})
    with pytest.raises(ConfigError, match=r"tag_ttl must be .*\(from --tag-ttl\)"):
        environ = {"KRILL_ORIGIN_TAG_TTL": "1"}
        load(OriginConfig, file=path, environ=environ, flags={"tag_ttl": -2.0})
    with pytest.raises(ConfigError, match=r"\(from KRILL_AGENT_PEER_PORT\)"):
        load(AgentConfig, environ={"KRILL_AGENT_PEER_PORT": "70000"})


def test_a_config_built_in_code_names_the_field_alone() -> None:
    with pytest.raises(ConfigError) as refused:
        AgentConfig(stall_timeout=0)
    assert str(refused.value).startswith("stall_timeout must be ")
    assert "(from" not in str(refused.value)


def test_unknown_krill_variables_are_still_allowed() -> None:
    """Kubernetes service links create KRILL_<SERVICE>_PORT and the like."""
    load(AgentConfig, environ={"KRILL_AGENT_PORT": "tcp://10.0.0.1:7400", "KRILL_AGENT_X": "1"})
