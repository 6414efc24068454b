"""Which origin repository a mirrored request means.

containerd sends mirror requests for ``<upstream host>/<repo>`` to the agent as
``/v2/<repo>/...?ns=<upstream host>``. One origin can mirror several
upstreams, so the agent maps each upstream host to a repository prefix on the
origin:

* no ``ns``, or ``ns`` naming the origin itself: the origin's own repository,
  unchanged (``team/app`` -> ``team/app``);
* ``ns`` listed in the ``namespaces`` setting: that prefix (``""`` means the
  origin's own repositories, e.g. ``{"docker.io" = ""}`` for an origin run
  with ``--upstream https://registry-1.docker.io``);
* any other ``ns``: the host itself as the first path component, with a port's
  ``:`` written as ``-`` so it stays a valid name
  (``ns=docker.io``, ``library/alpine`` -> ``docker.io/library/alpine``;
  ``ns=registry.local:5000`` -> ``registry.local-5000/...``).

``krill agent containerd-config`` only points containerd at the agent; this
mapping is applied here, so both stay consistent by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from krill.names import validate_name


def default_prefix(host: str) -> str:
    """The origin prefix for an upstream host no setting mentions."""
    return host.strip().lower().replace(":", "-")


class NamespaceMap:
    def __init__(self, origin_url: str, mapping: Mapping[str, str]) -> None:
        self._own = {urlsplit(origin_url).netloc.lower()} if origin_url else set()
        self._mapping = {k.lower(): v.strip("/") for k, v in mapping.items()}

    def origin_repository(self, repository: str, ns: str | None) -> str:
        """The origin repository for ``repository`` requested under ``ns``; validated."""
        validate_name(repository)
        if not ns or ns.lower() in self._own:
            return repository
        host = ns.lower()
        prefix = self._mapping.get(host, default_prefix(host))
        return validate_name(f"{prefix}/{repository}" if prefix else repository)
