"""Write containerd ``hosts.toml`` files that send pulls through this node's agent.

containerd's ``config_path`` layout: ``<dir>/<registry host>/hosts.toml``.
Each file keeps the real registry as ``server`` (containerd falls back to it
when the agent answers an error or is down) and lists the agent first as a
``host`` with only the ``pull`` and ``resolve`` capabilities (never ``push``).
containerd adds ``?ns=<registry host>`` to mirror requests; the agent maps
that to an origin repository (``agent.namespaces``).

A ``hosts.toml`` Krill did not write (its first line lacks ``MARKER``: an
operator's own mirror, a CA, a mirror another tool set up) is not lost: it is
kept beside the new one as ``hosts.toml.before-krill`` (``.before-krill.2``...
if that name is taken), which the chart's stop step puts back. Krill's own
files are rewritten in place, so an agent that restarts keeps no copies.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from krill.atomicfile import write_atomic

MARKER = "# Written by `krill agent containerd-config`"
BACKUP_SUFFIX = ".before-krill"
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True)
class RegistrySpec:
    host: str  # the name in image references, e.g. docker.io or registry.local:5000
    server: str  # the upstream URL containerd falls back to


# hostname[:port] or [IPv6]:port: the host is a directory name under --dir, so
# nothing that could climb out of it ("..", "/") or break the TOML gets through.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$")
_URL = re.compile(r"^https?://[^\s\"\\]+$")


def parse_registry_spec(text: str) -> RegistrySpec:
    """``HOST`` or ``HOST=URL`` (the URL when the upstream is not ``https://HOST``)."""
    host, sep, server = text.partition("=")
    host = host.strip()
    if not _HOST.fullmatch(host):
        raise ValueError(f"bad registry {text!r}; expected HOST[:PORT] or HOST[:PORT]=URL")
    if not sep:
        server = DOCKER_HUB_SERVER if host == DOCKER_HUB else f"https://{host}"
    server = server.strip()
    if not _URL.fullmatch(server):
        raise ValueError(f"bad upstream URL {server!r} for {host}; expected http(s)://...")
    return RegistrySpec(host, server.rstrip("/"))


def hosts_toml(spec: RegistrySpec, agent: str) -> str:
    agent_url = agent if agent.startswith(("http://", "https://")) else f"http://{agent}"
    return (
        f"{MARKER}: pull through the Krill agent,\n"
        "# fall back to the upstream server when the agent cannot answer.\n"
        f'server = "{spec.server}"\n'
        "\n"
        f'[host."{agent_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


@dataclass(frozen=True)
class Written:
    path: Path  # the hosts.toml written
    kept: Path | None  # where the file it replaced was kept (one Krill did not write)


def write_hosts_files(specs: list[RegistrySpec], agent: str, directory: Path) -> list[Written]:
    """Write one ``hosts.toml`` per registry, keeping any that Krill did not write."""
    written = []
    for spec in specs:
        path = directory / spec.host / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = keep_foreign_file(path)
        write_atomic(path, hosts_toml(spec, agent))
        written.append(Written(path, kept))
    return written


def keep_foreign_file(path: Path) -> Path | None:
    """Copy ``path`` to a free ``.before-krill`` name unless it is absent or Krill's own."""
    try:
        with path.open("rb") as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    if first.startswith(MARKER.encode()):
        return None
    for n in range(1, 1000):
        kept = path.with_name(path.name + BACKUP_SUFFIX + (f".{n}" if n > 1 else ""))
        if not kept.exists():
            shutil.copy2(path, kept)  # a copy: the file stays in place until it is replaced
            return kept
    raise OSError(f"{path} has 999 kept copies beside it already; remove the old ones")
