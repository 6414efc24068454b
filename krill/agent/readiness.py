"""What the agent needs to be ready: its origin and tracker answering, its cache
writable, its swarm port accepting peers (``krill.readiness`` runs and renders them).

An unset origin or tracker, and a swarm turned off, are ``skipped``: the agent
was configured to do without them, so they cannot make it unready.
"""

from __future__ import annotations

import asyncio

from krill.agent.node import AgentNode
from krill.readiness import (
    Check,
    CheckFailed,
    Skipped,
    port_accepts,
    serves_health,
    store_writable,
)

__all__ = ["agent_checks"]


def agent_checks(node: AgentNode) -> list[Check]:
    return [
        Check("origin", lambda: _origin_reachable(node)),
        Check("tracker", lambda: _tracker_reachable(node)),
        Check("cache", lambda: store_writable(node.cache.store)),
        Check("swarm", lambda: _swarm_listening(node)),
    ]


async def _origin_reachable(node: AgentNode) -> str:
    """Some origin answers (with several replicas listed, any one of them will do)."""
    if not node.config.origin:
        raise Skipped("no origin configured")
    urls = node.config.origins if len(node.config.origins) > 1 else [node.config.origin]
    outcomes = await asyncio.gather(
        *(serves_health(node.session, url) for url in urls), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, CheckFailed):
            raise outcome
    if any(isinstance(outcome, str) for outcome in outcomes):
        return "; ".join(str(outcome) for outcome in outcomes)
    raise CheckFailed("; ".join(str(outcome) for outcome in outcomes))


async def _tracker_reachable(node: AgentNode) -> str:
    """The tracker answers, and has not refused this node since it last took an announce.

    A tracker that is up but refuses the node (a wrong announce key, its Redis
    down) leaves the node out of every swarm while its pulls go on from the
    origin, at the origin's cost: unready, with the tracker's reason, until an
    announce is taken again. (Announces that got no answer are only counted:
    the health check says whether the tracker is up now.)
    """
    if not node.config.tracker:
        raise Skipped("no tracker configured")
    health = await serves_health(node.session, node.config.tracker_base)
    if node.swarm is None:
        return health
    stats = node.swarm.stats()
    if stats.last_announce_refusal:
        raise CheckFailed(
            f"{health}, but it refused this node's last announce: "
            f"{stats.last_announce_refusal!r} ({stats.announces_failed} announces failed, "
            f"{stats.announces_ok} taken)"
        )
    return f"{health}; announces taken: {stats.announces_ok}, failed: {stats.announces_failed}"


async def _swarm_listening(node: AgentNode) -> str:
    """The peer port takes connections; the detail adds whether peers have reached it.

    Nobody having connected in yet (``suspect``) does not fail the check: the node
    still pulls, and the swarm's own warning says what to open in the firewall.
    """
    reachability = node.peer_reachability()
    if node.swarm is None or reachability is None:
        raise Skipped("swarm off (no tracker, use_swarm false, or libtorrent missing)")
    listening = await port_accepts(node.config.peer_host, node.swarm.peer_port)
    return f"{listening}; peers reaching it: {reachability.state}"
