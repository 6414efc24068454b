"""Run the agent: the control API and the registry endpoint, each on its own port."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from krill.agent.config import AgentConfig
from krill.agent.control import build_control_app
from krill.agent.node import running_node
from krill.agent.registry import build_registry_app
from krill.clierror import listen_failure
from krill.config import parse_hostport
from krill.tls import server_ssl_context
from krill.tlslog import register_handshake_metrics

log = logging.getLogger(__name__)


async def serve(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when none is given)."""
    stop = stop or _stop_on_signals()
    async with running_node(config) as node:
        runners = []
        try:
            for name, app, address, flag in (
                ("control", build_control_app(node), config.listen, "--listen"),
                ("registry", build_registry_app(node), config.registry_listen, "--registry-listen"),
            ):
                runner = web.AppRunner(app, handle_signals=False)
                await runner.setup()
                runners.append(runner)
                host, port = parse_hostport(address)
                # The control API speaks TLS when configured; the registry endpoint is for
                # this node's containerd over loopback and stays http.
                tls = server_ssl_context(config.server_tls) if name == "control" else None
                register_handshake_metrics(
                    node.metrics.registry, tls, "krill_agent_tls_handshake_failures"
                )
                site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=tls)
                try:
                    await site.start()
                except OSError as exc:
                    raise listen_failure(exc, address, flag) or exc from None
                log.info(
                    "agent.listening api=%s address=%s:%d tls=%s",
                    name, host, port, "off" if tls is None else "on",
                )  # fmt: skip
            await stop.wait()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
    log.info("agent.stopped")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
