"""One agent's working parts, wired together and started/stopped as a unit.

``AgentNode`` owns the HTTP client session, the blob store and node cache,
the swarm engine (when ``krill.swarm`` is available and a tracker is set),
the fetcher and the manifest cache. Both HTTP apps (registry endpoint and
control API) are thin layers over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from krill.agent.cache import CacheLimits, NodeCache
from krill.agent.config import AgentConfig
from krill.agent.deltas import DeltaRebuilder
from krill.agent.fetcher import BlobFetcher
from krill.agent.layers import LayerIndex
from krill.agent.manifests import Manifest, ManifestCache
from krill.agent.metrics import AgentMetrics
from krill.agent.namespaces import NamespaceMap
from krill.agent.origins import OriginSet, origin_client, origin_http_source, origin_set
from krill.blobstore import BlobStore
from krill.nodeauth import keyed_announce_url, load_node_credentials, node_middlewares
from krill.originclient import OriginClient
from krill.tls import client_ssl_context

if TYPE_CHECKING:  # krill.swarm loads libtorrent: only when the node starts an engine
    from krill.swarm import PeerReachability, SwarmEngine

log = logging.getLogger(__name__)


@dataclass
class AgentNode:
    config: AgentConfig
    session: aiohttp.ClientSession
    cache: NodeCache
    fetcher: BlobFetcher
    manifests: ManifestCache
    namespaces: NamespaceMap
    metrics: AgentMetrics
    swarm: SwarmEngine | None
    layers: LayerIndex

    def peer_reachability(self) -> PeerReachability | None:
        """Whether other nodes have reached this node's peer port (None: no swarm).

        For ``/health`` and ``/ready`` details: state ``suspect`` means a download
        had peers holding pieces and none ever connected in (a firewall, or the
        peer port bound to loopback); ``reached`` once any has. Cheap: no call
        into libtorrent.
        """
        return None if self.swarm is None else self.swarm.reachability()

    async def refresh_metrics(self) -> None:
        """Bring the gauges up to date; the swarm's counters are asked for fresh.

        libtorrent's cached counters can be a second old, which would hide the
        bytes of a pull that just finished from whoever reads /metrics next.
        """
        self.metrics.cache_bytes.set(self.cache.usage)
        if self.swarm is not None:
            try:
                async with asyncio.timeout(2.0):
                    stats = await self.swarm.fetch_stats()
            except TimeoutError:
                stats = self.swarm.stats()
            self.metrics.update_swarm(stats)


@contextlib.asynccontextmanager
async def running_node(config: AgentConfig) -> AsyncIterator[AgentNode]:
    """Start everything the agent needs; stop it all when the block ends."""
    config.data.mkdir(parents=True, exist_ok=True)
    metrics = AgentMetrics()
    store = BlobStore(config.data / "blobs")
    cache = NodeCache(
        store,
        CacheLimits(
            budget=config.cache_budget,
            high=config.cache_high_watermark,
            low=config.cache_low_watermark,
            max_age=config.cache_max_age,
        ),
        on_evict=metrics.evicted,
    )
    cache.load()
    layers = LayerIndex(config.data / "layers.json")
    layers.load()
    # --ca/--client-cert towards origin and tracker; node credentials where the origin
    # wants them (krill.nodeauth: /krill/v1/* and blob reads, the swarm's piece feed too).
    connector = aiohttp.TCPConnector(limit=256, ssl=client_ssl_context(config.client_tls) or True)
    middlewares = node_middlewares(config.origin_credentials, [config.origin, *config.origins])
    async with (
        aiohttp.ClientSession(
            connector=connector, auto_decompress=False, middlewares=middlewares
        ) as session,
        contextlib.AsyncExitStack() as stack,
        asyncio.TaskGroup() as tasks,
    ):
        replicas = origin_set(config)
        origin = origin_client(config, session, replicas)
        engine = await _start_swarm(config, store, stack, session, replicas)
        swarm_source = None
        if engine is not None:
            from krill.agent.swarm_source import SwarmSource

            tracker = OriginClient(session, config.tracker_base)
            swarm_source = SwarmSource(engine, [tracker, origin])
        origin_source = origin_http_source(config, session, store, metrics, replicas, cache)
        fetcher = BlobFetcher(
            cache,
            swarm=swarm_source,
            origin=origin_source,
            swarm_deadline=config.swarm_deadline,
            stall_timeout=config.stall_timeout,
            seed_ttl=config.seed_ttl,
            on_event=metrics.event,
            on_downloaded=metrics.downloaded,
        )
        if config.deltas:
            rebuilds = ThreadPoolExecutor(max_workers=2, thread_name_prefix="delta-rebuild")
            stack.callback(rebuilds.shutdown, wait=False, cancel_futures=True)
            fetcher.deltas = DeltaRebuilder(
                origin,
                cache,
                layers,
                metrics,
                lookup_timeout=config.delta_lookup_timeout,
                fetch_timeout=config.stall_timeout,
                executor=rebuilds,
                policy=config.delta_policy,
            )

        async def learn_layers(repository: str, manifest: Manifest) -> None:
            if layers.learn(repository, manifest.digest, manifest.body, manifest.media_type):
                await layers.save_async()

        manifests = ManifestCache(
            origin,
            BlobStore(config.data / "manifests"),
            tag_ttl=config.tag_ttl,
            timeout=config.origin_timeout,
            on_manifest=learn_layers,
        )
        node = AgentNode(
            config,
            session,
            cache,
            fetcher,
            manifests,
            NamespaceMap(config.origin, config.namespaces),
            metrics,
            engine,
            layers,
        )
        verifier = tasks.create_task(_verify_cache(cache), name="cache-verify")
        housekeeper = tasks.create_task(_housekeeping(node), name="cache-housekeeping")
        try:
            yield node
        finally:
            verifier.cancel()
            housekeeper.cancel()
            await fetcher.close()
            cache.save()


async def _start_swarm(
    config: AgentConfig,
    store: BlobStore,
    stack: contextlib.AsyncExitStack,
    session: aiohttp.ClientSession,
    replicas: OriginSet | None,
) -> SwarmEngine | None:
    if not (config.use_swarm and config.tracker):
        log.info("agent.swarm_disabled reason=%s", "no tracker" if config.use_swarm else "setting")
        return None
    try:
        from krill.swarm import PeerEncryption, SwarmEngine, SwarmSettings
    except ModuleNotFoundError as exc:
        if exc.name != "krill.swarm":
            raise
        log.warning("agent.swarm_unavailable reason=krill.swarm missing; HTTP fallback only")
        return None
    settings = SwarmSettings(
        # With the tracker's announce_keys, this node's key ends the URL (docs/security.md).
        tracker_url=keyed_announce_url(config.announce_url, _announce_key(config)),
        listen_host=config.peer_host,
        peer_port=config.peer_port,
        peer_encryption=PeerEncryption(config.peer_encryption),
        tracker_ca=config.ca,  # an https tracker is checked against --ca too
        upload_rate_limit=config.upload_rate_limit,
        download_rate_limit=config.download_rate_limit,
        seed_ttl=config.seed_ttl,
        unreachable_after=config.unreachable_after,
        # Claim pieces from the origin over HTTP so a herd's nodes take different
        # ones from it (krill.piecefeed); the rest comes from peers. With replicas, each
        # blob's from its owner, ranked and demoted as for the HTTP fallback.
        origin_urls=tuple(config.origins) or ((config.origin,) if config.origin else ()),
        origin_ranking=replicas,
        # The node cache hashes every blob again after a restart before serving it
        # (agent.cache.NodeCache.load/ensure_verified), so a crash costs a re-fetch:
        # no fsync per download (50-130 ms each in the herd benchmark).
        durable_downloads=False,
    )
    # The agent's own HTTP session also carries the engine's piece feed: one
    # connection pool to the origin, not two.
    engine = await stack.enter_async_context(SwarmEngine(settings, store, http=session))
    log.info(
        "agent.swarm_started peer_listen=%s:%d tracker=%s",
        config.peer_host, engine.peer_port, config.announce_url,
    )
    if _loopback(config.peer_host) and not _loopback(urlsplit(config.tracker).hostname or ""):
        log.warning(
            "agent.peer_host_loopback peer_host=%s hint=%r", config.peer_host,
            "only peers on this machine can reach the swarm port; other nodes will not "
            "get pieces from this one (use --peer-host 0.0.0.0 or this node's address)",
        )
    return engine


def _announce_key(config: AgentConfig) -> str | None:
    if config.origin_credentials is None:
        return None
    return load_node_credentials(config.origin_credentials).announce_key


def _loopback(host: str) -> bool:
    """``host`` is a loopback address or localhost (a name is otherwise not judged)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _verify_cache(cache: NodeCache) -> None:
    """Hash every cached blob once after start, in a thread of its own.

    Not the default pool: serving's reads (``os.pread``) run there, and hashing
    a full cache must not queue them behind it.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-verify")
    try:
        damaged = await cache.verify_all(executor)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    await cache.save_async()
    log.info("cache.verified damaged=%d", len(damaged))


async def _housekeeping(node: AgentNode) -> None:
    """Apply the age limit and watermarks now and then; persist LRU times."""
    while True:
        await asyncio.sleep(node.config.cache_check_interval)
        await node.cache.trim()
