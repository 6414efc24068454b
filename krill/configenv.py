"""The ``KRILL_<SERVICE>_*`` variables that name no setting: a typo is said, a service link is not.

``krill.config.load_config`` reads each field's own variable and nothing else, so an
operator's ``KRILL_AGENT_ORIGN=...`` used to be ignored without a word and the agent
ran with its default. ``find_unknown_variables`` finds every variable with the
service's prefix (in any case: ``krill_agent_origin`` too) that is not a field's, and
each becomes one warning, with the variable it probably meant when ``difflib`` finds a
close one::

    config.unknown_variable variable=KRILL_AGENT_ORIGN meant=KRILL_AGENT_ORIGIN
        detail='KRILL_AGENT_ORIGN is not a setting of krill agent; did you mean ...?'

The value is never shown: a misspelled ``KRILL_ORIGIN_UPSTREAM_PASWORD`` holds a secret.

Warned, not refused (unlike a bad value, which stops the service): the environment is
not Krill's alone as its TOML file is. One Deployment's env may serve two versions of
Krill during a rolling upgrade or a rollback, and a setting only the newer one has must
not stop the older one; refusing would turn a harmless leftover into an outage at the
worst moment. A typo still shows at start: as a warning, or, when a setting is refused,
in that error's one line (``load_config`` adds "(also: ...)"), which it may explain.

Kubernetes service links are left alone. For each Service in the namespace every pod
gets ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT``, ``<NAME>_SERVICE_PORT_<PORTNAME>``,
``<NAME>_PORT`` and ``<NAME>_PORT_<N>_<TCP|UDP|SCTP>`` (with ``_PROTO``, ``_PORT`` and
``_ADDR``): a Service ``krill-agent`` gives ``KRILL_AGENT_PORT``, one named
``krill-agent-metrics`` ``KRILL_AGENT_METRICS_SERVICE_HOST``. So any name ending in
those suffixes is a link, whatever comes before; a bare ``..._PORT`` only when its
value is a link's too (``tcp://10.0.0.1:7400``), so that a misspelled port setting
(``KRILL_AGENT_PER_PORT=6881``) is still said.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LINK_NAME = re.compile(
    r".+_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
_LINK_ADDRESS = re.compile(r"(tcp|udp|sctp)://\S+:[0-9]+")  # the value of NAME_PORT

# How close a name must be (difflib's ratio, 0-1) to be offered as the one meant.
_CLOSE = 0.7


@dataclass(frozen=True)
class UnknownVariable:
    """A variable with a service's prefix that is no setting of it, and what it may have meant."""

    variable: str
    service: str  # "krill agent"
    meant: str | None  # the setting's variable, or None when none is close

    def __str__(self) -> str:
        text = f"{self.variable} is not a setting of {self.service}"
        return text if self.meant is None else f"{text}; did you mean {self.meant}?"

    def log(self) -> None:
        """One warning line, ``config.unknown_variable``."""
        log.warning(
            "config.unknown_variable variable=%s meant=%s detail=%r",
            self.variable, self.meant or "none", str(self),
        )  # fmt: skip


def find_unknown_variables(
    env_prefix: str, fields: Iterable[str], environ: Mapping[str, str]
) -> list[UnknownVariable]:
    """Each variable of ``environ`` starting with ``env_prefix`` (in any case) that is not
    a field's ``PREFIX_FIELD`` and not a Kubernetes service link, in name order."""
    known = {field.upper() for field in fields}
    service = env_prefix.rstrip("_").lower().replace("_", " ")
    found = []
    for name in sorted(environ):
        if not name.upper().startswith(env_prefix.upper()):
            continue
        setting = name[len(env_prefix) :]
        if setting in known and name.startswith(env_prefix):
            continue
        if is_service_link(name, environ[name]):
            continue
        close = _closest(setting.upper(), known)
        found.append(UnknownVariable(name, service, None if close is None else env_prefix + close))
    return found


def _closest(setting: str, known: Iterable[str]) -> str | None:
    """The name of ``known`` closest to ``setting``, if one is close enough."""
    import difflib  # here: only a start with an unknown variable pays for it

    close = difflib.get_close_matches(setting, sorted(known), n=1, cutoff=_CLOSE)
    return close[0] if close else None


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is one Kubernetes makes for a Service (see the module's doc)."""
    return _LINK_NAME.fullmatch(name) is not None or _is_port_link(name, value)


def _is_port_link(name: str, value: str) -> bool:
    """A ``<NAME>_PORT=tcp://IP:PORT`` link (a bare ``_PORT`` name alone says nothing)."""
    return name.endswith("_PORT") and _LINK_ADDRESS.fullmatch(value) is not None


def service_link_in_setting(name: str, value: str) -> str | None:
    """Why the setting's variable ``name`` holds a service link's ``value``; None if not one.

    ``KRILL_AGENT_PEER_PORT`` is a setting, and also the ``<NAME>_PORT`` link of a Service
    named ``krill-agent-peer``: Kubernetes sets it (``tcp://10.0.0.9:6881``) in every pod
    of the namespace unless the pod turns links off or sets the variable itself.
    """
    if not _is_port_link(name, value):
        return None
    service = name.removesuffix("_PORT").lower().replace("_", "-")
    return (
        f"{name} = {value!r} is the Kubernetes service link of a Service named {service}, "
        f"not a port: set enableServiceLinks: false in the pod spec (the Krill chart does), "
        f"set {name} in the container's env, or rename that Service"
    )
