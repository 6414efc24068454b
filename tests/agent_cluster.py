"""Real Krill processes for the agent tests: origin, tracker, agents, all on loopback.

Each context manager starts ``python -m krill.cli ...`` with its own data
directory and free ports, waits for health, and stops it at the end. Images
are built in-process (``tests.imagebuild``) and pushed with skopeo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from tests import imagebuild
from tests.components import SKOPEO_FLAGS, free_port, krill_process, skopeo
from tests.metrics_text import read_metrics
from tests.polling import until_sync

T = TypeVar("T")


@dataclass
class Agent:
    api: str  # control API base URL
    registry: str  # registry endpoint base URL
    registry_hostport: str
    data: Path
    process: subprocess.Popen[bytes]

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.api)


wait_until = until_sync  # the name the process-driving tests use


def ready(base: str) -> tuple[int, dict[str, dict[str, str]]]:
    """A service's ``/ready``: its status and its checks by name."""
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=10) as response:
            return response.status, json.loads(response.read())["checks"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["checks"]


@contextlib.contextmanager
def origin_process(root: Path, *extra: str, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = ["origin", "--listen", f"127.0.0.1:{port}", "--data", str(root / "data"), *extra]
    url = f"http://127.0.0.1:{port}"
    with krill_process(args, root / "origin.log", f"{url}/v2/"):
        yield url


@contextlib.contextmanager
def tracker_process(
    root: Path, origin: str, port: int | None = None, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = ["tracker", "--listen", f"127.0.0.1:{port}", "--origin", origin, *extra]
    url = f"http://127.0.0.1:{port}"
    with krill_process(args, root / "tracker.log", f"{url}/health"):
        yield url


@contextlib.contextmanager
def agent_process(
    root: Path,
    origin: str,
    tracker: str | None = None,
    *,
    settings: dict[str, Any] | None = None,
    registry_port: int | None = None,
) -> Iterator[Agent]:
    """An agent; ``settings`` go into its TOML config file.

    ``delta_policy`` is "fewest-bytes" unless ``settings`` say otherwise: on loopback
    the full layer always downloads faster than a delta rebuilds, so with the agent's
    default ("fastest") no test would see the delta path it means to test.
    """
    root.mkdir(parents=True, exist_ok=True)
    api_port, reg_port = free_port(), registry_port or free_port()
    config = root / "agent.toml"
    settings = {"delta_policy": "fewest-bytes", **(settings or {})}
    config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    args = [
        "agent",
        "--listen",
        f"127.0.0.1:{api_port}",
        "--registry-listen",
        f"127.0.0.1:{reg_port}",
        "--data",
        str(root / "data"),
        "--origin",
        origin,
        "--config",
        str(config),
        "--log-level",
        "debug",
    ]
    if tracker:
        args += ["--tracker", tracker]
    api = f"http://127.0.0.1:{api_port}"
    with krill_process(args, root / "agent.log", f"{api}/health") as proc:
        yield Agent(
            api, f"http://127.0.0.1:{reg_port}", f"127.0.0.1:{reg_port}", root / "data", proc
        )


@contextlib.contextmanager
def started_together(
    managers: Sequence[contextlib.AbstractContextManager[T]],
) -> Iterator[list[T]]:
    """Enter ``managers`` (``agent_process(...)`` each) at once; exit them all at the end.

    Starting a krill process is mostly its interpreter importing and its wait for
    health, about a second each on a loaded machine: a herd of eight started one
    by one pays that eight times over, most of it idle waiting. Values come back
    in the order of ``managers``; if any fails to start, those that did are stopped.
    """
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(max(1, len(managers))) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        values: list[T] = []
        failure: BaseException | None = None
        for manager, future in zip(managers, futures, strict=True):
            error = future.exception()
            if error is None:
                values.append(future.result())
                stack.push(manager)
            elif failure is None:
                failure = error
        if failure is not None:
            raise failure
        yield values


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return json.dumps(value)


@dataclass
class PushedImage:
    layout: Path
    top: imagebuild.Blob
    images: list[imagebuild.Image]

    @property
    def digests(self) -> set[str]:
        return imagebuild.read_oci_layout_digests(self.layout)


def build_layout(
    root: Path,
    seed: int,
    *,
    platforms: tuple[str, ...] = ("amd64",),
    layer_size: int = 32 * 1024,
    docker: bool = False,
) -> PushedImage:
    """An OCI layout with one image per platform (an index when more than one)."""
    images = [
        imagebuild.build_image(
            [
                imagebuild.random_files(seed * 10 + i, count=2, size=layer_size),
                imagebuild.random_files(seed * 10 + i + 5, count=1, size=layer_size),
            ],
            architecture=arch,
            docker=docker,
        )
        for i, arch in enumerate(platforms)
    ]
    top = imagebuild.build_index(images, docker=docker) if len(images) > 1 else images[0].manifest
    layout = imagebuild.write_oci_layout(root, top, images, "latest")
    return PushedImage(layout, top, images)


def push(image: PushedImage, registry: str, reference: str, creds: str | None = None) -> None:
    """skopeo copy the layout to ``registry`` (a base URL) as ``reference`` (name:tag).

    ``creds`` (``user:password``) for an origin with ``--auth``.
    """
    host = registry.removeprefix("http://")
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        *SKOPEO_FLAGS,
        *(("--dest-creds", creds) if creds else ()),
        f"oci:{image.layout}:latest",
        f"docker://{host}/{reference}",
    )


class ServingThread:
    """An event loop in a thread that serves aiohttp apps, so sync tests can run clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application, port: int | None = None) -> str:
        port = port or free_port()

        async def start() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)

        self.call(start())
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class SeedingOrigin:
    url: str
    app: web.Application

    def uploaded_bytes(self, server: ServingThread) -> int:
        """Blob bytes the origin sent into the swarm: payload its libtorrent session sent
        to peers (session stats) plus pieces nodes claimed from it over HTTP."""
        from krill.origin.piececlaims import piece_claims
        from krill.origin.seeding import SWARM_ENGINE_KEY

        engine = self.app[SWARM_ENGINE_KEY]
        over_bittorrent = int(server.call(engine.fetch_stats()).uploaded)
        return over_bittorrent + piece_claims(self.app).bytes_requested


@contextlib.contextmanager
def seeding_origin(
    root: Path, announce_url: str, **swarm_settings: Any
) -> Iterator[tuple[SeedingOrigin, ServingThread]]:
    """The real origin app with swarm seeding installed, served from a thread (the
    wiring ``krill origin --tracker`` does, with the app reachable for its counters)."""
    from krill.origin.appkeys import STORE
    from krill.origin.config import OriginConfig
    from krill.origin.seeding import install_seeding
    from krill.origin.server import create_app
    from krill.swarm import SwarmSettings

    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = OriginConfig(listen=f"127.0.0.1:{port}", data=root / "data")
    app = create_app(config)
    install_seeding(app, app[STORE], SwarmSettings(tracker_url=announce_url, **swarm_settings))
    server = ServingThread()
    try:
        url = server.serve(app, port)
        yield SeedingOrigin(url, app), server
    finally:
        server.close()


@contextlib.contextmanager
def origin_and_tracker(root: Path) -> Iterator[tuple[str, str]]:
    """A seeding origin (``--tracker``) and its tracker, as real processes: (origin, tracker)."""
    origin_port, tracker_port = free_port(), free_port()
    tracker = f"http://127.0.0.1:{tracker_port}"
    origin = f"http://127.0.0.1:{origin_port}"
    # Each only needs the other's address up front (the tracker asks the origin for
    # metainfo when a swarm is announced), so both start at once.
    with started_together(
        [
            origin_process(root / "origin", "--tracker", tracker, port=origin_port),
            tracker_process(root / "tracker", origin, port=tracker_port),
        ]
    ):
        yield origin, tracker


def push_via_api(origin: str, repository: str, image: PushedImage, tag: str) -> None:
    """Push blobs (monolithic POST) and manifests (PUT) with the registry API directly.

    For Docker manifest lists, which skopeo's oci: transport cannot read from a layout.
    """
    for img in image.images:
        for blob in img.blobs():
            url = f"{origin}/v2/{repository}/blobs/uploads/?digest={blob.digest}"
            urllib.request.urlopen(urllib.request.Request(url, data=blob.data, method="POST"))
        _put_manifest(origin, repository, img.manifest.digest, img.manifest)
    _put_manifest(origin, repository, tag, image.top)


def _put_manifest(origin: str, repository: str, reference: str, blob: imagebuild.Blob) -> None:
    request = urllib.request.Request(
        f"{origin}/v2/{repository}/manifests/{reference}",
        data=blob.data,
        method="PUT",
        headers={"Content-Type": blob.media_type},
    )
    urllib.request.urlopen(request)
