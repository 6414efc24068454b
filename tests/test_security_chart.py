"""The chart's security values (issue 19): Secrets for auth, node credentials, keys and TLS.

Rendered with Helm's own code (helm-python-sdk, as scripts/check-chart does),
checked against values.schema.json and validated strictly against the
Kubernetes schemas scripts/check-chart uses; then: every flag the containers
get exists in the CLI and points into a mounted Secret, the URLs between
components turn https with TLS, and the probes follow the scheme.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.test_chart_check import CHART, _containers, _subparsers

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

KUBE_VERSIONS = ("1.28.0", "1.37.0")
SECURED = {
    "security": {
        "authSecret": "krill-auth",
        "nodeCredentialsSecret": "krill-nodes",
        "announceKeysSecret": "krill-announce",
        "tls": {"secretName": "krill-tls", "tracker": True},
    }
}


def render(values: dict) -> list[dict]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate({**defaults, **values}, schema)
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values=values, name="krill", namespace="krill-system", is_install=True)
    return [
        doc
        for name, text in sorted(manifests.items())
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def workload(objects: list[dict], kind: str) -> dict:
    return next(o for o in objects if o["kind"] == kind)["spec"]["template"]["spec"]


def container_args(objects: list[dict], kind: str) -> dict[str, str]:
    args = workload(objects, kind)["containers"][0]["args"]
    return dict(a.split("=", 1) for a in args if a.startswith("--"))


def mounted(spec: dict, path: str) -> str:
    """The Secret mounted where ``path`` is; fails when none is."""
    container = spec["containers"][0]
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return str(volume["secret"]["secretName"])


@pytest.fixture(scope="module")
def secured() -> list[dict]:
    return render(SECURED)


def test_the_secured_chart_validates_strictly(secured: list[dict]) -> None:
    for obj in secured:
        if obj["kind"] == "ServiceMonitor":
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_each_security_flag_points_into_its_secret(secured: list[dict]) -> None:
    origin = container_args(secured, "StatefulSet")
    tracker = container_args(secured, "Deployment")
    agent = container_args(secured, "DaemonSet")
    expected = {
        "StatefulSet": {
            "--auth": "krill-auth", "--tls-cert": "krill-tls", "--tls-key": "krill-tls",
            "--announce-key": "krill-announce", "--tracker-ca": "krill-tls",
        },
        "Deployment": {
            "--ca": "krill-tls", "--tls-cert": "krill-tls", "--tls-key": "krill-tls",
            "--origin-credentials": "krill-nodes", "--announce-keys": "krill-announce",
        },
        "DaemonSet": {"--ca": "krill-tls", "--origin-credentials": "krill-nodes"},
    }  # fmt: skip
    for kind, flags in expected.items():
        args = container_args(secured, kind)
        for flag, secret in flags.items():
            assert mounted(workload(secured, kind), args[flag]) == secret, (kind, flag)
    assert origin["--tracker"].startswith("https://") and agent["--tracker"].startswith("https://")
    assert tracker["--origin"].startswith("https://") and agent["--origin"].startswith("https://")
    for kind in ("StatefulSet", "Deployment"):
        probe = workload(secured, kind)["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["scheme"] == "HTTPS"


def test_security_flags_exist_in_the_cli(secured: list[dict]) -> None:
    from krill.cli import build_parser

    for where, container in _containers(secured):
        if "command" in container:
            continue
        args = list(container["args"])
        parser = build_parser()
        while args and not args[0].startswith("-"):
            parser = _subparsers(parser).choices[args.pop(0)]
        accepted = {opt for action in parser._actions for opt in action.option_strings}
        assert not [a for a in args if a.split("=")[0] not in accepted], where


def test_without_security_values_nothing_changes() -> None:
    objects = render({})
    for kind in ("StatefulSet", "Deployment", "DaemonSet"):
        args = container_args(objects, kind)
        assert not {"--auth", "--ca", "--tls-cert", "--origin-credentials", "--tracker-ca"} & set(
            args
        )
        assert all(
            "secret" not in v or v["secret"]["secretName"] in {"", None} or v["name"] == "upstream"
            for v in workload(objects, kind)["volumes"]
        )
    assert container_args(objects, "DaemonSet")["--tracker"].startswith("http://")


def test_tls_without_the_tracker_flag_keeps_the_tracker_on_http() -> None:
    objects = render({"security": {"tls": {"secretName": "krill-tls"}}})
    tracker = container_args(objects, "Deployment")
    assert "--tls-cert" not in tracker and tracker["--ca"].endswith("ca.crt")
    assert "--tracker-ca" not in container_args(objects, "StatefulSet")
    assert container_args(objects, "DaemonSet")["--tracker"].startswith("http://")
    assert container_args(objects, "DaemonSet")["--origin"].startswith("https://")


def test_values_file_documents_every_security_key() -> None:
    text = Path(CHART / "values.yaml").read_text()
    for key in ("authSecret", "nodeCredentialsSecret", "announceKeysSecret", "secretName"):
        assert f"  {key}:" in text


@pytest.mark.parametrize("values", [{}, SECURED], ids=["defaults", "secured"])
def test_only_what_must_be_reachable_is_exposed(values: dict) -> None:
    """Inside the cluster only (no NodePort, LoadBalancer or Ingress); on the node's network
    the agent offers its peer port alone: its registry endpoint and control API stay on
    loopback, and only the agent shares the host's network."""
    objects = render(values)
    assert not [o for o in objects if o["kind"] == "Ingress"]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    for kind in ("StatefulSet", "Deployment"):
        spec = workload(objects, kind)
        assert not spec.get("hostNetwork")
        assert not [p for c in spec["containers"] for p in c.get("ports", []) if "hostPort" in p]
    agent = container_args(objects, "DaemonSet")
    assert agent["--registry-listen"].startswith("127.0.0.1:")
    assert agent["--listen"].startswith("127.0.0.1:")


