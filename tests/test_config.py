"""Config comes from defaults < file < env < flags, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from krill.config import ConfigError, load_config, parse_hostport


@dataclass
class Sample:
    listen: str = "127.0.0.1:5000"
    ttl: float = 30.0
    workers: int = 2
    verbose: bool = False
    data: Path = Path("/tmp/x")
    origins: list[str] = field(default_factory=list)
    upstream: str | None = None


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('ttl = 5.0\nworkers = 3\norigins = ["http://a"]\n')
    cfg = load_config(
        Sample, file=file, env_prefix="K_", environ={"K_WORKERS": "4", "K_VERBOSE": "yes"},
        flags={"listen": ":6000", "upstream": None},
    )
    assert cfg == Sample(":6000", 5.0, 4, True, Path("/tmp/x"), ["http://a"], None)


def test_env_list_and_bad_value(tmp_path: Path) -> None:
    cfg = load_config(Sample, env_prefix="K_", environ={"K_ORIGINS": "http://a, http://b"})
    assert cfg.origins == ["http://a", "http://b"]
    with pytest.raises(ConfigError, match="K_WORKERS"):
        load_config(Sample, env_prefix="K_", environ={"K_WORKERS": "many"})


def test_unknown_file_key(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("nope = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        load_config(Sample, file=file, env_prefix="K_", environ={})


def test_parse_hostport() -> None:
    assert parse_hostport("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_hostport(":80") == ("127.0.0.1", 80)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError):
        parse_hostport("nope")


@dataclass
class WithTable:
    namespaces: dict[str, str] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)


def test_tables_and_lists_from_env_and_flags_as_json(tmp_path: Path) -> None:
    environ = {"K_NAMESPACES": '{"docker.io": "", "ghcr.io": "mirror/ghcr"}'}
    cfg = load_config(WithTable, env_prefix="K_", environ=environ)
    assert cfg.namespaces == {"docker.io": "", "ghcr.io": "mirror/ghcr"}
    cfg = load_config(WithTable, env_prefix="K_", environ={}, flags={"origins": '["a,b", "c"]'})
    assert cfg.origins == ["a,b", "c"]  # JSON keeps commas inside items
    with pytest.raises(ConfigError, match=r"K_NAMESPACES.*JSON"):
        load_config(WithTable, env_prefix="K_", environ={"K_NAMESPACES": "{docker.io: x}"})
    with pytest.raises(ConfigError, match="expected a string"):
        load_config(WithTable, env_prefix="K_", environ={"K_NAMESPACES": '{"docker.io": 1}'})
    with pytest.raises(ConfigError, match="expected a table"):
        load_config(WithTable, env_prefix="K_", environ={"K_NAMESPACES": "docker.io=x"})
    file = tmp_path / "c.toml"
    file.write_text('namespaces = { "docker.io" = 2 }\n')
    with pytest.raises(ConfigError, match="expected a string"):
        load_config(WithTable, file=file, env_prefix="K_", environ={})


def test_agent_namespaces_from_the_environment() -> None:
    from krill.agent.config import AgentConfig

    environ = {"KRILL_AGENT_NAMESPACES": '{"registry.local:5000": "local"}'}
    cfg = load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ=environ)
    assert cfg.namespaces == {"registry.local:5000": "local"}
