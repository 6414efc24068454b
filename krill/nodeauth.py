"""A node's credentials (``--origin-credentials FILE``) and the client session that sends them.

Agents and trackers are *nodes*: with ``krill origin --auth``, the origin's
``/krill/v1/*`` endpoints (metainfo, deltas, piece claims and blobs by
digest) answer only users its auth file lists under ``nodes``. The file a
node is given is TOML, so it can hold the one optional extra a node needs::

    user = "node1"              # a user of the origin's htpasswd file, listed in nodes = [...]
    password = "..."
    announce_key = "..."        # optional: this node's key in the tracker's announce_keys file

A node sends ``Authorization: Basic`` up front (the origin's password cache
makes that one bcrypt check per ``credential_cache`` seconds, not one per
request). It sends it only where the origin needs it: to the origin's
address, on ``/krill/v1/`` and blob reads (``/v2/<name>/blobs/<digest>``).
Manifest and tag requests go without it, so what a node may see of a
repository's names and tags is what the rules give anonymous or the client
whose ``Authorization`` the agent forwards, never more. A request that
already carries an ``Authorization`` (a client's, forwarded) keeps it.

The session middleware does this for every request on the node's session,
including the swarm engine's piece feed, which therefore needs no
credentials of its own. The password never appears in ``repr``, logs or
error messages (``NodeCredentials`` hides it).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import hdrs
from yarl import URL

from krill.config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "NodeCredentials",
    "check_announce_key",
    "keyed_announce_url",
    "load_node_credentials",
    "node_auth_middleware",
    "node_middlewares",
    "redact_announce_keys",
]

_KEYS = {"user", "password", "announce_key"}
# URL-safe, long enough not to be guessed: `openssl rand -hex 16` or secrets.token_urlsafe().
_ANNOUNCE_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
_BLOB_PATH = re.compile(r"/v2/.+/blobs/[a-z0-9]+:[A-Za-z0-9=_-]+")


@dataclass(frozen=True)
class NodeCredentials:
    """Who this node is to the origin (and to the tracker); secrets are kept out of ``repr``."""

    user: str
    password: str = field(repr=False)
    announce_key: str | None = field(default=None, repr=False)

    def basic_auth(self) -> str:
        """The ``Authorization`` value: ``Basic`` and the base64 of ``user:password``
        (latin-1, as aiohttp's deprecated ``BasicAuth`` encoded it)."""
        pair = f"{self.user}:{self.password}".encode("latin-1")
        return "Basic " + base64.b64encode(pair).decode("ascii")


def load_node_credentials(path: Path) -> NodeCredentials:
    """Read ``path``; ConfigError naming the file and key on any mistake (never the secret)."""
    data = _read_toml(path)
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} (known: {sorted(_KEYS)})")
    user, password = data.get("user"), data.get("password")
    if not isinstance(user, str) or not user or ":" in user:
        raise ConfigError(f'{path}: user = "NAME" is required (a user of the origin\'s htpasswd)')
    if not isinstance(password, str) or not password:
        raise ConfigError(f'{path}: password = "..." is required')
    key = data.get("announce_key")
    if key is not None:
        check_announce_key(key, f"{path}: announce_key")
    return NodeCredentials(user, password, key)


def check_announce_key(key: object, where: str) -> str:
    """An announce key must be URL-safe and long enough not to be guessed."""
    if not isinstance(key, str) or not _ANNOUNCE_KEY.fullmatch(key):
        raise ConfigError(
            f"{where} must be 16-128 characters of A-Z a-z 0-9 _ - "
            "(e.g. the output of `openssl rand -hex 16`)"
        )
    return key


def keyed_announce_url(announce_url: str, key: str | None) -> str:
    """The announce URL with this node's key as its last path segment (``.../announce/KEY``).

    In the path rather than the query because libtorrent appends its own
    query, whose ``key`` parameter is BitTorrent's client key, not ours. The
    swarm engine logs its tracker URL (and libtorrent's tracker errors quote
    it), so keys are also redacted from every log line (``redact_announce_keys``).
    """
    if key is None:
        return announce_url
    redact_announce_keys()
    return f"{announce_url.rstrip('/')}/{key}"


class _AnnounceKeyRedactor(logging.Filter):
    """Replaces ``/announce/<KEY>`` in a record's message before any handler formats it."""

    _PATTERN = re.compile(r"(/announce/)[A-Za-z0-9_-]{16,128}")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/announce/" in message:
            record.msg, record.args = self._PATTERN.sub(r"\1<redacted>", message), None
        return True


def redact_announce_keys() -> None:
    """Keep announce keys out of every line the root logger's handlers write (idempotent).

    They ride in URLs that code outside Krill's control prints (the swarm
    engine's tracker URL, libtorrent's tracker errors, the request log's
    path); one pattern covers every key, so the cost is one substring check
    per log line whatever the number of nodes.
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _AnnounceKeyRedactor) for f in handler.filters):
            handler.addFilter(_AnnounceKeyRedactor())


def node_auth_middleware(
    credentials: NodeCredentials, origins: Iterable[str]
) -> aiohttp.ClientMiddlewareType:
    """A client-session middleware: the node's Basic credentials where the origin needs them."""
    targets = {URL(url).origin() for url in origins if url}
    header = credentials.basic_auth()

    async def add_credentials(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if _wants_node_credentials(request, targets):
            request.headers[hdrs.AUTHORIZATION] = header
        return await handler(request)

    return add_credentials


def node_middlewares(
    credentials_file: Path | None, origins: Iterable[str]
) -> tuple[aiohttp.ClientMiddlewareType, ...]:
    """The middlewares of a node's client session: none without a credentials file."""
    if credentials_file is None:
        return ()
    origins = list(origins)
    _warn_if_in_the_clear(origins)
    return (node_auth_middleware(load_node_credentials(credentials_file), origins),)


def _warn_if_in_the_clear(origins: list[str]) -> None:
    """Say so when the node's password goes to an origin over plain http off this host:
    every blob, metainfo and piece request carries it (the origin warns of its side)."""
    exposed = [
        url for url in origins
        if url.startswith("http://") and not _loopback(URL(url).host or "")
    ]  # fmt: skip
    if exposed:
        log.warning(
            "node.credentials_over_http origins=%s detail=%r", ",".join(exposed),
            "the node's password crosses the network in the clear with every request: "
            "give the origin https (--tls-cert on it, --ca here) unless a TLS proxy is between",
        )  # fmt: skip


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _wants_node_credentials(request: aiohttp.ClientRequest, targets: set[URL]) -> bool:
    if hdrs.AUTHORIZATION in request.headers or request.url.origin() not in targets:
        return False
    path = request.url.path
    return path.startswith("/krill/v1/") or bool(_BLOB_PATH.fullmatch(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read node credentials {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError:
        # The decoder's message quotes the line, which may hold the password.
        raise ConfigError(f"node credentials {path} are not valid TOML") from None
