"""Delta or full, by the clock (``krill.agent.deltachoice``): the model, its inputs, the
rebuilder acting on it.

The model's cases are the issue's own figures (a 234 MB tar, 68 MB gzip layer with
an 8.8 MB delta at 28 MB/s of rebuild: full wins above ~63 Mbit/s); its properties
are checked with hypothesis. The rebuilder cases run a real delta against a stand-in
origin and feed measured rates through the rebuilder's public ``observe_download``
(the fetcher's call), with a ``ManualClock`` timing the rebuild.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from krill.agent.deltachoice import (
    DEFAULT_LINK_RATE,
    DEFAULT_RATIOS,
    DEFAULT_REBUILD_RATES,
    MIN_SAMPLE_BYTES,
    SMOOTHING,
    Choice,
    Compression,
    DeltaPolicy,
    LayerCosts,
    MovingRate,
    Rates,
    Reason,
    RecipeKind,
    compression_of,
    decide,
    default_rebuilds,
    default_scale,
    estimate_tar_bytes,
    kind_of_recipe,
    tar_bytes_from_blob_ends,
)
from krill.agent.deltas import DeltaRebuilder
from krill.agent.metrics import AgentMetrics
from krill.agent.rebuildstream import RebuildTransfer
from krill.delta.zstdlib import zstd
from krill.digests import Digest
from tests.clocks import ManualClock
from tests.fixtures_agent import (
    DELTA_REPO,
    CountingMetrics,
    rebuilder_offering,
    versions_with_a_delta,
)
from tests.imagebuild import Image
from tests.metrics_text import parse_metrics

MB = 1_000_000
MBIT = 1_000_000 / 8

# The issue's layer: Python wheels, 234 MB tar, 68 MB gzip, 8.8 MB delta, rebuilt at 28 MB/s.
WHEELS = LayerCosts(
    layer_bytes=68 * MB, delta_bytes=8_800_000, tar_bytes=234 * MB, kind=RecipeKind.GZIP_ZLIB
)


def rates_measured(link_rate: float, rebuild_rate: float, kind: RecipeKind) -> Rates:
    """Rates as a node that measured one download and one rebuild would hold them."""
    rates = Rates()
    rates.observe_download(100 * MB, 100 * MB / link_rate)
    rates.observe_rebuild(kind, 100 * MB, 100 * MB / rebuild_rate)
    return rates


@pytest.mark.parametrize(
    ("link_mbit", "policy", "choice", "reason"),
    [
        (1000, DeltaPolicy.FASTEST, Choice.FULL, Reason.FULL_FASTER),
        (100, DeltaPolicy.FASTEST, Choice.FULL, Reason.FULL_FASTER),
        (70, DeltaPolicy.FASTEST, Choice.FULL, Reason.FULL_FASTER),
        (55, DeltaPolicy.FASTEST, Choice.DELTA, Reason.DELTA_FASTER),
        (10, DeltaPolicy.FASTEST, Choice.DELTA, Reason.DELTA_FASTER),
        (1000, DeltaPolicy.FEWEST_BYTES, Choice.DELTA, Reason.FEWEST_BYTES),
        (10, DeltaPolicy.FEWEST_BYTES, Choice.DELTA, Reason.FEWEST_BYTES),
    ],
)
def test_the_issues_layer_flips_to_full_above_about_63_mbit(
    link_mbit: float, policy: DeltaPolicy, choice: Choice, reason: Reason
) -> None:
    rates = rates_measured(link_mbit * MBIT, 28 * MB, RecipeKind.GZIP_ZLIB)
    decision = decide(policy, WHEELS, rates)
    assert (decision.choice, decision.reason) == (choice, reason)
    at_100 = decide(DeltaPolicy.FASTEST, WHEELS, rates_measured(100 * MBIT, 28 * MB, WHEELS.kind))
    assert at_100.estimate.full_seconds == pytest.approx(5.44)  # the issue's 5.4 s
    assert at_100.estimate.delta_seconds == pytest.approx(0.704 + 234 / 28)


def test_a_layer_without_a_known_size_takes_the_delta_as_before() -> None:
    costs = LayerCosts(layer_bytes=0, delta_bytes=1000, tar_bytes=0, kind=RecipeKind.ZSTD)
    decision = decide(DeltaPolicy.FASTEST, costs, Rates())
    assert (decision.choice, decision.reason) == (Choice.DELTA, Reason.SIZE_UNKNOWN)


def test_bytes_forgone_and_seconds_saved_of_a_decision() -> None:
    full = decide(DeltaPolicy.FASTEST, WHEELS, rates_measured(1000 * MBIT, 28 * MB, WHEELS.kind))
    assert full.bytes_forgone == 68 * MB - 8_800_000
    assert full.estimated_seconds_saved == pytest.approx(
        full.estimate.delta_seconds - full.estimate.full_seconds
    )
    assert full.estimated_seconds_saved > 0
    metered = decide(
        DeltaPolicy.FEWEST_BYTES, WHEELS, rates_measured(1000 * MBIT, 28 * MB, WHEELS.kind)
    )
    assert metered.bytes_forgone == 0 and metered.estimated_seconds_saved < 0  # time paid for bytes


sizes = st.integers(min_value=1, max_value=10**11)
rates_st = st.floats(min_value=1e4, max_value=1e10)


@given(layer=sizes, delta=sizes, tar=sizes, link=rates_st, rebuild=rates_st)
def test_fewest_bytes_always_takes_the_delta(
    layer: int, delta: int, tar: int, link: float, rebuild: float
) -> None:
    costs = LayerCosts(layer, delta, tar, RecipeKind.GZIP_GO)
    rates = rates_measured(link, rebuild, RecipeKind.GZIP_GO)
    assert decide(DeltaPolicy.FEWEST_BYTES, costs, rates).choice is Choice.DELTA


@given(layer=sizes, delta=sizes, tar=sizes, link=rates_st, rebuild=rates_st)
def test_fastest_takes_the_path_with_the_smaller_estimate(
    layer: int, delta: int, tar: int, link: float, rebuild: float
) -> None:
    decision = decide(
        DeltaPolicy.FASTEST,
        LayerCosts(layer, delta, tar, RecipeKind.ZSTD),
        rates_measured(link, rebuild, RecipeKind.ZSTD),
    )
    chosen, other = (
        decision.estimate.seconds(decision.choice),
        decision.estimate.seconds(decision.other),
    )
    assert chosen <= other
    assert decision.estimated_seconds_saved >= 0


@given(
    layer=sizes,
    delta=sizes,
    tar=sizes,
    rebuild=rates_st,
    slow=rates_st,
    faster_by=st.floats(min_value=1.0, max_value=1e3),
)
def test_a_faster_link_never_turns_full_back_into_delta(
    layer: int, delta: int, tar: int, rebuild: float, slow: float, faster_by: float
) -> None:
    """Once the full layer wins at some link rate it wins at every faster one."""
    costs = LayerCosts(layer, delta, tar, RecipeKind.IDENTITY)
    at_slow = decide(DeltaPolicy.FASTEST, costs, rates_measured(slow, rebuild, costs.kind))
    at_fast = decide(
        DeltaPolicy.FASTEST, costs, rates_measured(slow * faster_by, rebuild, costs.kind)
    )
    if at_slow.choice is Choice.FULL:
        assert at_fast.choice is Choice.FULL


# ---- the measurements ---------------------------------------------------------------


def test_the_first_measurement_replaces_the_default_and_later_ones_are_averaged() -> None:
    rates = Rates()
    assert rates.link.rate == DEFAULT_LINK_RATE and rates.link.samples == 0
    assert rates.observe_download(10 * MB, 1.0)
    assert rates.link.rate == pytest.approx(10 * MB)
    assert rates.observe_download(10 * MB, 4.0)  # a slower sample: time per byte averaged
    expected = SMOOTHING * (4.0 / (10 * MB)) + (1 - SMOOTHING) * (1.0 / (10 * MB))
    assert rates.link.seconds_per_byte == pytest.approx(expected)
    assert rates.link.samples == 2


def test_small_or_instant_downloads_are_not_rate_samples() -> None:
    rates = Rates()
    assert not rates.observe_download(MIN_SAMPLE_BYTES - 1, 0.001)
    assert not rates.observe_download(10 * MB, 0.0)
    assert rates.link.samples == 0


@given(
    samples=st.lists(
        st.tuples(st.integers(MIN_SAMPLE_BYTES, 10**10), st.floats(1e-3, 1e4)), min_size=1
    )
)
def test_the_average_stays_within_the_samples(samples: list[tuple[int, float]]) -> None:
    rate = MovingRate.starting_at(DEFAULT_LINK_RATE)
    for nbytes, seconds in samples:
        rate = rate.with_sample(nbytes, seconds)
    per_byte = [seconds / nbytes for nbytes, seconds in samples]
    assert min(per_byte) * (1 - 1e-9) <= rate.seconds_per_byte <= max(per_byte) * (1 + 1e-9)


def test_three_slow_downloads_move_the_link_most_of_the_way() -> None:
    """A link that slowed down 100x is seen as slow after three downloads."""
    rates = Rates()
    rates.observe_download(100 * MB, 0.1)  # 1 GB/s
    for _ in range(3):
        rates.observe_download(10 * MB, 1.0)  # 10 MB/s
    assert rates.link.rate < 13 * MB


def test_the_recipe_kind_is_the_last_one_rebuilt_else_the_slowest() -> None:
    rates = Rates()
    assert rates.likely_kind(Compression.ZSTD) is RecipeKind.ZSTD
    assert rates.likely_kind(Compression.NONE) is RecipeKind.IDENTITY
    rates.observe_rebuild(RecipeKind.GZIP_GO, 100 * MB, 1.0)  # gzip-go measured fast
    assert rates.likely_kind(Compression.GZIP) is RecipeKind.GZIP_GO
    fresh = Rates()
    fresh.rebuild[RecipeKind.GZIP_GO] = MovingRate.starting_at(5 * MB)
    assert fresh.likely_kind(Compression.GZIP) is RecipeKind.GZIP_GO  # slowest, none rebuilt


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression.GZIP),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Compression.ZSTD),
        ("application/vnd.oci.image.layer.v1.tar", Compression.NONE),
        ("application/vnd.example.unknown", Compression.GZIP),
        ("", Compression.GZIP),
    ],
)
def test_compression_from_the_media_type(media_type: str, compression: Compression) -> None:
    assert compression_of(media_type) is compression


@pytest.mark.parametrize(
    ("described", "kind"),
    [
        ("gzip-zlib(level=6,mem_level=8,strategy=0)", RecipeKind.GZIP_ZLIB),
        ("gzip-go(level=6)", RecipeKind.GZIP_GO),
        ("zstd(level=3)", RecipeKind.ZSTD),
        ("identity", RecipeKind.IDENTITY),
        ("lz4(level=1)", None),
    ],
)
def test_the_recipe_kind_from_its_description(described: str, kind: RecipeKind | None) -> None:
    assert kind_of_recipe(described) is kind


# ---- the target's tar size, from the base's own bytes ------------------------------------


def _tar_of(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = size
        tar.addfile(info, io.BytesIO(b"abc" * (size // 3) + b"x" * (size % 3)))
    return out.getvalue()


def _ends(blob: bytes) -> tuple[bytes, bytes, int]:
    return blob[:32], blob[-4:], len(blob)


def test_tar_sizes_from_gzip_zstd_and_plain_blobs() -> None:
    tar = _tar_of(300_000)
    assert tar_bytes_from_blob_ends(*_ends(gzip.compress(tar))) == len(tar)
    assert tar_bytes_from_blob_ends(*_ends(zstd.compress(tar))) == len(tar)
    assert tar_bytes_from_blob_ends(*_ends(tar)) == len(tar)


def test_a_tar_count_smaller_than_the_blob_is_not_trusted() -> None:
    members = gzip.compress(_tar_of(300_000)) + gzip.compress(b"tail")  # two members
    assert tar_bytes_from_blob_ends(*_ends(members)) is None
    unknown = zstd.ZstdCompressor()  # streamed without a pledged size: no content size
    frame = unknown.compress(_tar_of(100_000)) + unknown.flush()
    assert tar_bytes_from_blob_ends(*_ends(frame)) is None


def test_the_target_tar_is_estimated_with_the_bases_ratio() -> None:
    assert estimate_tar_bytes(10 * MB, Compression.GZIP, 20 * MB, 70 * MB) == 35 * MB
    ratio = DEFAULT_RATIOS[Compression.ZSTD]
    assert estimate_tar_bytes(10 * MB, Compression.ZSTD, 20 * MB, None) == round(10 * MB * ratio)
    assert estimate_tar_bytes(10 * MB, Compression.NONE, 20 * MB, None) == 10 * MB


# ---- the rebuilder acting on it ----------------------------------------------------------


class Offered:
    """v1 cached, v2 served, and a stand-in origin offering a real delta for v2's layer."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.v1, self.v2, self.delta = versions_with_a_delta(tmp_path)
        self.target = Digest.parse(self.v2.layers[1].digest)
        self.fetched: list[Digest] = []

    async def run(
        self, policy: DeltaPolicy, link_rate: float, metrics: CountingMetrics | AgentMetrics
    ) -> tuple[bool | RebuildTransfer, DeltaRebuilder]:
        """One ``rebuild`` of v2's layer after the node measured ``link_rate`` once."""
        node = self.tmp_path / policy / str(link_rate)
        async with rebuilder_offering(
            node, self.v1, self.v2, self.delta, metrics,
            policy=policy, clock=ManualClock(), fetched=self.fetched,
        ) as offered:  # fmt: skip
            rebuilder = offered.rebuilder
            rebuilder.observe_download(Digest.of_bytes(b"earlier"), 10 * MB, 10 * MB / link_rate)
            return await rebuilder.rebuild(self.target, DELTA_REPO, offered.ensure), rebuilder


