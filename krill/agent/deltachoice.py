"""Delta or full, by the clock: which path gets a changed layer onto this node sooner.

A delta saves bytes; a user waits for time. Measured on this 2-core machine
(issue 15): ``krill delta apply`` of a layer of Python wheels (234 MB tar,
68 MB gzip, 8.8 MB delta) takes 8.5 s, 28 MB/s of tar, most of it zlib
recompression on one core, while the full 68 MB takes 5.4 s at 100 Mbit/s
and 0.55 s at 1 Gbit/s. On any link faster than ~63 Mbit/s that delta made
the pull slower. So for each layer with a delta on offer the agent estimates
both paths::

    delta = delta bytes / link rate + target tar bytes / rebuild rate (recipe kind)
    full  = layer bytes / link rate

and with ``delta_policy = "fastest"`` (the default) takes the faster one;
``"fewest-bytes"`` always takes the delta, for sites that pay per byte.

Every input is measured on this node once it can be, and starts from a
stated default before that:

* the link rate from the blobs this node downloaded (swarm or origin HTTP,
  from asking the source to the verified file, so the metainfo lookup and
  the swarm's start are in it as they are in a real fetch); downloads under
  ``MIN_SAMPLE_BYTES`` are latency, not rate, and are not counted. Before any
  sample: ``DEFAULT_LINK_RATE`` (100 Mbit/s). A node needs a cached base for a
  delta at all, so by the first choice it has almost always downloaded a
  layer already.
* the rebuild rate per recipe kind, tar bytes of the target per second of
  the whole rebuild (base decompressed, delta applied, recompressed, both
  digests checked), from this node's own rebuilds. Before any: the
  conservative ``DEFAULT_REBUILD_RATES`` per core, for the cores a rebuild
  gets (below the rates docs/benchmarks.md measured, since a node is rarely
  idle while it pulls).
* the target's tar size is not known before the delta's header is read, so it
  is the layer's compressed size times the base's own ratio (gzip's ISIZE
  trailer, zstd's frame content size), or ``DEFAULT_RATIOS`` when the base does
  not say.

Both averages are over *seconds per byte*, not bytes per second: the time of
the next download is what is predicted, and averaging rates would let one
fast sample hide a slow link. ``SMOOTHING`` weighs the newest sample.

The model is pure: ``Rates`` holds the measurements and is changed only by
its ``observe_*`` methods; ``decide`` reads it. ``DeltaChooser`` is the
agent's one instance of it: it holds the node's ``Rates`` and the policy,
counts and logs each choice, and settles a choice's seconds saved once the
path taken has been timed. The agent's ``DeltaRebuilder`` owns one, feeds it,
and acts on its ``Decision``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from krill.delta.options import default_workers
from krill.digests import Digest

__all__ = [
    "BLOB_HEAD_BYTES",
    "DEFAULT_LINK_RATE",
    "DEFAULT_RATIOS",
    "DEFAULT_REBUILD_RATES",
    "MAX_AWAITED_DOWNLOADS",
    "MIN_SAMPLE_BYTES",
    "SMOOTHING",
    "Choice",
    "ChoiceMetrics",
    "Compression",
    "Decision",
    "DeltaChooser",
    "DeltaPolicy",
    "Estimate",
    "LayerCosts",
    "MovingRate",
    "Rates",
    "Reason",
    "RecipeKind",
    "compression_of",
    "decide",
    "default_rebuilds",
    "default_scale",
    "estimate",
    "estimate_tar_bytes",
    "kind_of_recipe",
    "read_blob_ends",
    "tar_bytes_from_blob_ends",
]

log = logging.getLogger(__name__)

MB = 1_000_000
# 100 Mbit/s: a node's share of a busy 1 Gbit/s link, or a modest edge link. Only used
# until this node has timed a download of its own.
DEFAULT_LINK_RATE = 12.5 * MB
# Only downloads this big are rate samples: a 50 KB config takes as long as its round trips.
MIN_SAMPLE_BYTES = 1 << 20
# Weight of the newest sample in the moving averages: three samples move an estimate
# most of the way (0.6**3 = 0.22 of the old one left) to a link that changed.
SMOOTHING = 0.4
# The head of a blob read to learn its tar size (a zstd frame header is at most 18 bytes).
BLOB_HEAD_BYTES = 32
# Full-layer choices waiting for their download to finish, so the seconds the choice
# saved can be measured; a download that never finishes must not keep one forever.
MAX_AWAITED_DOWNLOADS = 256


class DeltaPolicy(StrEnum):
    """The ``delta_policy`` setting."""

    FASTEST = "fastest"  # whichever path the estimates say ends sooner
    FEWEST_BYTES = "fewest-bytes"  # always the delta (metered links)


class Choice(StrEnum):
    """Which path a layer takes (the ``choice`` label)."""

    DELTA = "delta"
    FULL = "full"


class Reason(StrEnum):
    """Why (the ``reason`` label of ``krill_agent_delta_choice_total``)."""

    DELTA_FASTER = "delta_faster"
    FULL_FASTER = "full_faster"
    FEWEST_BYTES = "fewest_bytes"  # the policy, whatever the estimates say
    SIZE_UNKNOWN = "size_unknown"  # the manifest gave no layer size: the delta, as before


class RecipeKind(StrEnum):
    """How a layer is recompressed (``krill.delta.recipes``: the recipe's ``kind``)."""

    GZIP_ZLIB = "gzip-zlib"
    GZIP_GO = "gzip-go"
    ZSTD = "zstd"
    IDENTITY = "identity"


class Compression(StrEnum):
    """What a layer's media type says about its compression (known before any delta)."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


# Tar bytes per second of a whole rebuild on one worker, before this node measured its
# own. Whole `krill delta apply` runs on the 2-core bench VM (docs/benchmarks.md,
# 2026-12-07): Go-made layers 56 MB/s of tar on one worker, 73-113 MB/s on two (restart
# points, reused tokens); zlib-made 69-77 MB/s on two. Taken at about 70 %, because a node
# is rarely idle while it pulls. (They were 20 MB/s whatever the cores before both
# families recompressed in parallel: a fresh agent then took the whole layer at
# 100 Mbit/s where the delta was 17-20 % faster, scripts/bench-delta-served.)
DEFAULT_REBUILD_RATES: dict[RecipeKind, float] = {
    RecipeKind.GZIP_ZLIB: 40 * MB,
    RecipeKind.GZIP_GO: 40 * MB,
    RecipeKind.ZSTD: 80 * MB,
    RecipeKind.IDENTITY: 150 * MB,
}
# What each further worker adds (up to krill.delta.options.MAX_WORKERS): one worker overlaps
# decompressing the base and decoding ops with recompressing, so a second adds a third
# (pandas, Go-made: 0.81 s on one worker, 0.61 s on two).
_PARALLEL_EFFICIENCY = 0.33
# Tar bytes per compressed byte when the base's own ratio is unknown (the wheels layer
# of the issue is 3.4, the bench pairs 2.3-3.6).
DEFAULT_RATIOS: dict[Compression, float] = {
    Compression.GZIP: 3.0,
    Compression.ZSTD: 3.0,
    Compression.NONE: 1.0,
}
KINDS_OF: dict[Compression, tuple[RecipeKind, ...]] = {
    Compression.GZIP: (RecipeKind.GZIP_ZLIB, RecipeKind.GZIP_GO),
    Compression.ZSTD: (RecipeKind.ZSTD,),
    Compression.NONE: (RecipeKind.IDENTITY,),
}


def compression_of(media_type: str) -> Compression:
    """The compression a layer media type names; an unknown one is taken as gzip (the
    slowest to rebuild, so an unknown layer never looks cheaper than it is)."""
    if "zstd" in media_type:
        return Compression.ZSTD
    if media_type.endswith(("tar", ".tar")) and "gzip" not in media_type:
        return Compression.NONE
    return Compression.GZIP


@dataclass(frozen=True, slots=True)
class MovingRate:
    """An exponentially weighted average of seconds per byte, read as bytes per second."""

    seconds_per_byte: float
    samples: int = 0

    @classmethod
    def starting_at(cls, rate: float) -> MovingRate:
        return cls(1.0 / rate)

    @property
    def rate(self) -> float:
        return 1.0 / self.seconds_per_byte

    def with_sample(self, nbytes: int, seconds: float) -> MovingRate:
        """The average after one more measurement; the first replaces the default
        outright (a default is a guess, not a measurement to keep 60 % of)."""
        sample = seconds / nbytes
        if self.samples == 0:
            return MovingRate(sample, 1)
        mixed = SMOOTHING * sample + (1 - SMOOTHING) * self.seconds_per_byte
        return MovingRate(mixed, self.samples + 1)


@dataclass
class Rates:
    """This node's measured link and rebuild rates; changed only by ``observe_*``."""

    link: MovingRate = field(default_factory=lambda: MovingRate.starting_at(DEFAULT_LINK_RATE))
    rebuild: dict[RecipeKind, MovingRate] = field(default_factory=lambda: default_rebuilds())
    # The recipe kind this node rebuilt last, per compression: the best guess for the
    # next layer of that compression (layers on one node mostly come from one builder).
    last_kind: dict[Compression, RecipeKind] = field(default_factory=dict)

    def observe_download(self, nbytes: int, seconds: float) -> bool:
        """Count a finished download; False when it was too small (or too quick) to say."""
        if nbytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return False
        self.link = self.link.with_sample(nbytes, seconds)
        return True

    def observe_rebuild(self, kind: RecipeKind, tar_bytes: int, seconds: float) -> bool:
        """Count a finished rebuild of ``tar_bytes`` of tar; False when its time says
        nothing (its kind is remembered all the same)."""
        for compression, kinds in KINDS_OF.items():
            if kind in kinds:
                self.last_kind[compression] = kind
        if tar_bytes <= 0 or seconds <= 0:
            return False
        self.rebuild[kind] = self.rebuild[kind].with_sample(tar_bytes, seconds)
        return True

    def likely_kind(self, compression: Compression) -> RecipeKind:
        """The kind last rebuilt for ``compression``, else its slowest kind."""
        last = self.last_kind.get(compression)
        if last is not None:
            return last
        return min(KINDS_OF[compression], key=lambda kind: self.rebuild[kind].rate)


def default_rebuilds(cores: int | None = None) -> dict[RecipeKind, MovingRate]:
    """The per-core defaults for this node's cores (the workers a rebuild gets)."""
    return {
        kind: MovingRate.starting_at(rate * default_scale(cores))
        for kind, rate in DEFAULT_REBUILD_RATES.items()
    }


def default_scale(cores: int | None = None) -> float:
    """How many single cores' worth of rebuild ``cores`` give, before any measurement."""
    workers = default_workers(cores)
    return 1.0 + (workers - 1) * _PARALLEL_EFFICIENCY


@dataclass(frozen=True, slots=True)
class LayerCosts:
    """What each path has to move or compute for one layer."""

    layer_bytes: int  # the full layer (the manifest's size)
    delta_bytes: int  # the delta the origin offers
    tar_bytes: int  # the target's tar, to be rebuilt (an estimate before the header)
    kind: RecipeKind


@dataclass(frozen=True, slots=True)
class Estimate:
    """Seconds each path is expected to take, and the rates they came from."""

    delta_seconds: float
    full_seconds: float
    link_rate: float
    rebuild_rate: float

    def seconds(self, choice: Choice) -> float:
        return self.delta_seconds if choice is Choice.DELTA else self.full_seconds

    @property
    def faster(self) -> Choice:
        """The delta on a tie: it saves the bytes for the same wait."""
        return Choice.DELTA if self.delta_seconds <= self.full_seconds else Choice.FULL


@dataclass(frozen=True, slots=True)
class Decision:
    choice: Choice
    reason: Reason
    costs: LayerCosts
    estimate: Estimate

    @property
    def other(self) -> Choice:
        return Choice.FULL if self.choice is Choice.DELTA else Choice.DELTA

    @property
    def bytes_forgone(self) -> int:
        """Bytes a full choice downloads beyond the delta's (0 for the delta)."""
        if self.choice is Choice.DELTA:
            return 0
        return max(0, self.costs.layer_bytes - self.costs.delta_bytes)

    @property
    def estimated_seconds_saved(self) -> float:
        """The other path's estimate minus this one's (negative: the choice costs time)."""
        return self.estimate.seconds(self.other) - self.estimate.seconds(self.choice)


def estimate(costs: LayerCosts, rates: Rates) -> Estimate:
    """Both paths' expected seconds on this node's current rates."""
    link = rates.link.rate
    rebuild = rates.rebuild[costs.kind].rate
    return Estimate(
        delta_seconds=costs.delta_bytes / link + costs.tar_bytes / rebuild,
        full_seconds=costs.layer_bytes / link,
        link_rate=link,
        rebuild_rate=rebuild,
    )


def decide(policy: DeltaPolicy, costs: LayerCosts, rates: Rates) -> Decision:
    """Delta or full for one layer, with the reason."""
    expected = estimate(costs, rates)
    if costs.layer_bytes <= 0:
        return Decision(Choice.DELTA, Reason.SIZE_UNKNOWN, costs, expected)
    if policy is DeltaPolicy.FEWEST_BYTES:
        return Decision(Choice.DELTA, Reason.FEWEST_BYTES, costs, expected)
    if expected.faster is Choice.DELTA:
        return Decision(Choice.DELTA, Reason.DELTA_FASTER, costs, expected)
    return Decision(Choice.FULL, Reason.FULL_FASTER, costs, expected)


# ---- the target's tar size, from the base ---------------------------------------


def tar_bytes_from_blob_ends(head: bytes, tail: bytes, size: int) -> int | None:
    """A layer blob's tar size from its first and last bytes, or None when they do not say.

    gzip: the ISIZE trailer (size mod 2**32 of the last member: a multi-member or
    4 GiB+ tar shows as less than the blob and is not trusted). zstd: the first
    frame's content size (likewise). Anything else is a plain tar.
    """
    if head[:2] == b"\x1f\x8b":
        if len(tail) < 4:
            return None
        return _plausible(struct.unpack("<I", tail[-4:])[0], size)
    if head[:4] == b"\x28\xb5\x2f\xfd":
        # Imported here: the agent's config reads DeltaPolicy from this module, and the
        # codec package behind the zstd binding is not needed to parse settings.
        from krill.delta.zstdlib import zstd

        try:
            content = zstd.get_frame_info(head).decompressed_size
        except zstd.ZstdError:
            return None
        return None if content is None else _plausible(content, size)
    return size


def _plausible(tar_bytes: int, blob_bytes: int) -> int | None:
    """A tar smaller than 90 % of its compressed blob is a wrapped or partial count."""
    return tar_bytes if tar_bytes >= 0.9 * blob_bytes else None


def read_blob_ends(path: Path) -> tuple[bytes, bytes]:
    """A blob's first ``BLOB_HEAD_BYTES`` and last 4 bytes (where gzip keeps ISIZE). Blocking."""
    with open(path, "rb") as f:
        head = f.read(BLOB_HEAD_BYTES)
        f.seek(max(0, f.seek(0, 2) - 4))
        return head, f.read(4)


def estimate_tar_bytes(
    layer_bytes: int, compression: Compression, base_bytes: int, base_tar_bytes: int | None
) -> int:
    """The target's tar size: its compressed size times the base's ratio (or the default)."""
    if compression is Compression.NONE:
        return layer_bytes
    if base_tar_bytes is not None and base_bytes > 0:
        ratio = base_tar_bytes / base_bytes
    else:
        ratio = DEFAULT_RATIOS[compression]
    return round(layer_bytes * ratio)


def kind_of_recipe(described: str) -> RecipeKind | None:
    """The kind of a recipe as ``Recipe.describe`` writes it (``gzip-zlib(level=6,...)``)."""
    try:
        return RecipeKind(described.split("(", 1)[0])
    except ValueError:
        return None


# ---- the agent's chooser --------------------------------------------------------


class ChoiceMetrics(Protocol):
    def delta_choice(self, decision: Decision) -> None: ...

    def delta_seconds(self, choice: Choice, saved: float) -> None:
        """Seconds a choice saved (negative: lost): the path taken, measured, against
        the other path's estimate."""
        ...


class DeltaChooser:
    """This node's rates and policy; each choice counted, logged and, once timed, settled."""

    def __init__(self, policy: DeltaPolicy, metrics: ChoiceMetrics) -> None:
        self.policy = policy
        self.rates = Rates()
        self._metrics = metrics
        self._awaiting_full: dict[Digest, Decision] = {}  # ordered: the oldest are dropped

    def choose(
        self,
        target: Digest,
        costs: LayerCosts,
    ) -> Decision:
        decision = decide(self.policy, costs, self.rates)
        self._metrics.delta_choice(decision)
        expected = decision.estimate
        log.info(
            "delta.choice digest=%s choice=%s reason=%s policy=%s delta_s=%.3f full_s=%.3f "
            "layer_bytes=%d delta_bytes=%d tar_bytes_est=%d recipe_est=%s link_Bps=%.0f "
            "link_samples=%d rebuild_Bps=%.0f rebuild_samples=%d",
            target, decision.choice, decision.reason, self.policy,
            expected.delta_seconds, expected.full_seconds,
            costs.layer_bytes, costs.delta_bytes, costs.tar_bytes, costs.kind,
            expected.link_rate, self.rates.link.samples,
            expected.rebuild_rate, self.rates.rebuild[costs.kind].samples,
        )  # fmt: skip
        if decision.choice is Choice.FULL:
            self._awaiting_full[target] = decision
            while len(self._awaiting_full) > MAX_AWAITED_DOWNLOADS:
                del self._awaiting_full[next(iter(self._awaiting_full))]
        return decision

    def costs(
        self,
        *,
        layer_bytes: int,
        media_type: str,
        delta_bytes: int,
        base_bytes: int,
        base_tar_bytes: int | None,
    ) -> LayerCosts:
        """Both paths' work for a layer, the tar size and recipe kind estimated."""
        compression = compression_of(media_type)
        return LayerCosts(
            layer_bytes=layer_bytes,
            delta_bytes=delta_bytes,
            tar_bytes=estimate_tar_bytes(layer_bytes, compression, base_bytes, base_tar_bytes),
            kind=self.rates.likely_kind(compression),
        )

    def observe_download(self, digest: Digest, nbytes: int, seconds: float) -> None:
        """A blob finished downloading (swarm or origin): a link rate sample, and the
        measured half of a full choice's seconds saved."""
        self.rates.observe_download(nbytes, seconds)
        decision = self._awaiting_full.pop(digest, None)
        if decision is not None:
            self._metrics.delta_seconds(Choice.FULL, decision.estimate.delta_seconds - seconds)

    def observe_rebuild(self, recipe: str, tar_bytes: int, seconds: float) -> None:
        """A rebuild finished: ``recipe`` as ``Recipe.describe`` writes it."""
        kind = kind_of_recipe(recipe)
        if kind is not None:
            self.rates.observe_rebuild(kind, tar_bytes, seconds)

    def delta_taken(self, decision: Decision, seconds: float) -> None:
        """The delta path took ``seconds`` (from the choice to the layer in the cache)."""
        self._metrics.delta_seconds(Choice.DELTA, decision.estimate.full_seconds - seconds)
