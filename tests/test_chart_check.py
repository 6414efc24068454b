"""The Helm chart, checked by Helm's own code (scripts/check-chart) and against the CLI.

scripts/check-chart renders the chart with every documented variant, lints it
and validates each object strictly; these tests run it, prove it fails on a
broken template and on values the schema forbids, and read its rendered
objects to check what only Krill knows: every flag a container passes exists
in the CLI, every metric the dashboard plots is one a service exports, and the
agent pod's containerd script does what the chart relies on.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from krill.agent.config import AgentConfig
from krill.agent.containerd_config import parse_registry_spec, write_hosts_files
from krill.agent.metrics import AgentMetrics
from krill.cli import build_parser
from krill.origin.config import load_origin_config
from krill.origin.deltas import DeltaMetrics
from krill.origin.metrics import OriginMetrics
from krill.origin.storage_url import parse_storage_url
from krill.s3backend import S3Location
from krill.tracker.server import TrackerMetrics

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "krill"
CHECK_CHART = ROOT / "scripts" / "check-chart"


def run_check(
    chart: Path, output: Path | None = None, variant: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHECK_CHART), "--chart", str(chart)]
    if variant is not None:
        cmd += ["--variant", variant]
    if output is not None:
        cmd += ["--output", str(output)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every variant's objects, from one passing run of scripts/check-chart."""
    out = tmp_path_factory.mktemp("rendered")
    proc = run_check(CHART, out)
    assert proc.returncode == 0, f"check-chart failed:\n{proc.stdout}\n{proc.stderr}"
    assert "passes" in proc.stdout
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def test_every_variant_renders_lints_and_validates(rendered: dict[str, list[dict]]) -> None:
    assert {"default", "redis-tracker", "monitoring", "network-policy", "everything"} <= set(
        rendered
    )
    kinds = {o["kind"] for o in rendered["everything"]}
    assert {
        "StatefulSet",
        "Deployment",
        "DaemonSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
        "Ingress",
        "ConfigMap",
        "Service",
    } <= kinds


def _copy_chart(tmp_path: Path) -> Path:
    chart = tmp_path / "krill"
    shutil.copytree(CHART, chart)
    return chart


def test_a_broken_template_fails_the_check(tmp_path: Path) -> None:
    chart = _copy_chart(tmp_path)
    tracker = chart / "templates" / "tracker.yaml"
    # A field Kubernetes does not have: only strict validation sees it.
    policy = "          imagePullPolicy:"
    typo = "          imagePulPolicy: Always\n"
    tracker.write_text(tracker.read_text().replace(policy, typo + policy, 1))
    proc = run_check(chart, variant="default")
    assert proc.returncode == 1
    assert "imagePulPolicy" in proc.stderr


def test_a_template_that_does_not_render_fails_the_check(tmp_path: Path) -> None:
    chart = _copy_chart(tmp_path)
    origin = chart / "templates" / "origin.yaml"
    text = origin.read_text().replace("{{ .Values.origin.port }}", "{{ .Values.origin.port", 1)
    origin.write_text(text)
    proc = run_check(chart, variant="default")
    assert proc.returncode == 1
    assert "does not render" in proc.stderr


def test_a_value_the_schema_forbids_fails_the_check(tmp_path: Path) -> None:
    chart = _copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("registryPort: 7401", 'registryPort: "7401"'))
    proc = run_check(chart, variant="default")
    assert proc.returncode == 1
    assert "values.yaml does not match values.schema.json" in proc.stderr
    assert "/agent/registryPort" in proc.stderr