def _layer_bytes(image: Image) -> int:
    return len(image.layers[1].data)


async def test_a_fast_link_fetches_the_layer_whole_and_a_slow_one_takes_the_delta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offered = Offered(tmp_path)
    fast, slow = CountingMetrics(), CountingMetrics()
    caplog.set_level(logging.INFO, logger="krill.agent.deltachoice")

    took_delta, rebuilder = await offered.run(DeltaPolicy.FASTEST, 1e9, fast)
    assert not took_delta and offered.fetched == []  # neither the delta nor the config
    assert [(d.choice, d.reason) for d in fast.choices] == [(Choice.FULL, Reason.FULL_FASTER)]
    assert fast.misses == [] and fast.failures == [] and fast.hits == 0
    (line,) = [r.getMessage() for r in caplog.records if "delta.choice" in r.getMessage()]
    assert "choice=full reason=full_faster policy=fastest" in line

    # The full layer arrives: the seconds the choice saved are the delta's estimate
    # minus the download's measured time.
    full_took = 0.001
    rebuilder.observe_download(offered.target, _layer_bytes(offered.v2), full_took)
    ((choice, saved),) = fast.seconds_saved
    assert choice is Choice.FULL
    assert saved == pytest.approx(fast.choices[0].estimate.delta_seconds - full_took)

    took_delta, _ = await offered.run(DeltaPolicy.FASTEST, 1e3, slow)  # 8 kbit/s
    assert took_delta and slow.hits == 1
    assert [(d.choice, d.reason) for d in slow.choices] == [(Choice.DELTA, Reason.DELTA_FASTER)]
    ((choice, saved),) = slow.seconds_saved  # the ManualClock stood still: 0 s measured
    assert choice is Choice.DELTA and saved == pytest.approx(slow.choices[0].estimate.full_seconds)


