"""Write containerd ``hosts.toml`` files that send pulls through this node's agent.

containerd's ``config_path`` layout: ``<dir>/<registry host>/hosts.toml``.
Each file keeps the real registry as ``server`` (containerd falls back to it
when the agent answers an error or is down) and lists the agent first as a
``host`` with only the ``pull`` and ``resolve`` capabilities (never ``push``).
containerd adds ``?ns=<registry host>`` to mirror requests; the agent maps
that to an origin repository (``agent.namespaces``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True)
class RegistrySpec:
    host: str  # the name in image references, e.g. docker.io or registry.local:5000
    server: str  # the upstream URL containerd falls back to


def parse_registry_spec(text: str) -> RegistrySpec:
    """``HOST`` or ``HOST=URL`` (the URL when the upstream is not ``https://HOST``)."""
    host, sep, server = text.partition("=")
    host = host.strip()
    if not host or "/" in host or " " in host:
        raise ValueError(f"bad registry {text!r}; expected HOST[:PORT] or HOST=URL")
    if not sep:
        server = DOCKER_HUB_SERVER if host == DOCKER_HUB else f"https://{host}"
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"bad upstream URL {server!r} for {host}; expected http(s)://...")
    return RegistrySpec(host, server.rstrip("/"))


def hosts_toml(spec: RegistrySpec, agent: str) -> str:
    agent_url = agent if agent.startswith(("http://", "https://")) else f"http://{agent}"
    return (
        "# Written by `krill agent containerd-config`: pull through the Krill agent,\n"
        "# fall back to the upstream server when the agent cannot answer.\n"
        f'server = "{spec.server}"\n'
        "\n"
        f'[host."{agent_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def write_hosts_files(specs: list[RegistrySpec], agent: str, directory: Path) -> list[Path]:
    """Write one ``hosts.toml`` per registry; returns the paths written."""
    written = []
    for spec in specs:
        path = directory / spec.host / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(hosts_toml(spec, agent))
        tmp.replace(path)
        written.append(path)
    return written
