"""A list of replicas given as static URLs or as one DNS name (a headless Service).

Origins name their peer replicas this way (``krill origin --replicas``) and
agents their origins (``krill agent --origin``): ``http://a:8000,http://b:8000``,
or ``dns+http://NAME:PORT``, whose every address is a replica, looked up
again now and then so the list follows the Service's endpoints. Shared
library: both services read the same spelling.

``ReplicaRanking`` is what ranks them per blob for a client (the agent's
``OriginSet``): the swarm's piece feed takes it through its settings, so
its claims and the agent's HTTP fallback ask the same replica first and
skip the same failed one, without the swarm package importing the agent's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Protocol

from yarl import URL

from krill.config import ConfigError
from krill.digests import Digest

__all__ = [
    "DNS_SCHEME",
    "ReplicaRanking",
    "bracket_ipv6_host",
    "parse_replicas",
    "resolve_replicas",
]

log = logging.getLogger(__name__)

DNS_SCHEME = "dns+"


class ReplicaRanking(Protocol):
    """Replicas in the order to ask them for one blob, told what became of asking.

    One object per client, shared by every path that asks the replicas, so
    a replica one path found failing is skipped by the others too.
    """

    async def refresh(self) -> None:
        """Look the replicas up again if their list comes from DNS and is due."""

    def ranking(self, digest: Digest) -> list[str]:
        """Base URLs for this blob: its owner first, those that failed lately last."""
        ...

    def failed(self, member: str) -> None:
        """``member`` did not answer as it should: rank it last for a while."""

    def answered(self, member: str) -> None:
        """``member`` answered: it is up again."""


def parse_replicas(spec: str, what: str = "replicas") -> tuple[list[str], URL | None]:
    """Static URLs, or the one ``dns+http://NAME:PORT`` to resolve; ConfigError if neither.

    ``what`` names the setting in the error (``replicas``, ``--origin``).
    """
    spec = spec.strip()
    if spec.startswith(DNS_SCHEME):
        url = URL(spec[len(DNS_SCHEME) :])
        if url.scheme not in ("http", "https") or not url.host or url.port is None:
            raise ConfigError(f"{what} = {spec!r}: use dns+http://NAME:PORT (a headless Service)")
        return [], url
    urls = [u.strip().rstrip("/") for u in spec.split(",") if u.strip()]
    for u in urls:
        if URL(u).scheme not in ("http", "https") or not URL(u).host:
            raise ConfigError(f"{what}: {u!r} is not an http(s) URL; list the replicas' base URLs")
    if not urls:
        raise ConfigError(f"{what} is empty; list the replicas' base URLs or dns+http://NAME:PORT")
    return urls, None


async def resolve_replicas(url: URL) -> list[str]:
    """Every address the name has: one URL per replica behind a headless Service.

    An empty list when the lookup fails (logged): callers keep what they had.
    """
    assert url.host is not None and url.port is not None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, url.port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        log.warning("replicas.dns_failed name=%s error=%s", url.host, exc)
        return []
    hosts = {str(info[4][0]) for info in infos}
    # ``with_host`` brackets an IPv6 literal (an AAAA answer): http://[fd00::5]:5000.
    return [str(url.with_host(h)).rstrip("/") for h in sorted(hosts)]


def bracket_ipv6_host(url: str) -> str:
    """``http://fd00::5:5000`` as ``http://[fd00::5]:5000``; any other URL as it is.

    A pod's own URL is written from ``$(POD_IP)`` (the chart's ``--replica-url``),
    and Kubernetes' expansion cannot add the brackets an IPv6 literal needs. An
    unbracketed one is read only when the URL ends in ``:PORT`` (the last colon
    is then the port's), the host before it is a valid IPv6 address, and nothing
    follows but a path: no guess is made about anything else.
    """
    scheme, sep, rest = url.partition("://")
    hostport, slash, path = rest.partition("/")
    host, colon, port = hostport.rpartition(":")
    if not sep or hostport.startswith("[") or ":" not in host or not port.isdigit():
        return url
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return url
    return f"{scheme}://[{host}]{colon}{port}{slash}{path}"