def test_prometheus_scrapes_each_origin_once_and_https_services_over_https() -> None:
    """A review found every origin scraped twice (its two Services share the pods) and
    https services scraped over http; both stop here."""
    values = {**SECURED, "metrics": {"serviceMonitor": {"enabled": True}}}
    objects = render(values)
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")["spec"]
    services = [o for o in objects if o["kind"] == "Service"]
    selected = [
        s["metadata"]["name"] for s in services
        if s["metadata"]["labels"].get("krill/scrape") != "no"
        and all(s["metadata"]["labels"].get(k) == v
                for k, v in monitor["selector"]["matchLabels"].items())
    ]  # fmt: skip
    assert monitor["selector"]["matchExpressions"] == [
        {"key": "krill/scrape", "operator": "NotIn", "values": ["no"]}
    ]
    scraped_origin = [name for name in selected if name.startswith("krill-krill-origin")]
    assert scraped_origin == ["krill-krill-origin"]
    by_port = {e["port"]: e for e in monitor["endpoints"]}
    for port, server in (("registry", "krill-krill-origin"), ("http", "krill-krill-tracker")):
        assert by_port[port]["scheme"] == "https"
        assert by_port[port]["tlsConfig"] == {
            "ca": {"secret": {"name": "krill-tls", "key": "ca.crt"}}, "serverName": server,
        }
    plain = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    endpoints = next(o for o in plain if o["kind"] == "ServiceMonitor")["spec"]["endpoints"]
    assert all("scheme" not in e and "tlsConfig" not in e for e in endpoints)


def test_each_pod_mounts_only_the_secret_keys_it_reads(secured: list[dict]) -> None:
    """Agents run on every node: no server key and no tracker credentials there."""
    def items(kind: str) -> dict[str, list[str] | None]:
        volumes = workload(secured, kind)["volumes"]
        return {
            v["secret"]["secretName"]: [i["key"] for i in v["secret"].get("items", [])] or None
            for v in volumes if "secret" in v
        }  # fmt: skip
    assert items("DaemonSet") == {"krill-tls": ["ca.crt"], "krill-nodes": ["agent.toml"]}
    tracker = items("Deployment")
    assert tracker["krill-tls"] == ["ca.crt", "tls.crt", "tls.key"]  # tls.tracker is on
    assert tracker["krill-nodes"] == ["tracker.toml"]
    assert tracker["krill-announce"] == ["announce-keys"]
    origin = items("StatefulSet")
    assert origin["krill-tls"] is None and origin["krill-auth"] is None  # the whole Secrets
    assert origin["krill-announce"] == ["origin-key"]
