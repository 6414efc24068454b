"""The agent pod's containerd steps: check containerd reads hosts.toml, remove ours on stop.

    containerd-hosts.py check CONFIG_TOML --root ROOT --config-path DIR
    containerd-hosts.py remove --dir DIR REGISTRY [REGISTRY ...]

``check`` runs before ``krill agent containerd-config`` writes the hosts.toml
files: containerd reads them only when its CRI registry ``config_path`` is set,
and silently ignores them otherwise, so the pod fails here, with the fix in its
log, instead of running an agent no pull ever reaches. CONFIG_TOML is the
node's path (``/etc/containerd/config.toml``); the node's filesystem is
mounted under ROOT, so a path P on the node is read at ROOT/P. Drop-in files
named by ``imports`` are read too (they override the main file, as in
containerd).

``remove`` runs when the agent stops (helm uninstall, a rollout): it deletes
the hosts.toml files of REGISTRY (``HOST`` or ``HOST=URL``) that
``krill agent containerd-config`` wrote (their first line says so), and
nothing else, so containerd pulls from the registries directly while no agent
runs on the node. A hosts.toml the operator had there before Krill's, which
containerd-config kept as ``hosts.toml.before-krill``, is put back.

Standard library only: the chart mounts it from a ConfigMap into the Krill
image and runs it with the image's Python.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tomllib
from pathlib import Path

MARKER = "# Written by `krill agent containerd-config`"
# Where the CRI plugin keeps its registry settings: config version 2
# (containerd 1.x) and version 3 (containerd 2.x).
REGISTRY_TABLES = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    3: ("plugins", "io.containerd.cri.v1.images", "registry"),
}


class CheckError(Exception):
    pass


def _node_path(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _table(doc: dict, keys: tuple[str, ...]) -> dict:
    for key in keys:
        doc = doc.get(key) or {}
        if not isinstance(doc, dict):
            return {}
    return doc


def _load(root: Path, path: str) -> dict:
    local = _node_path(root, path)
    try:
        return tomllib.loads(local.read_text())
    except FileNotFoundError:
        raise CheckError(
            f"containerd's config {path} is not on this node: set agent.containerdConfigFile "
            "to the file containerd reads (k3s: /var/lib/rancher/k3s/agent/etc/containerd/"
            "config.toml), or agent.checkContainerdConfig=false to skip this check"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise CheckError(f"containerd's config {path} is not valid TOML: {exc}") from None


def registry_settings(root: Path, config: str) -> tuple[int, dict, list[str]]:
    """The config's version, its CRI registry table (imports merged in), and notes."""
    doc = _load(root, config)
    version = int(doc.get("version", 1))
    if version not in REGISTRY_TABLES:
        raise CheckError(
            f"{config} is a version {version} containerd config; only versions 2 and 3 have "
            "config_path (containerd 1.5 or later): migrate it with `containerd config migrate`"
        )
    registry = dict(_table(doc, REGISTRY_TABLES[version]))
    notes = []
    for pattern in doc.get("imports", []):
        if not pattern.startswith("/"):
            pattern = str(Path(config).parent / pattern)
        matches = sorted(glob.glob(str(_node_path(root, pattern))))
        if not matches:
            notes.append(f"import {pattern} matches no file under the mounted {root}")
        for match in matches:
            imported = tomllib.loads(Path(match).read_text())
            registry.update(_table(imported, REGISTRY_TABLES[version]))
    return version, registry, notes


def check(root: Path, config: str, wanted: str) -> str:
    """Raise CheckError unless containerd reads hosts.toml files from ``wanted``."""
    version, registry, notes = registry_settings(root, config)
    table = ".".join(f'"{k}"' if "." in k else k for k in REGISTRY_TABLES[version])
    for note in notes:
        print(f"containerd-hosts: {note}", file=sys.stderr)
    config_path = registry.get("config_path", "")
    if not config_path:
        raise CheckError(
            f"containerd on this node ignores hosts.toml files: {config} sets no config_path "
            f'under [{table}]. Add config_path = "{wanted}" there and restart containerd '
            "(the agent would run, but no pull would reach it)"
        )
    paths = [p.rstrip("/") for p in str(config_path).split(":") if p]
    if wanted.rstrip("/") not in paths:
        raise CheckError(
            f"containerd reads hosts.toml files from {config_path} ({config}), but the chart "
            f"writes them to {wanted}: set agent.containerdConfigPath={paths[0]}"
        )
    if registry.get("mirrors"):
        print(
            f"containerd-hosts: {config} also has [{table}.mirrors], which containerd "
            "refuses alongside config_path: remove it",
            file=sys.stderr,
        )
    return f"containerd reads hosts.toml files from {wanted} ({config} version {version})"


def remove(directory: Path, registries: list[str]) -> list[Path]:
    """Delete the hosts.toml files of ``registries`` that Krill wrote; returns them."""
    removed = []
    for spec in registries:
        host = spec.partition("=")[0].strip()
        if not host or "/" in host or host.startswith("."):
            continue
        path = directory / host / "hosts.toml"
        try:
            first = path.read_text().splitlines()[:1]
        except (FileNotFoundError, NotADirectoryError):
            continue
        if first and first[0].startswith(MARKER):
            kept = path.with_name("hosts.toml.before-krill")
            if kept.is_file():
                kept.replace(path)  # the operator's own file, as it was before Krill's
            else:
                path.unlink()
            removed.append(path)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other files (certificates) live there too
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="containerd-hosts.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("config")
    p_check.add_argument("--root", type=Path, default=Path("/"))
    p_check.add_argument("--config-path", required=True)
    p_remove = sub.add_parser("remove")
    p_remove.add_argument("--dir", type=Path, required=True)
    p_remove.add_argument("registries", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            print(f"containerd-hosts: {check(args.root, args.config, args.config_path)}")
        except CheckError as exc:
            print(f"containerd-hosts: {exc}", file=sys.stderr)
            return 1
        return 0
    for path in remove(args.dir, args.registries):
        print(f"containerd-hosts: removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
