"""``krill agent``: run the agent, preheat an image, or write containerd's hosts.toml.

    krill agent --listen HOST:PORT --registry-listen HOST:PORT --data DIR \\
                --tracker URL --origin URL [--peer-host IP] [--peer-port N] [--config FILE]
    krill agent preheat IMAGE [--agent URL] [--all-platforms]
    krill agent containerd-config --registry HOST[=URL] ... --agent HOST:PORT --dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krill.clierror import CliError
from krill.logformat import LOG_LEVELS
from krill.securityflags import SECURITY_FLAGS, add_security_flags

if TYPE_CHECKING:  # imported where used: the CLI starts without loading aiohttp
    import ssl

    import aiohttp

    from krill.configenv import UnknownVariable

DEFAULT_AGENT_API = "http://127.0.0.1:7400"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="node-local pull-through registry endpoint for containerd",
        description="Serve containerd on this node: blobs from the swarm, manifests from the "
        "origin, all cached locally.",
    )
    parser.add_argument("--listen", help="control API HOST:PORT (health, blobs, preheat)")
    parser.add_argument("--registry-listen", help="registry endpoint HOST:PORT for containerd")
    parser.add_argument("--data", type=Path, help="directory for the node cache")
    parser.add_argument("--tracker", help="tracker base URL, e.g. http://tracker:7000")
    parser.add_argument(
        "--origin",
        help="origin base URL, e.g. http://origin:5000; for replicas sharing one store, "
        "their URLs comma-separated or dns+http://SERVICE:PORT (each blob is asked of "
        "the replica that owns it first)",
    )
    parser.add_argument(
        "--peer-host",
        help="address the swarm's peer port listens on (default 0.0.0.0: every interface; "
        "other nodes must reach it)",
    )
    parser.add_argument(
        "--peer-port", type=int, help="swarm peer port, TCP (default 0: any free port)"
    )
    parser.add_argument(
        "--peer-encryption",
        choices=("off", "allowed", "required"),
        help="BitTorrent protocol encryption between peers (default allowed, libtorrent's); "
        "obfuscation against passive observers, not authentication: docs/security.md",
    )
    parser.add_argument(
        "--delta-policy",
        choices=("fastest", "fewest-bytes"),
        help="delta or full layer: whichever the measured rates say is faster (default), "
        "or always the delta when there is one (links paid per byte)",
    )
    add_security_flags(parser, "origin/tracker")
    parser.add_argument("--config", type=Path, help="TOML file with AgentConfig settings")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS)
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")

    pre = sub.add_parser("preheat", help="pull an image's blobs onto the node ahead of time")
    pre.add_argument("image", help="image reference, e.g. team/app:1.0 or docker.io/library/x:1")
    pre.add_argument(
        "--agent", default=DEFAULT_AGENT_API,
        help=f"the agent's control API, URL or HOST:PORT (default {DEFAULT_AGENT_API})",
    )  # fmt: skip
    pre.add_argument("--all-platforms", action="store_true", help="every platform in an index")
    pre.add_argument("--ca", type=Path, metavar="FILE", help="CA of an https control API")
    pre.add_argument(
        "--client-cert", type=Path, metavar="FILE",
        help="certificate to present to a control API with --client-ca",
    )  # fmt: skip
    pre.add_argument("--client-key", type=Path, metavar="FILE", help="key of --client-cert")
    pre.set_defaults(func=run_preheat)

    cfg = sub.add_parser("containerd-config", help="write containerd hosts.toml files")
    cfg.add_argument(
        "--registry",
        action="append",
        required=True,
        metavar="HOST[=URL]",
        help="registry to mirror (repeatable); URL overrides the upstream https://HOST",
    )
    cfg.add_argument("--agent", required=True, help="agent registry endpoint HOST:PORT")
    cfg.add_argument("--dir", type=Path, required=True, help="containerd config_path directory")
    cfg.set_defaults(func=run_containerd_config)


def run(args: argparse.Namespace) -> int:
    from krill.agent.config import AgentConfig
    from krill.agent.server import serve
    from krill.config import load_config
    from krill.datadir import hold_data_dir
    from krill.logs import setup_logging

    flags = {
        "listen": args.listen,
        "registry_listen": args.registry_listen,
        "data": args.data,
        "tracker": args.tracker,
        "origin": args.origin,
        "peer_host": args.peer_host,
        "peer_port": args.peer_port,
        "peer_encryption": args.peer_encryption,
        "log_level": args.log_level,
        "delta_policy": args.delta_policy,
        **{name: getattr(args, name) for name in SECURITY_FLAGS},
    }
    held: list[UnknownVariable] = []  # logged once logging is set up, by the log level
    config = load_config(
        AgentConfig, file=args.config, env_prefix="KRILL_AGENT_", flags=flags, held_warnings=held
    )
    setup_logging(config.log_level)
    for warning in held:
        warning.log()
    if not config.origin:

        raise CliError("--origin URL is required (where manifests and fallback blobs come from)")
    hold_data_dir(config.data, "agent")  # held until this process ends
    asyncio.run(serve(config))
    return 0


def run_containerd_config(args: argparse.Namespace) -> int:
    from krill.agent.containerd_config import parse_registry_spec, write_hosts_files
    from krill.config import parse_hostport

    try:
        specs = [parse_registry_spec(text) for text in args.registry]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:  # containerd takes any host name and falls back quietly: check it here
        parse_hostport((args.agent.partition("://")[2] or args.agent).rstrip("/"))
    except ValueError:
        raise CliError(
            f"--agent must be the agent's registry endpoint HOST:PORT (its --registry-listen), "
            f"got {args.agent!r}"
        ) from None
    try:
        written = write_hosts_files(specs, args.agent, args.dir)
    except OSError as exc:
        raise CliError(f"cannot write into --dir {args.dir}: {exc.strerror or exc}") from None
    for file in written:
        sys.stdout.write(f"wrote {file.path}\n")
        if file.kept is not None:
            sys.stdout.write(f"kept the {file.path.name} Krill did not write as {file.kept}\n")
    return 0


def run_preheat(args: argparse.Namespace) -> int:
    from krill.tls import ClientTls, client_ssl_context

    tls = client_ssl_context(ClientTls(args.ca, args.client_cert, args.client_key))
    # HOST:PORT as containerd-config's --agent takes it means http://HOST:PORT here.
    agent = args.agent if "://" in args.agent else f"http://{args.agent}"
    return asyncio.run(_preheat(agent.rstrip("/"), args.image, args.all_platforms, tls))


async def _preheat(
    agent: str, image: str, all_platforms: bool, tls: ssl.SSLContext | None = None
) -> int:
    import aiohttp

    bar = _ProgressBar(image)
    try:
        connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(
                f"{agent}/preheat", json={"image": image, "all_platforms": all_platforms}
            ) as response:
                if response.status != 200:
                    raise CliError(f"preheat {image}: {await _error_message(response)}")
                async for line in response.content:
                    if line.strip():
                        event = json.loads(line)
                        if event["event"] == "error":
                            bar.finish()
                            raise CliError(f"preheat {image}: {event['message']}")
                        bar.update(event)
    except aiohttp.ClientError as exc:
        raise CliError(f"cannot reach the agent at {agent}: {exc}") from None
    bar.finish()
    bar.report()
    return 0


async def _error_message(response: aiohttp.ClientResponse) -> str:
    text = await response.text()
    try:
        return "; ".join(e["message"] for e in json.loads(text)["errors"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status}: {text[:200]}"


class _ProgressBar:
    """A one-line progress bar on stderr (this is the CLI, so writing to it is fine)."""

    WIDTH = 30

    def __init__(self, image: str) -> None:
        self._image = image
        self._blobs = 0
        self._done_blobs = 0
        self._line = ""
        self._digest: str | None = None  # the manifest warmed, once the agent said
        # Redrawn in place on a terminal; in a CI log or a pipe, only the last state.
        self._redraw = sys.stderr.isatty()

    def update(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self._blobs = event["blobs"]
            self._digest = event.get("digest")
        if event["event"] == "blob":
            self._done_blobs += 1
        total = event.get("total_bytes") or 0
        done = event.get("done_bytes", total if event["event"] == "done" else 0)
        fraction = done / total if total else 1.0
        filled = int(self.WIDTH * fraction)
        self._line = (
            f"{self._image} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{done / 2**20:7.1f}/{total / 2**20:.1f} MiB  {self._done_blobs}/{self._blobs} blobs"
        )
        if self._redraw:
            sys.stderr.write("\r" + self._line)
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n" if self._redraw else (self._line + "\n" if self._line else ""))

    def report(self) -> None:
        """The digest warmed: a tag may name another image by the time a node pulls it."""
        if self._digest is not None:
            sys.stderr.write(f"{self._image} is {self._digest}, on this node now\n")
