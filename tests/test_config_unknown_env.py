"""A misspelled ``KRILL_<SERVICE>_*`` variable is warned about; a Kubernetes service link is not.

An operator's ``KRILL_AGENT_ORIGN=...`` used to be ignored without a word, and the agent
ran with its default origin (krill.configenv says why it is a warning, not a refusal).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from krill.agent.config import AgentConfig
from krill.config import ConfigError, SettingError, load_config
from krill.configenv import UnknownVariable
from krill.origin.config import OriginConfig, load_origin_config
from krill.tracker.config import TrackerConfig
from tests.components import krill_command

PREFIXES: dict[type, str] = {
    AgentConfig: "KRILL_AGENT_",
    OriginConfig: "KRILL_ORIGIN_",
    TrackerConfig: "KRILL_TRACKER_",
}


def warnings_of(
    cls: type[Any], environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> list[str]:
    """The lines ``load_config`` logs for ``environ``, loading ``cls``."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_config(cls, env_prefix=PREFIXES[cls], environ=environ)
    return [record.getMessage() for record in caplog.records]


def test_a_typo_is_warned_about_with_the_variable_it_meant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"KRILL_AGENT_ORIGN": "http://origin:5000"}
    assert warnings_of(AgentConfig, environ, caplog) == [
        "config.unknown_variable variable=KRILL_AGENT_ORIGN meant=KRILL_AGENT_ORIGIN "
        "detail='KRILL_AGENT_ORIGN is not a setting of krill agent; "
        "did you mean KRILL_AGENT_ORIGIN?'"
    ]
    assert caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].name == "krill.configenv"


@pytest.mark.parametrize(
    ("cls", "variable", "meant"),
    [
        (OriginConfig, "KRILL_ORIGIN_STORAGE_URl", "KRILL_ORIGIN_STORAGE"),
        (AgentConfig, "KRILL_AGENT_STALL_TIMOUT", "KRILL_AGENT_STALL_TIMEOUT"),
        (AgentConfig, "krill_agent_origin", "KRILL_AGENT_ORIGIN"),  # case counts in a name
        (AgentConfig, "KRILL_AGENT_Origin", "KRILL_AGENT_ORIGIN"),
        # Ends in _PORT, but a number is no service link's value: still a typo.
        (AgentConfig, "KRILL_AGENT_PER_PORT", "KRILL_AGENT_PEER_PORT"),
        (TrackerConfig, "KRILL_TRACKER_ANNOUNCE_KEY", "KRILL_TRACKER_ANNOUNCE_KEYS"),
    ],
)
def test_each_service_suggests_its_own_setting(
    cls: type[Any], variable: str, meant: str, caplog: pytest.LogCaptureFixture
) -> None:
    (line,) = warnings_of(cls, {variable: "6881"}, caplog)
    assert f"variable={variable} meant={meant} " in line
    assert line.endswith(f"did you mean {meant}?'")


def test_nothing_close_is_said_without_a_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    assert warnings_of(TrackerConfig, {"KRILL_TRACKER_ZZZ": "1"}, caplog) == [
        "config.unknown_variable variable=KRILL_TRACKER_ZZZ meant=none "
        "detail='KRILL_TRACKER_ZZZ is not a setting of krill tracker'"
    ]


def test_the_value_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"KRILL_ORIGIN_UPSTREAM_PASWORD": "hunter2"}
    (line,) = warnings_of(OriginConfig, environ, caplog)
    assert "meant=KRILL_ORIGIN_UPSTREAM_PASSWORD" in line
    assert "hunter2" not in caplog.text


def test_each_unknown_variable_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"KRILL_AGENT_ORIGN": "x", "KRILL_AGENT_TRACKR": "y"}
    lines = warnings_of(AgentConfig, environ, caplog)
    assert [line.split()[1] for line in lines] == [
        "variable=KRILL_AGENT_ORIGN",
        "variable=KRILL_AGENT_TRACKR",
    ]


