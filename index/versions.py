"""Immutable versions on disk and the atomic active pointer.

Layout under ``<data>/collections/<name>/``::

    versions/<vid>/manifest.json   id, parent, job, encoder, index, created_at, watermark, metrics, checksums
    versions/<vid>/index.faiss     IndexIDMap2 over the store's row ids
    versions/<vid>/encoder/        fine-tuned weights (absent when the manifest references a base model)
    ACTIVE                         {"version": vid, "activated_at": ...}, replaced with os.replace

A version is written into ``versions/.tmp-*`` and renamed into place after every
file is fsynced, so a reader never sees a half-written one; a crash leaves only a
``.tmp-*`` directory, which ``VersionStore`` removes on open. Removal runs the other
way (``strop.index.retention``): a version is renamed out of sight to
``versions/.trash-*`` first and deleted after, so a crash leaves only a ``.trash-*``
directory, which ``clean_partials`` finishes. Activation and the choice of what to
remove hold the collection's lock file (``.lock``), so a version is never removed
while it becomes the active one.

With a :class:`Remote` (``STROP_ARTIFACTS_URL``), the durable copy of every version is in
object storage (:mod:`strop.index.artifacts`) and the active pointer is a row of the document
store: the data dir is a cache. A written version is uploaded (manifest last, create-only)
before it counts; a version not in the cache is downloaded, checked against its checksums and
renamed into place the first time it is verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strop.index.artifacts import Artifacts
    from strop.index.store import DocumentStore

VERSION_ID = re.compile(r"v[0-9]{1,12}")
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ENCODER_DIR = "encoder"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class VersionError(Exception):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = _sha256(p)
    return out


@dataclass(frozen=True)
class Remote:
    """Where versions and the active pointer live when the data dir is only a cache."""

    artifacts: Artifacts
    store: DocumentStore


class VersionStore:
    def __init__(self, data_dir: str | Path, collection: str, remote: Remote | None = None):
        self.root = Path(data_dir) / "collections" / collection
        self.versions = self.root / "versions"
        self.collection = collection
        self.remote = remote

    def ensure(self) -> VersionStore:
        self.versions.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The collection's lock across processes (an exclusive ``flock`` on ``<collection>/.lock``): held
        while the active pointer moves and while retention picks and hides what it removes."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def clean_partials(self, older_than_s: float = 3600.0) -> None:
        """Remove ``.tmp-*`` leftovers of crashed writers (only old ones: a live writer may own a new one) and
        finish every ``.trash-*`` directory (a version already renamed out of sight, whose removal stopped)."""
        if not self.versions.exists():
            return
        now = time.time()
        for p in self.versions.glob(TMP_PREFIX + "*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass
        for p in self.versions.glob(TRASH_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)

    def hide(self, vids: list[str]) -> list[Path]:
        """Rename versions out of sight (``versions/.trash-<vid>-<rand>``), then fsync the directory: from
        here on no reader lists or loads them, and a crash leaves only a ``.trash-*`` directory. Call under
        :meth:`lock`; returns the trash paths, which the caller deletes."""
        out = []
        for vid in vids:
            if self.remote is not None:  # gone for every host first: the manifest goes before the files
                self.remote.artifacts.delete(self.collection, vid)
            trash = self.versions / f"{TRASH_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
            if self.remote is None or self.path(vid).exists():
                os.rename(self.path(vid), trash)
            out.append(trash)
        if out and self.versions.exists():
            _fsync_dir(self.versions)
        return out

    def disk_bytes(self, vid: str) -> int:
        """Bytes of the files version ``vid`` holds on disk (manifest, index, encoder weights)."""
        total = 0
        for p in self.path(vid).rglob("*"):
            try:
                st = p.lstat()
            except FileNotFoundError:  # removed meanwhile
                continue
            if not p.is_dir():
                total += st.st_size
        return total

    def path(self, vid: str) -> Path:
        if not isinstance(vid, str) or not VERSION_ID.fullmatch(vid):
            raise VersionError(f"no version {vid[:80]!r}: version ids look like v0001")
        return self.versions / vid

    def write(self, vid: str, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Create version ``vid``: ``fill(tmpdir)`` writes files and returns the manifest fields."""
        self.ensure()
        final = self.path(vid)
        if final.exists():
            raise VersionError(f"version {vid} already exists")
        tmp = self.versions / f"{TMP_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = dict(fill(tmp))
            manifest.setdefault("id", vid)
            manifest.setdefault("collection", self.collection)
            manifest.setdefault("created_at", time.time())
            manifest["checksums"] = checksums(tmp)
            mpath = tmp / MANIFEST
            with open(mpath, "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            for p in tmp.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
            for d in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
                _fsync_dir(d)
            if self.remote is not None:  # durable (and visible to other hosts) once its manifest is up
                self.remote.artifacts.upload(self.collection, vid, tmp)
            os.rename(tmp, final)
            _fsync_dir(self.versions)
            return manifest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def manifest(self, vid: str) -> dict[str, Any]:
        p = self.path(vid) / MANIFEST
        try:
            with open(p) as f:
                return json.load(f)
        except FileNotFoundError:
            remote = self.remote.artifacts.manifest(self.collection, vid) if self.remote is not None else None
            if remote is not None:
                return remote
            raise VersionError(f"version {vid!r} does not exist in collection {self.collection!r}") from None

    def verify(self, vid: str) -> dict[str, Any]:
        """Check every file against the manifest's checksums; returns the manifest. With a remote, a version
        not cached yet is downloaded (and checked) first."""
        if self.remote is not None and not (self.path(vid) / MANIFEST).exists():
            return self.fetch(vid)
        m = self.manifest(vid)
        root = self.path(vid)
        got = checksums(root)
        if got != m.get("checksums"):
            raise VersionError(f"version {vid} failed its checksum check")
        return m

    def fetch(self, vid: str) -> dict[str, Any]:
        """Download version ``vid`` into the cache: into a temporary directory, checked against the
        manifest's checksums, then renamed into place. A version that fails the check is never cached."""
        assert self.remote is not None
        m = self.remote.artifacts.manifest(self.collection, vid)
        if m is None:
            raise VersionError(f"version {vid!r} does not exist in collection {self.collection!r}")
        self.ensure()
        tmp = self.versions / f"{TMP_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self.remote.artifacts.download(self.collection, vid, tmp, m)
            if checksums(tmp) != m.get("checksums"):
                raise VersionError(f"version {vid} failed its checksum check after download from "
                                   f"{self.remote.artifacts.describe()}: it is not served")
            _fsync_dir(tmp)
            try:
                os.rename(tmp, self.path(vid))
            except OSError:  # another thread or process of this host cached it meanwhile
                if not (self.path(vid) / MANIFEST).exists():
                    raise
            _fsync_dir(self.versions)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return m

    def list(self) -> list[dict[str, Any]]:
        if self.remote is not None:
            return sorted(self.remote.artifacts.list(self.collection), key=lambda m: (m.get("created_at", 0), m["id"]))
        if not self.versions.exists():
            return []
        out = []
        for p in self.versions.iterdir():
            if p.name.startswith(".") or not (p / MANIFEST).exists():
                continue
            try:
                out.append(self.manifest(p.name))
            except (VersionError, json.JSONDecodeError):
                continue
        return sorted(out, key=lambda m: (m.get("created_at", 0), m["id"]))

    def present(self) -> set[str]:
        """Ids of the versions that exist (in the remote when there is one, else in the data dir)."""
        if self.remote is not None:
            return {m["id"] for m in self.list()}
        return {p.name for p in self.versions.iterdir()} if self.versions.exists() else set()

    def active(self) -> str | None:
        if self.remote is not None:
            pointer = self.remote.store.get_active(self.collection)
            return pointer[0] if pointer else None
        try:
            with open(self.root / "ACTIVE") as f:
                return json.load(f)["version"]
        except FileNotFoundError:
            return None

    def active_mtime(self) -> float:
        """Changes whenever the active pointer moves (polling compares it)."""
        if self.remote is not None:
            pointer = self.remote.store.get_active(self.collection)
            return pointer[1] if pointer else 0.0
        try:
            return (self.root / "ACTIVE").stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    def activate(self, vid: str) -> None:
        """Point ACTIVE at ``vid`` atomically (the version must exist and be complete). Under the
        collection's lock, so retention never removes a version as it becomes the active one."""
        if self.remote is not None:
            with self.lock():
                self.manifest(vid)  # committed in the remote (its manifest is up)
                self.remote.store.set_active(self.collection, vid)
            return
        with self.lock():
            self.manifest(vid)
            tmp = self.root / f".ACTIVE.{uuid.uuid4().hex[:8]}"
            with open(tmp, "w") as f:
                json.dump({"version": vid, "activated_at": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / "ACTIVE")
            _fsync_dir(self.root)

    def remove_all(self) -> None:
        if self.remote is not None:
            self.remote.artifacts.delete_collection(self.collection)
        shutil.rmtree(self.root, ignore_errors=True)

    def evict(self) -> list[str]:
        """With a remote: remove cached versions the remote no longer has (pruned by another host)."""
        if self.remote is None or not self.versions.exists():
            return []
        keep = self.present() | {self.active() or ""}
        gone = [p.name for p in self.versions.iterdir() if not p.name.startswith(".") and p.name not in keep]
        for vid in gone:
            shutil.rmtree(self.versions / vid, ignore_errors=True)
        return gone


def new_version_id(n: int) -> str:
    return f"v{n:04d}"
