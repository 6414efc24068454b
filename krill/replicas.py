"""A list of replicas given as static URLs or as one DNS name (a headless Service).

Origins name their peer replicas this way (``krill origin --replicas``) and
agents their origins (``krill agent --origin``): ``http://a:8000,http://b:8000``,
or ``dns+http://NAME:PORT``, whose every address is a replica, looked up
again now and then so the list follows the Service's endpoints. Shared
library: both services read the same spelling.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from yarl import URL

from krill.config import ConfigError

__all__ = ["DNS_SCHEME", "parse_replicas", "resolve_replicas"]

log = logging.getLogger(__name__)

DNS_SCHEME = "dns+"


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
    return [str(url.with_host(h)).rstrip("/") for h in sorted(hosts)]
