"""The herd benchmark's default mode: real ``krill agent`` processes, pulled as containerd pulls.

Each node namespace runs ``krill agent`` with README.md's flags ("Running a
cluster": control API on 0.0.0.0:7400, registry endpoint on 127.0.0.1:7401,
peer port 6882) and the chart's config file (``helm/krill/values.yaml``,
``agent.config``). A client driver per node (``--client`` mode of
``bench_herd.py``, started and warmed up before "go") then does what
containerd does against its mirror: ``GET /v2/<repo>/manifests/<tag>``,
then ``GET /v2/<repo>/blobs/<digest>`` of the layer, body counted and
dropped (``benchlib.timed_get``: a general HTTP client costs more CPU per
byte than the agent under test).

What it measures beyond the engine-only mode: the agent's CPU (user + sys
of the agent processes, from /proc, from "go" until every node has the
blob, per GiB the nodes pulled), the time from "go" to the first body byte,
and from the agent's ``swarm.download_done`` (every piece verified and the
blob published; the nearest logged event to the last piece) to the client's
last byte.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib import cpu_seconds, timed_get
from herd_common import (
    AGENT_CONTROL_PORT,
    AGENT_PEER_PORT,
    AGENT_REGISTRY_PORT,
    CLUSTER,
    REPOSITORY,
    TAG,
    LinkSampler,
    Processes,
    agents_start_timeout,
    cpu_busy,
    cpu_times,
    driver,
    emit,
    host_ns,
    in_ns,
    krill,
    log,
    origin_url,
    read_line,
    tracker_url,
)

# helm/krill/values.yaml, agent.config: what the chart writes to the agent's --config file.
CHART_AGENT_CONFIG = "cache_budget = 21474836480\nswarm_deadline = 5.0\n"
MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
))


@dataclass(frozen=True)
class NodePull:
    """One node's pull, in seconds from "go"."""

    seconds: float  # to the last body byte
    first_byte: float  # to the first body byte of the layer
    after_last_piece: float  # from the agent's swarm.download_done to the last byte
    source: str  # where the agent's bytes came from (its served-bytes metric)
    to_download: float = float("nan")  # "go" to the agent's swarm.download_started
    download: float = float("nan")  # swarm.download_started to swarm.download_done


@dataclass(frozen=True)
class AgentRun:
    pulls: list[NodePull]
    agent_cpu: float  # user + sys seconds of every agent, "go" until all are done
    loop_cpu: float  # of which their main threads (the event loop: all Python but workers)
    system_cpu: float = float("nan")  # of which in the kernel (sys), every thread
    announces: float = float("nan")  # announces the tracker answered, "go" until all are done


def agent_command(index: int, work: Path, origins: str = "", label: str = "") -> list[str]:
    """README's agent command (addresses and data dir are this cluster's) + the chart's config.

    ``origins``: the ``--origin`` value (default the one origin); ``label`` tells the
    files of one run's agents from another's.
    """
    config = work / f"agent{label}{index}.toml"
    config.write_text(CHART_AGENT_CONFIG)
    return krill(
        "agent",
        "--listen", f"0.0.0.0:{AGENT_CONTROL_PORT}",
        "--registry-listen", f"127.0.0.1:{AGENT_REGISTRY_PORT}",
        "--data", str(work / f"agent{label}{index}"),
        "--tracker", tracker_url(),
        "--origin", origins or origin_url(),
        "--peer-port", str(AGENT_PEER_PORT),
        "--config", str(config),
        "--log-level", "info",
    )


