"""Preheat: pull every blob of an image onto this node before anyone asks.

An image reference is ``[host[:port]/]repository[:tag|@digest]``. A host that
is not the origin's own is mapped like containerd's ``ns`` (see
``agent.namespaces``). For an index, only the entries for this node's
platform are pulled unless all platforms are requested.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from krill import oci
from krill.agent.fetcher import InflightBlob
from krill.agent.manifests import Manifest
from krill.agent.node import AgentNode
from krill.names import InvalidNameError

log = logging.getLogger(__name__)

PARALLEL_BLOBS = 4


class PreheatError(ValueError):
    """The image reference or its manifests cannot be used; the message says why."""


class InvalidImageName(PreheatError):
    """The reference's repository name breaks the spec's grammar (NAME_INVALID)."""


@dataclass(frozen=True)
class ImageReference:
    host: str | None
    repository: str
    reference: str  # tag or digest


def parse_image_reference(text: str) -> ImageReference:
    """Split ``[host/]repo[:tag|@digest]`` (tag defaults to ``latest``)."""
    rest = text.strip()
    if not rest:
        raise PreheatError("empty image reference")
    host = None
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, rest = first, remainder
    if "@" in rest:
        repository, _, reference = rest.partition("@")
        # name:tag@digest: the digest pins the image and the tag is only a label (as
        # docker and containerd read it); with the host split off, ":" starts the tag.
        repository = repository.partition(":")[0]
    else:
        head, colon, tag = rest.rpartition(":")
        repository, reference = (head, tag) if colon else (rest, "latest")
    if not repository or not reference:
        raise PreheatError(f"cannot parse image reference {text!r}; expected [host/]name[:tag]")
    return ImageReference(host, repository, reference)


def _platform_matches(platform: object, os_name: str, arch: str) -> bool:
    """Whether an index entry is for this node; a malformed (non-object) platform is unknown."""
    if not isinstance(platform, dict):
        return False
    return platform.get("os") == os_name and platform.get("architecture") == arch


async def image_blobs(
    node: AgentNode, top: Manifest, repository: str, reference: str, all_platforms: bool
) -> list[oci.Descriptor]:
    """Config and layer descriptors of ``top`` to pull (deduplicated, in manifest order)."""
    parsed = oci.parse_manifest(top.body, top.media_type)
    manifests = [parsed]
    if parsed.is_index:
        wanted = [
            d
            for d in parsed.manifests
            if all_platforms
            or _platform_matches(
                d.platform, node.config.platform_os, node.config.platform_architecture
            )
        ]
        if not wanted:
            raise PreheatError(
                f"{repository}:{reference} has no image for "
                f"{node.config.platform_os}/{node.config.platform_architecture}; "
                "use --all-platforms to pull every platform"
            )
        manifests = []
        for descriptor in wanted:
            child = await node.manifests.get(repository, str(descriptor.digest))
            manifests.append(oci.parse_manifest(child.body, child.media_type))
    seen: dict[str, oci.Descriptor] = {}
    for manifest in manifests:
        for descriptor in manifest.blob_references():
            seen.setdefault(str(descriptor.digest), descriptor)
    return list(seen.values())


async def preheat(
    node: AgentNode, image: str, all_platforms: bool
) -> AsyncIterator[dict[str, Any]]:
    """Pull the image's blobs; yields progress events (dicts, sent as NDJSON lines)."""
    ref = parse_image_reference(image)
    try:
        repository = node.namespaces.origin_repository(ref.repository, ref.host)
    except InvalidNameError as exc:
        raise InvalidImageName(str(exc)) from None
    top = await node.manifests.get(repository, ref.reference)
    blobs = await image_blobs(node, top, repository, ref.reference, all_platforms)
    total = sum(d.size for d in blobs)
    yield {
        "event": "start",
        "image": image,
        "repository": repository,
        "digest": str(top.digest),  # what the tag named when asked (it may move later)
        "blobs": len(blobs),
        "total_bytes": total,
    }
    done_bytes = 0
    inflight: dict[str, InflightBlob] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    semaphore = asyncio.Semaphore(PARALLEL_BLOBS)

    async def pull(descriptor: oci.Descriptor) -> None:
        """Fetch one blob; report success or failure through the queue (never raise)."""
        digest = str(descriptor.digest)
        try:
            async with semaphore:
                blob = await node.fetcher.open(descriptor.digest, repository)
                if isinstance(blob, InflightBlob):
                    inflight[digest] = blob  # its progress is reported while it arrives
                await node.fetcher.complete(blob)
        except Exception as exc:  # reported to the caller as an error event
            await queue.put({"event": "error", "message": f"{digest}: {exc}"})
            return
        finally:
            inflight.pop(digest, None)
        await queue.put({"event": "blob", "digest": digest, "size": descriptor.size})

    # Plain tasks (not a TaskGroup): this generator yields to its consumer between
    # events, so a failing pull must not cancel whoever is consuming it.
    tasks = [asyncio.create_task(pull(d)) for d in blobs]
    try:
        for _ in blobs:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=0.5)
                    break
                except TimeoutError:
                    partial = sum(max(b.transfer.available, 0) for b in inflight.values())
                    yield {
                        "event": "progress",
                        "done_bytes": done_bytes + partial,
                        "total_bytes": total,
                    }
            if event["event"] == "error":
                raise PreheatError(event["message"])
            done_bytes += event["size"]
            yield {**event, "done_bytes": done_bytes, "total_bytes": total}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    yield {"event": "done", "blobs": len(blobs), "total_bytes": total}
