"""The herd benchmark's figures, and the summary it prints at the end of a run."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field

from herd_agents import AgentRun
from herd_common import percentile
from herd_memory import PreparedMachine

GiB = 1024**3


@dataclass
class Figures:
    """What one run measured; ``report`` prints it (text, then one JSON line)."""

    args: argparse.Namespace
    limit: float  # seconds: blob size / link rate
    size: int  # layer bytes
    krill: list[float] = field(default_factory=list)  # seconds per node
    agents: AgentRun | None = None  # real-agent mode only
    node_cpu: float = math.nan  # CPU-seconds of the agents (or engine drivers) pulling
    egress: float = math.nan  # origin host's sent bytes during the Krill pull / size
    plain: list[float] = field(default_factory=list)  # docker-registry, seconds per node
    curl_cpu: float = math.nan  # CPU-seconds of every curl of the registry pull
    registry_cpu: float = math.nan  # CPU-seconds of docker-registry during its pull
    machine: PreparedMachine | None = None  # herd_memory: what was done before each "go"

    @property
    def pulled_gib(self) -> float:
        return self.args.nodes * self.size / GiB

    def report(self) -> None:
        args, limit = self.args, self.limit
        s50, s99 = percentile(self.krill, 50), percentile(self.krill, 99)
        plain = self.plain or [math.nan]
        p50, p99 = percentile(plain, 50), percentile(plain, 99)
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        mode = "engine-only" if args.engine_only else "agents"
        lines = [
            f"mode={mode} nodes={args.nodes} rate={args.rate_mbit}Mbit/s mtu={args.mtu} "
            f"tcp={args.tcp_cc} size={args.size_mib}MiB claims={'off' if args.no_claims else 'on'} "
            f"limit={limit:.2f}s cpus={os.cpu_count()} load(1/5/15 min)={load}",
            f"krill:    p50 {s50:7.2f}s = {s50 / limit:5.2f}x limit   "
            f"p99 {s99:7.2f}s = {s99 / limit:5.2f}x limit   (goals 1.15x / 1.5x)",
            f"origin egress during the krill pull: {self.egress:.2f}x blob   (goal <= 1.5x)",
            f"registry: p50 {p50:7.2f}s = {p50 / limit:5.2f}x limit   "
            f"p99 {p99:7.2f}s = {p99 / limit:5.2f}x limit",
            f"speed-up over plain registry: p50 {p50 / s50:.1f}x, p99 {p99 / s99:.1f}x "
            "(goal >= 10x)",
            f"CPU-seconds per GiB pulled: {'engine drivers' if args.engine_only else 'agents'} "
            f"{self.node_cpu / self.pulled_gib:.2f} (user+sys, 'go' to the last node done) | "
            f"curl from docker-registry {self.curl_cpu / self.pulled_gib:.2f} + "
            f"docker-registry {self.registry_cpu / self.pulled_gib:.2f}",
            *(
                self.machine.lines(["krill"] if args.skip_registry else ["krill", "registry"])
                if self.machine is not None
                else []
            ),
        ]
        record: dict[str, object] = {
            "mode": mode, "krill_s": sorted(self.krill), "registry_s": sorted(self.plain),
            "origin_egress_x": self.egress, "limit_s": limit, "load": os.getloadavg(),
            "node_cpu_s_per_gib": self.node_cpu / self.pulled_gib,
            "curl_cpu_s_per_gib": self.curl_cpu / self.pulled_gib,
            "registry_cpu_s_per_gib": self.registry_cpu / self.pulled_gib,
            "backing_step_us": self.machine.step_us() if self.machine is not None else {},
        }
        if self.agents is not None:
            lines += self._agent_lines(record)
        print("\n".join(lines))
        print(json.dumps(record))

    def _agent_lines(self, record: dict[str, object]) -> list[str]:
        assert self.agents is not None
        pulls = self.agents.pulls
        first = [p.first_byte for p in pulls]
        tail = [p.after_last_piece for p in pulls]
        start = [p.to_download for p in pulls]
        middle = [p.download for p in pulls]
        sources = sorted({p.source for p in pulls})
        loop = self.agents.loop_cpu / self.pulled_gib
        system = self.agents.system_cpu / self.pulled_gib
        record.update(
            first_byte_s=sorted(first), last_piece_to_last_byte_s=sorted(tail),
            go_to_download_started_s=sorted(start), download_s=sorted(middle),
            served_from=sources, agent_loop_cpu_s_per_gib=loop,
            agent_system_cpu_s_per_gib=system,
            tracker_announces=self.agents.announces,
        )
        return [
            f"of the agents' CPU per GiB: {loop:.2f} in their event-loop threads (Python), "
            f"{self.node_cpu / self.pulled_gib - loop:.2f} in other threads (libtorrent, "
            "reads and hashing in worker threads); "
            f"{self.node_cpu / self.pulled_gib - system:.2f} user, {system:.2f} system",
            f"'go' to first byte: p50 {percentile(first, 50):.2f}s, "
            f"p99 {percentile(first, 99):.2f}s",
            f"'go' to the agent's swarm.download_started: p50 {percentile(start, 50):.2f}s, "
            f"p99 {percentile(start, 99):.2f}s; the download itself (started to done): "
            f"p50 {percentile(middle, 50):.2f}s, p99 {percentile(middle, 99):.2f}s",
            f"last piece (agent's swarm.download_done) to last byte: "
            f"p50 {percentile(tail, 50):.3f}s, p99 {percentile(tail, 99):.3f}s",
            f"agents served from: {', '.join(sources)}; the tracker answered "
            f"{self.agents.announces:.0f} announces during the pull",
        ]
