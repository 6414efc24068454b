"""Typed configuration: one dataclass per service, filled from file, env and flags.

Precedence, lowest first: the dataclass defaults, a TOML file (``--config``),
environment variables (``KRILL_<SERVICE>_<FIELD>``; one with the prefix that names no
setting is warned about, ``krill.configenv``), command-line flags. Every
value is converted to the field's declared type here, strictly (a TOML ``10.7``
or ``true`` for a whole number is refused, not truncated), so a typo fails at
start-up with one line naming the setting and where it was set, not deep in a
request. The ``check_*`` helpers are what the services' ``__post_init__`` use
for their URLs, ports and numbers; their ``SettingError`` names the field, and
``load_config`` adds the file and key, variable or flag that gave the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

# Defined beside CliError so that krill.cli catches it without importing this module.
from krill.clierror import ConfigError as ConfigError
from krill.configenv import UnknownVariable, find_unknown_variables, service_link_in_setting
from krill.logformat import LOG_LEVELS

T = TypeVar("T")


def load_config(
    cls: type[T],
    *,
    file: str | os.PathLike[str] | None = None,
    env_prefix: str,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    held_warnings: list[UnknownVariable] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults < file < env < flags.

    A setting its class refuses (a ``SettingError``) is reported with where its value
    came from: the file and key, the variable or the flag that set it last.

    Each variable with ``env_prefix`` that names no field and is no service link is
    warned about (``krill.configenv``): logged now, or added to ``held_warnings`` for
    the caller to log with ``UnknownVariable.log`` once logging is set up (the CLIs
    load the settings first: the log level is one of them). When a setting is refused,
    they are added to the error's one line instead ("(also: ...)"): a misspelled
    ``KRILL_AGENT_CACHE_HIGH_WATERMARKS`` is what explains a watermark refused.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    unknown = find_unknown_variables(env_prefix, hints, environ)
    try:
        config = _build(cls, hints, file, env_prefix, flags or {}, environ)
    except ConfigError as exc:
        if not unknown:
            raise
        raise _with_unknown(exc, unknown) from None
    if held_warnings is None:
        for warning in unknown:
            warning.log()
    else:
        held_warnings.extend(unknown)
    return config


def _build(
    cls: type[T],
    hints: Mapping[str, Any],
    file: str | os.PathLike[str] | None,
    env_prefix: str,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> T:
    """``cls`` from defaults < file < env < flags; a ConfigError names what was refused."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given = [
        *(_read_file(Path(file), hints) if file is not None else []),
        *_from_environment(cls, env_prefix, environ),
        *_from_flags(flags, hints),
    ]
    for name, value, where in given:  # lowest precedence first: later ones win
        values[name] = _coerce(value, hints[name], where)
        sources[name] = where
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    except SettingError as exc:
        raise exc.set_by(sources.get(exc.setting)) from None


def _with_unknown(exc: ConfigError, unknown: list[UnknownVariable]) -> ConfigError:
    """``exc`` with the unknown variables added to its message, of the same kind (a
    SettingError keeps its ``setting``): the CLI shows a ConfigError as one line."""
    message = f"{exc} (also: {'; '.join(str(warning) for warning in unknown)})"
    if isinstance(exc, SettingError):
        return SettingError(message, exc.setting)
    return ConfigError(message)


class SettingError(ConfigError):
    """A ConfigError about one setting, named by its field, so that ``load_config`` can add
    where its value was set: a user with a file, an env var and flags needs to know which."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting

    def set_by(self, where: str | None) -> SettingError:
        """This error with ``(from WHERE)`` added, unless the message already names it."""
        if where is None or where in str(self):
            return self
        return SettingError(f"{self} (from {where})", self.setting)


def _from_environment(
    cls: type, env_prefix: str, environ: Mapping[str, str]
) -> list[tuple[str, Any, str]]:
    """(field, value, variable) for each field's ``PREFIX_FIELD`` variable that is set.

    Only the fields' own names are read; the others with the prefix are warned about by
    ``load_config``, not refused (see ``krill.configenv``). A field's variable that holds a
    Kubernetes service link's ``tcp://IP:PORT`` (``KRILL_AGENT_PEER_PORT``, made for a
    Service named ``krill-agent-peer``) is refused with a message saying so.
    """
    found = []
    for field in dataclasses.fields(cls):
        env_name = f"{env_prefix}{field.name.upper()}"
        if env_name in environ:
            link = service_link_in_setting(env_name, environ[env_name])
            if link is not None:
                raise SettingError(link, field.name)
            found.append((field.name, environ[env_name], env_name))
    return found


def _from_flags(flags: Mapping[str, Any], hints: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(field, value, ``--flag``) for each flag given (None: not on the command line)."""
    found = []
    for name, value in flags.items():
        if value is None:
            continue
        if name not in hints:
            raise ConfigError(f"unknown setting {name!r}")
        found.append((name, value, flag_name(name)))
    return found


def flag_name(field: str) -> str:
    """``stall_timeout`` as the command line spells it: ``--stall-timeout``."""
    return f"--{field.replace('_', '-')}"