def _containers(objects: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if spec:
            for c in spec.get("initContainers", []) + spec["containers"]:
                out.append((f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", c))
    return out


def _subparsers(parser):  # argparse keeps them in a private action class
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


def test_every_krill_container_passes_flags_the_cli_accepts(
    rendered: dict[str, list[dict]],
) -> None:
    checked = 0
    for variant, objects in rendered.items():
        for where, container in _containers(objects):
            if "command" in container:
                continue  # not the krill entrypoint (the containerd check script)
            args = list(container["args"])
            parser = build_parser()
            while args and not args[0].startswith("-"):
                parser = _subparsers(parser).choices[args.pop(0)]
            accepted = {opt for action in parser._actions for opt in action.option_strings}
            unknown = [a.split("=")[0] for a in args if a.split("=")[0] not in accepted]
            assert not unknown, f"{variant}: {where}: krill has no {unknown}"
            checked += 1
    assert checked >= 4 * len(rendered)


def test_origins_on_object_storage_get_its_settings_and_credentials(
    rendered: dict[str, list[dict]],
) -> None:
    """origin.storage reaches the origin as settings krill loads (flags and KRILL_ORIGIN_
    env), the credentials only as references to the Secret; on the volume, no S3 at all."""
    origin = next(
        o
        for o in rendered["object-storage"]
        if o["kind"] == "StatefulSet" and o["metadata"]["name"].endswith("-origin")
    )
    assert origin["spec"]["replicas"] == 3
    container = origin["spec"]["template"]["spec"]["containers"][0]
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {name: ref["name"] for name, ref in secret_env.items()} == {
        "AWS_ACCESS_KEY_ID": "krill-s3",
        "AWS_SECRET_ACCESS_KEY": "krill-s3",
        "AWS_SESSION_TOKEN": "krill-s3",
    }
    assert secret_env["AWS_SESSION_TOKEN"]["optional"] is True
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    args = [a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a]
    wanted = ("storage", "s3-region", "replicas", "replica-url")
    flags = {k.replace("-", "_"): v for k, v in args if k in wanted}
    config = load_origin_config(flags=flags, environ=environ)
    # Rendezvous over the ready pods of the headless Service; $(POD_IP) set by Kubernetes.
    assert config.replicas == "dns+http://krill-krill-origin-replicas.krill-system.svc:5000"
    assert config.replica_url == "http://$(POD_IP):5000"
    assert config.storage == "s3://krill/prod?endpoint=http://minio.minio:9000"
    assert config.s3_region == "eu-west-1"
    assert config.local_cache_max_bytes == 100 << 30
    location = parse_storage_url(config.storage, config.s3_endpoint, config.s3_region)
    assert location == S3Location(URL("http://minio.minio:9000/"), "krill", "prod", "eu-west-1")
    agent = next(o for o in rendered["object-storage"] if o["kind"] == "DaemonSet")
    agent_args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    origin_flag = next(a for a in agent_args if a.startswith("--origin="))
    agent_config = AgentConfig(origin=origin_flag.split("=", 1)[1])
    # Agents rank the replicas of the same headless Service (each blob's owner first).
    assert agent_config.origin_dns == config.replicas.removeprefix("dns+")
    plain = next(
        o
        for o in rendered["default"]
        if o["kind"] == "StatefulSet" and o["metadata"]["name"].endswith("-origin")
    )
    plain_container = plain["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith(("--storage", "--s3")) for a in plain_container["args"])
    assert not any(e["name"].startswith("AWS_") for e in plain_container.get("env", []))


def test_every_workload_has_probes_limits_and_a_security_context(
    rendered: dict[str, list[dict]],
) -> None:
    for where, container in _containers(rendered["everything"]):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert container["resources"]["limits"]["memory"], where
    for obj in rendered["default"]:
        if obj["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
            main = obj["spec"]["template"]["spec"]["containers"][0]
            for probe, path in (
                ("startupProbe", "/health"),
                ("livenessProbe", "/health"),
                ("readinessProbe", "/ready"),
            ):
                assert main[probe]["httpGet"]["path"] == path, (obj["kind"], probe)
    agent = next(o for o in rendered["default"] if o["kind"] == "DaemonSet")["spec"]["template"]
    assert agent["spec"]["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in agent["spec"]["tolerations"]


def test_every_service_logs_in_the_chosen_format(rendered: dict[str, list[dict]]) -> None:
    for variant, expected in (("default", "text"), ("everything", "json")):
        services = [c for _where, c in _containers(rendered[variant]) if "command" not in c]
        assert len(services) >= 3, variant
        for container in services:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["KRILL_LOG_FORMAT"] == expected, (variant, container["name"])


def test_the_image_defaults_to_what_build_image_makes(rendered: dict[str, list[dict]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = (CHART / "Chart.yaml").read_text()
    assert re.search(rf'^appVersion: "{re.escape(version)}"$', chart, re.M), (
        "Chart.yaml appVersion must be pyproject's version: build-image tags krill:<version>"
    )
    images = {c["image"] for _, c in _containers(rendered["default"])}
    assert images == {f"krill:{version}"}


def test_the_dashboard_plots_only_metrics_the_services_export() -> None:
    registry = CollectorRegistry()
    DeltaMetrics(registry)
    exported = set()
    for reg in (
        registry,
        OriginMetrics().registry,
        AgentMetrics().registry,
        TrackerMetrics().registry,
    ):
        for family in reg.collect():
            exported.add(family.name)
            exported |= {f"{family.name}_total", f"{family.name}_created"}
            if family.type == "histogram":
                exported |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    dashboard = json.loads((CHART / "dashboards" / "krill.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bkrill_[a-z_]+", e)}
    assert used, "the dashboard plots nothing"
    assert used <= exported, f"not exported by any service: {sorted(used - exported)}"
    prefixes = {name.split("_")[1] for name in used}
    assert prefixes == {"origin", "agent", "tracker"}


# --- the agent pod's containerd script (helm/krill/files/containerd-hosts.py) ---------------


def _hosts_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "containerd_hosts", CHART / "files" / "containerd-hosts.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CERTS = "/etc/containerd/certs.d"
V2_WITH_PATH = f"""version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{CERTS}"
"""


@pytest.mark.parametrize(
    ("config", "files", "error"),
    [
        (V2_WITH_PATH, {}, None),
        (
            'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n'
            f'  config_path = "/etc/docker/certs.d:{CERTS}"\n',
            {},
            None,
        ),
        (
            'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n',
            {"conf.d/10-registry.toml": V2_WITH_PATH},
            None,
        ),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "x"\n',
            {},
            "sets no config_path",
        ),
        ("", {}, "only versions 2 and 3"),
        (
            V2_WITH_PATH.replace(CERTS, "/etc/other.d"),
            {},
            "set agent.containerdConfigPath=/etc/other.d",
        ),
        (None, {}, "is not on this node"),
    ],
    ids=["v2", "v3-list", "imports", "unset", "v1", "elsewhere", "missing"],
)
def test_the_containerd_check_fails_loudly_unless_containerd_reads_hosts_toml(
    tmp_path: Path, config: str | None, files: dict[str, str], error: str | None
) -> None:
    script = _hosts_script()
    etc = tmp_path / "etc" / "containerd"
    etc.mkdir(parents=True)
    if config is not None:
        (etc / "config.toml").write_text(config)
    for name, text in files.items():
        (etc / name).parent.mkdir(parents=True, exist_ok=True)
        (etc / name).write_text(text)
    argv = ["check", "/etc/containerd/config.toml", "--root", str(tmp_path), "--config-path", CERTS]
    if error is None:
        assert script.main(argv) == 0
    else:
        with pytest.raises(script.CheckError, match=re.escape(error)):
            script.check(tmp_path, "/etc/containerd/config.toml", CERTS)
        assert script.main(argv) == 1


def test_stopping_removes_only_the_hosts_toml_files_krill_wrote(tmp_path: Path) -> None:
    script = _hosts_script()
    specs = [parse_registry_spec(s) for s in ("docker.io", "registry.local:5000=http://r:5000")]
    write_hosts_files(specs, "127.0.0.1:7401", tmp_path)
    (tmp_path / "docker.io" / "ca.crt").write_text("a certificate of the user's")
    (tmp_path / "quay.io").mkdir()
    (tmp_path / "quay.io" / "hosts.toml").write_text('server = "https://quay.io"\n')
    argv = [
        "remove",
        "--dir",
        str(tmp_path),
        "docker.io",
        "registry.local:5000=http://r:5000",
        "quay.io",
        "ghcr.io",
    ]
    assert script.main(argv) == 0
    assert not (tmp_path / "docker.io" / "hosts.toml").exists()
    assert (tmp_path / "docker.io" / "ca.crt").exists()
    assert not (tmp_path / "registry.local:5000").exists()
    assert (tmp_path / "quay.io" / "hosts.toml").exists(), "a file krill did not write is kept"


def test_an_operators_hosts_toml_is_kept_while_the_agent_runs_and_put_back_after(
    tmp_path: Path,
) -> None:
    """containerd-config overwrote a hand-written hosts.toml (a corporate mirror, a CA)
    with no copy (new-user review, stop 39): now it is kept, and restored on stop."""
    own = 'server = "https://mirror.corp"\n[host."https://mirror.corp"]\n  ca = "/etc/corp.pem"\n'
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text(own)
    specs = [parse_registry_spec("docker.io")]
    first = write_hosts_files(specs, "127.0.0.1:7401", tmp_path)
    kept = tmp_path / "docker.io" / "hosts.toml.before-krill"
    assert [(w.path.name, w.kept) for w in first] == [("hosts.toml", kept)]
    assert kept.read_text() == own
    assert "127.0.0.1:7401" in (tmp_path / "docker.io" / "hosts.toml").read_text()
    again = write_hosts_files(specs, "127.0.0.1:7401", tmp_path)  # the agent restarts
    assert [w.kept for w in again] == [None], "Krill's own file is rewritten, not kept"
    assert sorted(p.name for p in (tmp_path / "docker.io").iterdir()) == [
        "hosts.toml", "hosts.toml.before-krill",
    ]
    assert _hosts_script().main(["remove", "--dir", str(tmp_path), "docker.io"]) == 0
    assert (tmp_path / "docker.io" / "hosts.toml").read_text() == own
    assert not kept.exists()