# Every form Kubernetes gives a Service's variables, for the Services the chart makes
# (release "krill": krill-krill-agent; release "krill-agent": krill-agent-krill-agent),
# one named after a service (krill-agent) and one whose name starts with it.
SERVICE_LINKS = {
    "KRILL_AGENT_SERVICE_HOST": "10.0.0.1",
    "KRILL_AGENT_SERVICE_PORT": "7400",
    "KRILL_AGENT_SERVICE_PORT_CONTROL": "7400",
    "KRILL_AGENT_PORT": "tcp://10.0.0.1:7400",
    "KRILL_AGENT_PORT_7400_TCP": "tcp://10.0.0.1:7400",
    "KRILL_AGENT_PORT_7400_TCP_PROTO": "tcp",
    "KRILL_AGENT_PORT_7400_TCP_PORT": "7400",
    "KRILL_AGENT_PORT_7400_TCP_ADDR": "10.0.0.1",
    "KRILL_AGENT_PORT_53_UDP": "udp://10.0.0.1:53",
    "KRILL_AGENT_PORT_9_SCTP_ADDR": "10.0.0.1",
    "KRILL_AGENT_METRICS_SERVICE_HOST": "10.0.0.2",
    "KRILL_AGENT_METRICS_PORT": "tcp://10.0.0.2:9100",
    "KRILL_AGENT_METRICS_PORT_9100_TCP_ADDR": "10.0.0.2",
    "KRILL_AGENT_KRILL_AGENT_SERVICE_PORT_CONTROL": "7400",
    "KRILL_AGENT_ORIGIN_SERVICE_HOST": "10.0.0.3",  # a Service krill-agent-origin
}


def test_service_links_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    assert warnings_of(AgentConfig, SERVICE_LINKS, caplog) == []
    origin_links = {
        name.replace("KRILL_AGENT_", "KRILL_ORIGIN_", 1): value
        for name, value in SERVICE_LINKS.items()
    }
    origin_links["KRILL_ORIGIN_KRILL_ORIGIN_REPLICAS_PORT_5000_TCP_PORT"] = "5000"
    assert warnings_of(OriginConfig, origin_links, caplog) == []


@pytest.mark.parametrize("cls", list(PREFIXES))
def test_the_settings_own_variables_are_not_warned_about(
    cls: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    environ = {f"{PREFIXES[cls]}LOG_LEVEL": "debug", f"{PREFIXES[cls]}LISTEN": "127.0.0.1:1"}
    assert warnings_of(cls, environ, caplog) == []
    environ = {"KRILL_AGENT_ORIGIN": "http://o:5000", "KRILL_AGENT_NAMESPACES": "{}"}
    assert warnings_of(AgentConfig, environ, caplog) == []


def test_another_services_variables_are_not_this_ones(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "KRILL_ORIGIN_X": "1",
        "KRILL_ORIGIN_STORAGE_URl": "s3://b",
        "KRILL_TRACKER_ORIGN": "http://o:5000",
        "KRILL_LOG_FORMAT": "json",
        "KRILL_AGENTS": "1",  # not KRILL_AGENT_
    }
    assert warnings_of(AgentConfig, environ, caplog) == []


def test_held_warnings_are_handed_back_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    held: list[UnknownVariable] = []
    with caplog.at_level(logging.WARNING):
        load_origin_config(environ={"KRILL_ORIGIN_TAG_TT": "5"}, held_warnings=held)
    assert caplog.records == []
    assert held == [UnknownVariable("KRILL_ORIGIN_TAG_TT", "krill origin", "KRILL_ORIGIN_TAG_TTL")]
    held[0].log()
    assert "variable=KRILL_ORIGIN_TAG_TT meant=KRILL_ORIGIN_TAG_TTL" in caplog.text


@pytest.mark.parametrize(("cls", "service"), [(AgentConfig, "agent"), (OriginConfig, "origin")])
def test_a_service_link_in_a_settings_name_is_refused_saying_so(
    cls: type[Any], service: str
) -> None:
    """``peer_port`` is a setting of both, and the link of a Service named ``krill-*-peer``."""
    variable = f"{PREFIXES[cls]}PEER_PORT"
    with pytest.raises(ConfigError) as refused:
        load_config(cls, env_prefix=PREFIXES[cls], environ={variable: "tcp://10.0.0.9:6881"})
    message = str(refused.value)
    assert message.startswith(f"{variable} = 'tcp://10.0.0.9:6881' is the Kubernetes service link")
    assert f"a Service named krill-{service}-peer" in message
    assert "enableServiceLinks: false" in message
    config = load_config(cls, env_prefix=PREFIXES[cls], environ={variable: "6881"})
    assert config.peer_port == 6881


def _env(**krill: str) -> dict[str, str]:
    """This environment without its KRILL_* variables, with ``krill``'s."""
    return {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("KRILL_")},
        **krill,
    }


