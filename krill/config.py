"""Typed configuration: one dataclass per service, filled from file, env and flags.

Precedence, lowest first: the dataclass defaults, a TOML file (``--config``),
environment variables (``KRILL_<SERVICE>_<FIELD>``), command-line flags. Every
value is converted to the field's declared type here, so a typo in an env var
fails at start-up with a message naming the setting, not deep in a request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

# Defined beside CliError so that krill.cli catches it without importing this module.
from krill.clierror import ConfigError as ConfigError
from krill.logformat import LOG_LEVELS

T = TypeVar("T")


def load_config(
    cls: type[T],
    *,
    file: str | os.PathLike[str] | None = None,
    env_prefix: str,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults < file < env < flags."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_file(Path(file), hints))
    for field in dataclasses.fields(cls):
        env_name = f"{env_prefix}{field.name.upper()}"
        if env_name in environ:
            values[field.name] = _coerce(environ[env_name], hints[field.name], env_name)
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in hints:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(value, hints[name], f"--{name.replace('_', '-')}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _read_file(path: Path, hints: Mapping[str, Any]) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        out[name] = _coerce(value, hints[name], f"{path}:{key}")
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (a string from env/flags or a TOML value) to ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value == "" and len(non_none) < len(args)):
            return None
        return _coerce(value, non_none[0], where)
    if origin in (list, tuple):
        (item,) = args[:1] or (str,)
        if _looks_like_json(value, "["):
            value = _json_value(value, list, where)
        items = value.split(",") if isinstance(value, str) else list(value)
        converted = [_coerce(v.strip() if isinstance(v, str) else v, item, where) for v in items]
        converted = [v for v in converted if v != ""]
        return converted if origin is list else tuple(converted)
    if origin is dict:
        if _looks_like_json(value, "{"):
            value = _json_value(value, dict, where)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f'{where}: expected a table (in env/flags: JSON like {{"key": "value"}}), '
                f"got {value!r}"
            )
        key_hint, value_hint = args or (str, Any)
        return {
            _typed_item(k, key_hint, f"{where} key"): _typed_item(v, value_hint, f"{where}.{k}")
            for k, v in value.items()
        }
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is Path:
            return Path(value)
        if hint in (int, float, str):
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    return value


def _looks_like_json(value: Any, opener: str) -> bool:
    """Env and flag values are strings; a table or list can be given there as JSON."""
    return isinstance(value, str) and value.lstrip().startswith(opener)


def _json_value(text: str, kind: type, where: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected a JSON {kind.__name__}, got {text!r}")
    return value


def _typed_item(value: Any, hint: Any, where: str) -> Any:
    """A table's key or value: strings must already be strings (no silent str(1))."""
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Any:
        return value
    return _coerce(value, hint, where)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); a bare ``:PORT`` binds ``default_host``."""
    host, sep, port = text.rpartition(":")
    # ASCII: "²" passes isdigit alone; short: int() refuses over 4,300 digits.
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 20:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or default_host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"port {number} out of range in {text!r}")
    return host, number


def check_log_level(value: str) -> str:
    """``value`` in lower case; ConfigError unless it is one of ``LOG_LEVELS``.

    Checked with the rest of the config, so a typo fails at start-up as one line
    naming the setting, not as ``logging``'s traceback.
    """
    level = value.strip().lower()
    level = "warning" if level == "warn" else level  # logging's own alias
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def check_http_url(value: str, name: str) -> str:
    """``value`` without its trailing slash; ConfigError unless it is an http(s) URL with a host.

    ``name`` is the flag's name (``origin``): the message says ``--origin``. A bare
    ``host:port`` is refused here rather than accepted and failing on every request.
    """
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigError(
            f"--{name.replace('_', '-')} must be an http:// or https:// URL "
            f"(http://HOST:PORT), got {value!r}"
        )
    return value.rstrip("/")


def check_port(value: int, name: str) -> None:
    """ConfigError unless ``value`` is a TCP port number (0 = any free port)."""
    if not 0 <= value <= 65535:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be 0-65535 (0 = any free port), got {value}"
        )
