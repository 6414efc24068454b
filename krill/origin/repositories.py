"""Which blobs, manifests and tags each repository has, on disk next to the blob store.

Bytes live once in the content-addressed ``BlobStore``; a repository only
holds links to them, as a real registry does::

    repositories/<name>/_layers/<hex>      blob linked into the repository (empty file)
    repositories/<name>/_manifests/<hex>   manifest in the repository (holds its media type)
    repositories/<name>/_tags/<tag>        holds the manifest digest the tag points to
    repositories/<name>/_referrers/<subject hex>/<hex>
                                           a manifest whose ``subject`` is that digest
                                           (holds its descriptor, for the referrers API)
    repositories/<name>/_access/<hex>      a mirror's last serving of that manifest (mtime)

Writes that replace a file's content are atomic and fsynced (blocking:
callers on the event loop run ``link_manifest``/``set_tag`` in a thread).

Per-repository membership means a blob pushed to ``a/app`` is not served as
``b/app``'s until it is pushed or mounted there; the bytes are shared, so a
mount or a second push costs nothing. Names and tags are validated before
they become paths (the spec's grammar cannot produce ``..``, and components
never start with ``_``, so links cannot collide with repositories).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from krill.atomicfile import write_atomic
from krill.digests import Digest, DigestError
from krill.names import validate_name, validate_tag

_LAYERS = "_layers"
_MANIFESTS = "_manifests"
_TAGS = "_tags"
_REFERRERS = "_referrers"
_ACCESS = "_access"


class Repositories:
    """Links from repositories to blobs, manifests and tags."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, repo: str) -> Path:
        """The repository's directory (the name is validated first)."""
        return self.root / validate_name(repo)

    def exists(self, repo: str) -> bool:
        return any((self.dir(repo) / kind).is_dir() for kind in (_LAYERS, _MANIFESTS, _TAGS))

    # blobs

    def link_blob(self, repo: str, digest: Digest) -> None:
        """Link (or touch the link: its mtime is when the repository last took the blob in).

        Garbage collection keeps a blob linked within its grace period even when
        no manifest names it yet (an upload or mount whose manifest is coming).
        """
        path = self.dir(repo) / _LAYERS / digest.hex
        try:
            path.touch()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def has_blob(self, repo: str, digest: Digest) -> bool:
        return (self.dir(repo) / _LAYERS / digest.hex).exists()

    def unlink_blob(self, repo: str, digest: Digest) -> bool:
        return _unlink(self.dir(repo) / _LAYERS / digest.hex)

    # manifests

    def link_manifest(self, repo: str, digest: Digest, media_type: str) -> None:
        write_atomic(self.dir(repo) / _MANIFESTS / digest.hex, media_type.encode())

    def manifest_media_type(self, repo: str, digest: Digest) -> str | None:
        """The stored media type, or None when the manifest is not in the repository."""
        try:
            return (self.dir(repo) / _MANIFESTS / digest.hex).read_text()
        except FileNotFoundError:
            return None

    def unlink_manifest(self, repo: str, digest: Digest) -> bool:
        return _unlink(self.dir(repo) / _MANIFESTS / digest.hex)

    def manifests(self, repo: str) -> list[Digest]:
        """Every manifest linked in ``repo``."""
        return [digest for digest, _mtime in _entries(self.dir(repo) / _MANIFESTS)]

    def manifest_links(self, repo: str) -> list[tuple[Digest, float]]:
        """Each manifest linked in ``repo`` with when it was linked (mtime)."""
        return _entries(self.dir(repo) / _MANIFESTS)

    def blob_links(self, repo: str) -> list[tuple[Digest, float]]:
        """Each blob linked in ``repo`` with when it was last linked (mtime)."""
        return _entries(self.dir(repo) / _LAYERS)

    def tag_times(self, repo: str) -> list[tuple[str, float]]:
        """Each tag of ``repo`` with when it last moved (mtime)."""
        found = []
        for tag in self.tags(repo):
            with contextlib.suppress(FileNotFoundError):
                found.append((tag, (self.dir(repo) / _TAGS / tag).stat().st_mtime))
        return found

    def blob_linked_since(self, repo: str, digest: Digest, since: float) -> bool:
        """Whether ``digest`` was linked into ``repo`` (pushed, mounted, fetched) since then."""
        try:
            return (self.dir(repo) / _LAYERS / digest.hex).stat().st_mtime >= since
        except FileNotFoundError:
            return False

    def stamp_access(self, repo: str, digest: Digest) -> None:
        """Record (as an mtime) that the manifest was just served (a mirror's cache retention)."""
        path = self.dir(repo) / _ACCESS / digest.hex
        try:
            path.touch()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def last_access(self, repo: str, digest: Digest) -> float:
        """When the manifest was last served (stamped) or else linked; 0 if neither."""
        for path in (
            self.dir(repo) / _ACCESS / digest.hex,
            self.dir(repo) / _MANIFESTS / digest.hex,
        ):
            try:
                return path.stat().st_mtime
            except FileNotFoundError:
                continue
        return 0.0

    def clear_access(self, repo: str, digest: Digest) -> None:
        _unlink(self.dir(repo) / _ACCESS / digest.hex)

    # tags

    def get_tag(self, repo: str, tag: str) -> Digest | None:
        try:
            text = (self.dir(repo) / _TAGS / validate_tag(tag)).read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return Digest.parse(text)
        except DigestError:
            return None

    def set_tag(self, repo: str, tag: str, digest: Digest) -> Digest | None:
        """Point ``tag`` at ``digest``; return what it pointed at before (or None)."""
        old = self.get_tag(repo, tag)
        if old != digest:
            write_atomic(self.dir(repo) / _TAGS / validate_tag(tag), str(digest).encode())
        return old

    def delete_tag(self, repo: str, tag: str) -> Digest | None:
        old = self.get_tag(repo, tag)
        if old is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir(repo) / _TAGS / validate_tag(tag)).unlink()
        return old

    def tags(self, repo: str) -> list[str]:
        tags_dir = self.dir(repo) / _TAGS
        if not tags_dir.is_dir():
            return []
        return sorted(p.name for p in tags_dir.iterdir() if not p.name.startswith("."))

    def tags_pointing_to(self, repo: str, digest: Digest) -> list[str]:
        return [t for t in self.tags(repo) if self.get_tag(repo, t) == digest]

    # referrers

    def link_referrer(self, repo: str, subject: Digest, descriptor: dict[str, Any]) -> None:
        """Record that the manifest ``descriptor`` names has ``subject`` as its subject."""
        digest = Digest.parse(descriptor["digest"])
        path = self.dir(repo) / _REFERRERS / subject.hex / digest.hex
        write_atomic(path, json.dumps(descriptor, sort_keys=True).encode())

    def referrers(self, repo: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests in ``repo`` whose subject is ``subject`` (still linked)."""
        folder = self.dir(repo) / _REFERRERS / subject.hex
        if not folder.is_dir():
            return []
        found = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                descriptor = json.loads(entry.read_text())
                linked = self.manifest_media_type(repo, Digest.parse(descriptor["digest"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if linked is not None:  # a deleted referrer is left out
                found.append(descriptor)
        return found

    def unlink_referrer(self, repo: str, subject: Digest, digest: Digest) -> bool:
        return _unlink(self.dir(repo) / _REFERRERS / subject.hex / digest.hex)

    # catalog

    def names(self) -> Iterator[str]:
        """Every repository, in lexical order."""
        found: list[str] = []
        for dirpath, dirnames, _ in os.walk(self.root):
            if any(d in (_LAYERS, _MANIFESTS, _TAGS) for d in dirnames):
                found.append(Path(dirpath).relative_to(self.root).as_posix())
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        yield from sorted(found)


def _entries(folder: Path) -> list[tuple[Digest, float]]:
    """(digest, mtime) of each link file in ``folder`` (none if it does not exist)."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            found.append((Digest.parse("sha256:" + entry.name), entry.stat().st_mtime))
        except (DigestError, FileNotFoundError):
            continue  # a temp file of an atomic write, or just removed
    return found


def _unlink(link: Path) -> bool:
    """Remove a link file; False if there was none."""
    try:
        link.unlink()
    except FileNotFoundError:
        return False
    return True