def agents_pull(
    procs: Processes,
    work: Path,
    nodes: int,
    profile: bool = False,
    *,
    origins: str = "",
    repository: str = REPOSITORY,
    label: str = "",
    stop_agents: bool = False,
    before_go: Callable[[], None] = lambda: None,
) -> AgentRun:
    """``profile``: py-spy samples agent 1 from "go" until its client is done (--profile).

    ``origins``, ``label``: as ``agent_command``; ``repository``: the image pulled;
    ``stop_agents``: stop the agents once measured (so another pull can start its own);
    ``before_go``: run once every agent and client is ready, just before "go" (herd_memory).
    """
    hosts = range(1, nodes + 1)
    agents = {
        i: procs.start(
            in_ns(host_ns(i), *agent_command(i, work, origins, label)),
            work / f"agent{label}{i}.log",
        )
        for i in hosts
    }
    timeout = agents_start_timeout(nodes)
    for i in hosts:
        CLUSTER.wait_http(i, f"http://127.0.0.1:{AGENT_CONTROL_PORT}/health", timeout=timeout)
    clients = {
        i: procs.start(
            in_ns(host_ns(i), *driver("--client", "--repository", repository)),
            work / f"client{label}{i}.log",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        for i in hosts
    }
    for client in clients.values():  # each says "ready" once its imports are done
        if read_line(client) != {"ready": True}:
            raise RuntimeError("a client driver failed to start; see its log")
    before_go()
    log(f"{nodes} agents and clients ready; go")
    cpu_before = {i: cpu_seconds(agent.pid) for i, agent in agents.items()}
    loop_before = {i: thread_cpu(agent.pid) for i, agent in agents.items()}
    system_before = {i: system_cpu(agent.pid) for i, agent in agents.items()}
    profiler = start_profiler(procs, agents[1].pid, work) if profile else None
    sampler = LinkSampler(nodes + 1)
    sampler.start()
    machine_before = cpu_times()
    announces_before = tracker_announces()
    for client in clients.values():
        assert client.stdin is not None
        client.stdin.write("go\n")
        client.stdin.flush()
    results = {i: read_line(client) for i, client in clients.items()}
    agent_cpu = sum(cpu_seconds(agents[i].pid) - cpu_before[i] for i in hosts)
    loop_cpu = sum(thread_cpu(agents[i].pid) - loop_before[i] for i in hosts)
    system = sum(system_cpu(agents[i].pid) - system_before[i] for i in hosts)
    announces = tracker_announces() - announces_before
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
        profiler.wait(60)
        log_profile(work / "agent1.pyspy")
    busy = cpu_busy(machine_before, cpu_times())
    sampler.stop()
    log("origin egress Mbit/s per second: " + " ".join(f"{v:.0f}" for v in sampler.rates(0)))
    # A node's downlink is its limit; its uplink carries what it forwards to its peers,
    # which a herd needs busy (N - 1) / N of the pull (docs/benchmarks.md, the model).
    for direction, received in (("ingress", True), ("egress", False)):
        log(f"node {direction} Mbit/s per second, mean of the nodes: "
            + " ".join(f"{v:.0f}" for v in sampler.mean_rates(hosts, received)))
    log(f"machine CPU busy during the pull: {busy:.0%}")
    pulls = [node_pull(i, results[i], work, label) for i in hosts]
    for client in clients.values():
        assert client.stdin is not None
        client.stdin.close()
    if stop_agents:
        for proc in [*clients.values(), *agents.values()]:
            proc.terminate()
        for proc in [*clients.values(), *agents.values()]:
            proc.wait(30)
    return AgentRun(pulls, agent_cpu, loop_cpu, system, announces)


def thread_cpu(pid: int) -> float:
    """User + sys CPU-seconds of a process's main thread (its event loop), from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu(pid: int) -> float:
    """System (kernel) CPU-seconds of a process, every thread, from /proc.

    Kept apart because on this VM its share moves with the machine (first touches
    of page-cache pages the host took back, docs/profile-agent.md) while user time
    follows the agent's code: the steadier figure when comparing two trees.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def start_profiler(procs: Processes, pid: int, work: Path) -> subprocess.Popen[str]:
    """py-spy sampling every Python thread of ``pid`` with native frames, 100 times a second
    (native frames need it to pause the process for each sample: a cost, so agent 1 only)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise RuntimeError(f"--profile needs py-spy ({py_spy}): pip install py-spy")
    return procs.start(
        [str(py_spy), "record", "--pid", str(pid), "--rate", "100", "--native",
         "--format", "raw", "--output", str(work / "agent1.pyspy")],
        work / "py-spy.log",
    )


# With native frames py-spy also samples threads blocked in these (its idle filter
# does not see them): waits, not work, so they are left out of the profile.
IDLE_FRAMES = frozenset({
    "_queue_SimpleQueue_get", "epoll_wait", "EpollSelector.select", "pthread_cond_wait",
    "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "__futex_abstimed_wait_common",
})


def log_profile(path: Path, top: int = 25) -> None:
    """The functions agent 1 spent its busy samples in (self time, then inclusive)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (", 1)[0] for frame in stack.split(";")]
        if IDLE_FRAMES.intersection(frames):
            continue
        samples = int(count)
        total += samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    for title, table in (("self", own), ("inclusive", inclusive)):
        log(f"agent 1 profile, {title} time, top {top} of {total} busy samples ({path}):")
        for frame, samples in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            log(f"  {samples / total:6.1%}  {frame}")


def node_pull(index: int, result: dict[str, Any], work: Path, label: str = "") -> NodePull:
    if "error" in result:
        raise RuntimeError(f"node {index}: {result['error']}")
    go, last_byte = float(result["go_epoch"]), float(result["last_byte_epoch"])
    log_path = work / f"agent{label}{index}.log"
    started = logged_epoch(log_path, "swarm.download_started")
    done = logged_epoch(log_path, "swarm.download_done")
    nan = float("nan")
    return NodePull(
        seconds=last_byte - go,
        first_byte=float(result["first_byte"]),
        after_last_piece=nan if done is None else last_byte - done,
        source=served_from(index),
        to_download=nan if started is None else started - go,
        download=nan if started is None or done is None else done - started,
    )


def logged_epoch(path: Path, event: str) -> float | None:
    """When an agent logged ``event`` first (its lines start with an ISO-8601 UTC time)."""
    for line in path.read_text().splitlines():
        if f" {event} " in line:
            return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()
    return None


def tracker_announces() -> float:
    """Every announce the tracker has answered (its metric, all events and results), from h0.

    The scaling model of docs/benchmarks.md grows the tracker's load from it.
    """
    text = CLUSTER.run(0, "curl", "-sS", f"{tracker_url()}/metrics").stdout
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("krill_tracker_announces_total{")
    )


def served_from(index: int) -> str:
    """The agent's served-bytes metric by source, e.g. "swarm" or "swarm+origin"."""
    text = CLUSTER.run(
        index, "curl", "-sS", f"http://127.0.0.1:{AGENT_CONTROL_PORT}/metrics"
    ).stdout
    sources = [
        line.split('source="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("krill_agent_served_bytes_total{") and float(line.split()[-1]) > 0
    ]
    return "+".join(sorted(sources)) or "none"


# ---- the per-node client driver (runs inside a node namespace) ----


async def client_main(args: argparse.Namespace) -> int:
    """Resolve the tag, then stream the layer, as containerd does; report times from "go"."""
    import aiohttp

    base = f"http://127.0.0.1:{AGENT_REGISTRY_PORT}/v2/{args.repository}"
    async with aiohttp.ClientSession() as http:
        # The driver stands in for containerd, so its own cost should be small: with
        # Python's cyclic GC on, collections were a third of its CPU during the pull
        # (perf, 2026-12-07). It lives seconds and leaks nothing worth collecting.
        gc.freeze()
        gc.disable()
        emit({"ready": True})
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        go_epoch, go = time.time(), time.perf_counter()
        try:
            async with http.get(
                f"{base}/manifests/{TAG}", headers={"Accept": MANIFEST_TYPES}
            ) as response:
                response.raise_for_status()
                manifest = json.loads(await response.read())
            layer = manifest["layers"][0]["digest"]
            started = time.perf_counter()
            size, first, _ = await timed_get(f"{base}/blobs/{layer}")
        except (aiohttp.ClientError, OSError, RuntimeError, KeyError) as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        emit({
            "go_epoch": go_epoch,
            "last_byte_epoch": time.time(),
            "first_byte": started - go + first,
            "bytes": size,
        })
        await asyncio.to_thread(sys.stdin.read)  # EOF: the bench is done
    return 0