async def test_fewest_bytes_takes_the_delta_even_on_a_fast_link(tmp_path: Path) -> None:
    offered = Offered(tmp_path)
    metrics = AgentMetrics()
    took_delta, rebuilder = await offered.run(DeltaPolicy.FEWEST_BYTES, 1e9, metrics)
    assert took_delta
    seen = parse_metrics(metrics.render().decode())
    assert seen['krill_agent_delta_choice_total{choice="delta",reason="fewest_bytes"}'] == 1
    assert seen["krill_agent_delta_hits_total"] == 1
    assert seen["krill_agent_delta_bytes_forgone_total"] == 0
    # The rebuild was timed (0 s on the ManualClock: not a sample) and its kind learnt.
    assert rebuilder.chooser.rates.last_kind[Compression.GZIP] is RecipeKind.GZIP_ZLIB


async def test_a_full_choice_is_counted_with_the_bytes_it_forwent(tmp_path: Path) -> None:
    offered = Offered(tmp_path)
    metrics = AgentMetrics()
    took_delta, rebuilder = await offered.run(DeltaPolicy.FASTEST, 1e9, metrics)
    assert not took_delta
    rebuilder.observe_download(offered.target, _layer_bytes(offered.v2), 0.001)
    seen = parse_metrics(metrics.render().decode())
    assert seen['krill_agent_delta_choice_total{choice="full",reason="full_faster"}'] == 1
    forgone = _layer_bytes(offered.v2) - len(offered.delta)
    assert seen["krill_agent_delta_bytes_forgone_total"] == forgone
    assert seen['krill_agent_delta_seconds_saved_total{choice="full"}'] > 0


