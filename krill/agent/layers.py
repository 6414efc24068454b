"""Which blobs are layers, learnt from the image manifests this agent has served.

The delta path needs two facts a blob digest alone does not carry: that the
blob is a layer (only layers have deltas, so configs and deltas themselves
skip the lookup) and where its diff_id is written (the image config, at the
layer's position). It also needs, per repository, the layers of the images
this node pulled before: those are the bases it can offer the origin
(``have=``), newest image first. And, for choosing between the delta and the
full layer (``agent.deltachoice``), each layer's size and media type as the
manifest gives them: the full path's bytes and the compression to rebuild.

The index is small (digests only) and saved to ``<data>/layers.json`` so an
agent that restarts still knows which of its cached blobs are old layers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from krill import oci
from krill.atomicfile import write_atomic
from krill.digests import Digest, DigestError

log = logging.getLogger(__name__)

# Images remembered per repository (newest first) and bases offered per lookup.
MAX_IMAGES_PER_REPOSITORY = 16
MAX_BASES = 32
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class LayerRef:
    """Where a layer sits (its image's config blob, its position in the layer list) and
    what the manifest says of it: its size (0 in an index saved before sizes were kept)
    and media type."""

    repository: str
    config: Digest
    position: int
    size: int = 0
    media_type: str = ""


@dataclass(frozen=True, slots=True)
class ImageLayers:
    manifest: Digest
    config: Digest
    layers: tuple[Digest, ...]
    sizes: tuple[int, ...] = ()
    media_types: tuple[str, ...] = ()


class LayerIndex:
    """Layer digests -> (config, position), and per repository the images seen, newest first."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._images: dict[str, list[ImageLayers]] = {}
        self._layers: dict[Digest, LayerRef] = {}
        self._save_lock = asyncio.Lock()

    def learn(self, repository: str, manifest_digest: Digest, body: bytes, media_type: str) -> bool:
        """Record an image manifest's layers; True when that changed the index (save it then).

        An index or anything unparsable is ignored.
        """
        try:
            parsed = oci.parse_manifest(body, media_type)
        except oci.ManifestError:
            return False
        if parsed.is_index or parsed.config is None:
            return False
        image = ImageLayers(
            manifest_digest,
            parsed.config.digest,
            tuple(d.digest for d in parsed.layers),
            tuple(d.size for d in parsed.layers),
            tuple(d.media_type for d in parsed.layers),
        )
        known = self._images.setdefault(repository, [])
        if known and known[0] == image:  # (an entry saved without sizes is learnt again)
            return False
        known[:] = [image] + [i for i in known if i.manifest != manifest_digest]
        del known[MAX_IMAGES_PER_REPOSITORY:]
        self._index_image(repository, image)
        return True

    def layer(self, digest: Digest) -> LayerRef | None:
        """Where ``digest`` sits if it is a layer of an image this agent served, else None."""
        return self._layers.get(digest)

    def bases(
        self, repository: str, target: Digest, is_cached: Callable[[Digest], bool]
    ) -> list[Digest]:
        """Cached layers of the repository's earlier images to offer as delta bases.

        Newest image first, the layer at the target's position before the others
        (the likeliest good base), at most ``MAX_BASES``. Layers of the target's
        own image are left out: they are its siblings, not earlier versions of it,
        and every base offered may cost the origin a delta computation.
        """
        images = self._images.get(repository, [])
        ref = self._layers.get(target)
        siblings = {d for image in images if target in image.layers for d in image.layers}
        earlier = [image for image in images if target not in image.layers]
        position = ref.position if ref is not None else -1
        candidates = [i.layers[position] for i in earlier if 0 <= position < len(i.layers)]
        candidates += [layer for image in earlier for layer in image.layers]
        out: list[Digest] = []
        for layer in candidates:
            if layer not in siblings and layer not in out and is_cached(layer):
                out.append(layer)
                if len(out) == MAX_BASES:
                    break
        return out

    def _index_image(self, repository: str, image: ImageLayers) -> None:
        for position, layer in enumerate(image.layers):
            size = image.sizes[position] if position < len(image.sizes) else 0
            media_type = image.media_types[position] if position < len(image.media_types) else ""
            self._layers[layer] = LayerRef(repository, image.config, position, size, media_type)

    # ---- persistence ----------------------------------------------------

    def load(self) -> None:
        """Read the saved index; an unreadable one is started afresh (it is only a hint)."""
        if self._path is None or not self._path.exists():
            return
        try:
            doc = json.loads(self._path.read_text())
            for repository, images in doc["repositories"].items():
                loaded = [
                    ImageLayers(
                        Digest.parse(i["manifest"]),
                        Digest.parse(i["config"]),
                        tuple(Digest.parse(d) for d in i["layers"]),
                        _saved_sizes(i.get("sizes", [])),
                        tuple(str(m) for m in i.get("media_types", [])),
                    )
                    for i in images
                ]
                self._images[repository] = loaded
                for image in reversed(loaded):  # newest image wins a shared layer's ref
                    self._index_image(repository, image)
        except (ValueError, KeyError, TypeError, AttributeError, DigestError) as exc:
            log.warning("layers.index_unreadable path=%s error=%s", self._path, exc)
            self._images.clear()
            self._layers.clear()

    def save(self) -> None:
        """Write the index durably (blocking)."""
        if self._path is not None:
            write_atomic(self._path, self._document())

    async def save_async(self) -> None:
        """``save`` with the disk write (and its fsync) in a worker thread."""
        if self._path is None:
            return
        async with self._save_lock:  # one write at a time, so the newest lands last
            await asyncio.to_thread(write_atomic, self._path, self._document())

    def _document(self) -> str:
        return json.dumps(
            {
                "version": INDEX_VERSION,
                "repositories": {
                    repo: [
                        {
                            "manifest": str(i.manifest),
                            "config": str(i.config),
                            "layers": [str(d) for d in i.layers],
                            "sizes": list(i.sizes),
                            "media_types": list(i.media_types),
                        }
                        for i in images
                    ]
                    for repo, images in self._images.items()
                },
            }
        )


def _saved_sizes(values: list[object]) -> tuple[int, ...]:
    """Layer sizes from the saved index (TypeError for anything but integers)."""
    sizes = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"layer sizes must be non-negative integers, got {value!r:.40}")
        sizes.append(value)
    return tuple(sizes)