def _read_file(path: Path, hints: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(field, value, ``PATH:KEY``) for each key of the TOML file at ``path``."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    found = []
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        found.append((name, value, f"{path}:{key}"))
    return found


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (a string from env/flags or a TOML value) to ``hint``.

    Strictly: a TOML value of another type is refused, never truncated (``10.7`` or
    ``true`` for a whole number), and a string must spell the type in full.
    """
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
    converter = _SCALARS.get(hint)
    return value if converter is None else converter(value, where)


# A whole number or a decimal as env vars and flags may spell them: ASCII digits, no
# "1_000" (TOML's own literals take that), no "nan" or "inf".
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        return int(value)
    raise ConfigError(f"{where}: expected a whole number (like 10), got {_shown(value)}")


def _to_float(value: Any, where: str) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(
            f"{where}: expected a finite number (like 30 or 0.5), got {_shown(value)}"
        )
    return number


def _to_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f'{where}: expected a string (in TOML, in quotes: "..."), got {_shown(value)}'
        )
    return value


def _to_path(value: Any, where: str) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{where}: expected a path (a string), got {_shown(value)}")
    return Path(value)


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {_shown(value)}")


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    int: _to_int, float: _to_float, str: _to_str, Path: _to_path, bool: _to_bool,
}  # fmt: skip


def _shown(value: Any) -> str:
    """``value`` as the user wrote it: TOML's ``true``, not Python's ``True``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


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


def check_hostport(value: str, name: str) -> tuple[str, int]:
    """``parse_hostport`` for the setting ``name`` (``listen``): its error names the setting."""
    try:
        return parse_hostport(value)
    except ConfigError as exc:
        raise SettingError(f"{flag_name(name)}: {exc}", name) from None


def check_http_url(value: str, name: str) -> str:
    """``value`` without its trailing slash; SettingError unless it is a usable http(s) URL.

    Usable: a host, a port of 1-65535 if one is given, no whitespace, and both parsers
    (urllib's and yarl's, which every client here uses) take it. ``name`` is the field
    (``origin``), the message says ``--origin``. Checked at start-up because a bare
    ``host:port``, a port ``99999`` or a trailing space would otherwise be accepted and
    then fail every request (or raise deep in a request handler).
    """
    flag = flag_name(name)
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise SettingError(
            f"{flag} must be an http:// or https:// URL (http://HOST:PORT), got {value!r}", name
        )
    problem = _url_problem(value)
    if problem is not None:
        raise SettingError(f"{flag} = {value!r} {problem}", name)
    return value.rstrip("/")


def _url_problem(url: str) -> str | None:
    """What makes an http(s) ``url`` unusable, said so the user can fix it; None if nothing."""
    from yarl import URL  # here: loading krill.config must not load yarl (krill delta apply)

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "contains whitespace or a control character: remove it"
    invalid = "is not a valid URL ({}); write http://HOST:PORT, an IPv6 host as [::1]"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a [ without its ]
        return invalid.format(exc)
    try:
        port = parts.port
    except ValueError:  # not a number, or over 65535
        port = 0
    if port == 0:
        return "has no usable port: give a number 1-65535 after the host, or none"
    if not parts.hostname:
        return "names no host: write http://HOST:PORT"
    try:
        URL(url)
    except ValueError as exc:
        return invalid.format(exc)
    return None


def check_replica_urls(spec: str, name: str) -> None:
    """Each http(s) URL of a replica list (``URL,URL,...`` or ``dns+URL``), as ``check_http_url``.

    ``krill.replicas.parse_replicas`` reads the list; this runs first so that a bad
    port or an unclosed ``[`` is one line naming the setting, not yarl's ValueError.
    Another scheme is left to ``parse_replicas``, whose message shows the forms it takes.
    """
    for item in spec.strip().removeprefix("dns+").split(","):
        url = item.strip()
        if url.partition("://")[0].lower() in ("http", "https"):
            check_http_url(url, name)


def check_port(value: int, name: str) -> None:
    """SettingError unless ``value`` is a TCP port number (0 = any free port)."""
    if not 0 <= value <= 65535:
        raise SettingError(
            f"{flag_name(name)} must be 0-65535 (0 = any free port), got {value}", name
        )


def check_more_than_zero(config: object, meaning: str, *names: str) -> None:
    """SettingError unless each field ``names`` of ``config`` is a finite number above 0.

    For timeouts, intervals and sizes where 0 would not mean "off" but break every
    request (a stall timeout of 0 aborts every pull). ``meaning`` is the unit, shown.
    """
    _check_each(config, names, "positive", lambda n: n > 0, meaning)


def check_zero_or_more(config: object, meaning: str, *names: str) -> None:
    """SettingError unless each field is a finite number, 0 or more (``meaning`` says what 0 is)."""
    _check_each(config, names, "0 or more", lambda n: n >= 0, meaning)


def check_at_least_one(config: object, meaning: str, *names: str) -> None:
    """SettingError unless each field is a number, 1 or more (workers, sessions, ...)."""
    _check_each(config, names, "at least 1", lambda n: n >= 1, meaning)


def check_at_most(config: object, maximum: int, meaning: str, *names: str) -> None:
    """SettingError unless each field is a finite number no more than ``maximum``."""
    _check_each(config, names, f"at most {maximum}", lambda n: n <= maximum, meaning)


def _check_each(
    config: object, names: tuple[str, ...], rule: str, holds: Callable[[float], bool], meaning: str
) -> None:
    """SettingError for the first field of ``names`` that is no finite number or breaks ``rule``.

    Finite first: ``nan`` passes every comparison's negation (``nan <= 0`` is False).
    """
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingError(f"{name} must be a number ({meaning}), got {value!r}", name)
        if not math.isfinite(value):
            raise SettingError(f"{name} must be a finite number ({meaning}), got {value!r}", name)
        if not holds(value):
            raise SettingError(f"{name} must be {rule} ({meaning}), got {value!r}", name)