# ---- the setting ---------------------------------------------------------------------


def test_delta_policy_from_file_environment_and_flag(tmp_path: Path) -> None:
    from krill.agent.cli import register
    from krill.agent.config import AgentConfig
    from krill.config import ConfigError, load_config

    assert load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ={}).delta_policy == "fastest"
    file = tmp_path / "agent.toml"
    file.write_text('delta_policy = "fewest-bytes"\n')
    from_file = load_config(AgentConfig, file=file, env_prefix="KRILL_AGENT_", environ={})
    assert from_file.delta_policy is DeltaPolicy.FEWEST_BYTES
    env = {"KRILL_AGENT_DELTA_POLICY": "fastest"}
    from_env = load_config(AgentConfig, file=file, env_prefix="KRILL_AGENT_", environ=env)
    assert from_env.delta_policy is DeltaPolicy.FASTEST

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--delta-policy", "fewest-bytes"])
    flags = {"delta_policy": args.delta_policy}
    from_flag = load_config(AgentConfig, env_prefix="KRILL_AGENT_", environ=env, flags=flags)
    assert from_flag.delta_policy is DeltaPolicy.FEWEST_BYTES

    with pytest.raises(ConfigError, match="delta_policy must be one of 'fastest', 'fewest-bytes'"):
        load_config(
            AgentConfig, env_prefix="KRILL_AGENT_", environ={"KRILL_AGENT_DELTA_POLICY": "cheapest"}
        )


def test_a_fresh_nodes_rebuild_rate_grows_with_the_cores_a_rebuild_gets() -> None:
    """Before any rebuild, a node assumes one worker's rate plus a third per further worker,
    up to apply_delta's 4: a 2-core node 53 MB/s of gzip tar, not one core's 40."""
    one = DEFAULT_REBUILD_RATES[RecipeKind.GZIP_GO]
    assert default_scale(1) == 1.0
    assert round(default_scale(2) * one / MB) == 53
    assert default_scale(64) == default_scale(4) < 4
    two_cores = Rates(rebuild=default_rebuilds(2))
    assert round(two_cores.rebuild[RecipeKind.GZIP_ZLIB].rate / MB) == 53