def test_the_agent_cli_logs_the_typo_before_the_error_it_causes(tmp_path: Path) -> None:
    """The operator's case: the origin was misspelled, so the agent has none."""
    proc = subprocess.run(
        krill_command("agent", "--data", str(tmp_path)),
        env=_env(KRILL_AGENT_ORIGN="http://origin:5000", KRILL_AGENT_PORT="tcp://10.0.0.1:7400"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    warning, error = proc.stderr.splitlines()
    # A structured line from the configured logging, not Python's bare last-resort output.
    assert " warning krill.configenv config.unknown_variable variable=KRILL_AGENT_ORIGN " in warning
    assert "did you mean KRILL_AGENT_ORIGIN?" in warning
    assert error.startswith("krill agent: error: --origin URL is required")


def test_the_origin_gc_cli_logs_it_as_json_with_log_format_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        krill_command("--log-format", "json", "origin", "gc", "--data", str(tmp_path)),
        env=_env(KRILL_ORIGIN_STORAGE_URl="s3://bucket"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    warning, error = (json.loads(line) for line in proc.stderr.splitlines())
    assert (warning["level"], warning["logger"]) == ("warning", "krill.configenv")
    assert warning["message"].startswith(
        "config.unknown_variable variable=KRILL_ORIGIN_STORAGE_URl meant=KRILL_ORIGIN_STORAGE "
    )
    assert "holds no origin store" in error["message"]


WATERMARK_TYPO = {
    "KRILL_AGENT_CACHE_LOW_WATERMARK": "0.95",
    "KRILL_AGENT_CACHE_HIGH_WATERMARKS": "0.99",  # meant ..._HIGH_WATERMARK: left at 0.9
}
ALSO = (
    " (also: KRILL_AGENT_CACHE_HIGH_WATERMARKS is not a setting of krill agent; "
    "did you mean KRILL_AGENT_CACHE_HIGH_WATERMARK?)"
)


def test_a_refused_setting_says_the_typo_that_may_explain_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning used to come only after a successful build: lost when it mattered."""
    held: list[UnknownVariable] = []
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as refused:
        load_config(
            AgentConfig, env_prefix="KRILL_AGENT_", environ=WATERMARK_TYPO, held_warnings=held
        )
    assert str(refused.value) == (
        "cache watermarks must satisfy 0 < cache_low_watermark < cache_high_watermark <= 1 "
        "(got 0.95, 0.9)" + ALSO
    )
    assert type(refused.value) is ConfigError
    assert held == [] and caplog.records == []  # said once: in the error


@pytest.mark.parametrize(
    ("variable", "value", "start"),
    [
        # Refused by the class: a SettingError that keeps its setting and says where.
        ("KRILL_AGENT_CACHE_BUDGET", "0", "cache_budget"),
        # Refused while converting, before the class sees it.
        ("KRILL_AGENT_CACHE_BUDGET", "lots", "KRILL_AGENT_CACHE_BUDGET: expected a whole number"),
        # A service link in a setting's variable, refused while reading the environment.
        ("KRILL_AGENT_PEER_PORT", "tcp://10.0.0.9:6881", "KRILL_AGENT_PEER_PORT = "),
    ],
)
def test_each_kind_of_refusal_keeps_its_type_and_adds_the_typo(
    variable: str, value: str, start: str
) -> None:
    environ = {variable: value, "KRILL_AGENT_CACHE_HIGH_WATERMARKS": "0.99"}
    with pytest.raises(ConfigError) as without:
        load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ={variable: value})
    with pytest.raises(ConfigError) as refused:
        load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ=environ)
    assert str(refused.value).startswith(start)
    assert str(refused.value) == str(without.value) + ALSO
    assert type(refused.value) is type(without.value)
    if isinstance(without.value, SettingError):
        assert isinstance(refused.value, SettingError)
        assert refused.value.setting == without.value.setting


def test_the_agent_cli_shows_the_typo_in_its_one_error_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        krill_command("agent", "--data", str(tmp_path), "--origin", "http://origin:5000"),
        env=_env(**WATERMARK_TYPO),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("krill agent: error: cache watermarks must satisfy ")
    assert line.endswith(ALSO)
