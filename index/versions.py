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
from pathlib import Path
from typing import Any

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


class VersionStore:
    def __init__(self, data_dir: str | Path, collection: str):
        self.root = Path(data_dir) / "collections" / collection
        self.versions = self.root / "versions"
        self.collection = collection

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
            trash = self.versions / f"{TRASH_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
            os.rename(self.path(vid), trash)
            out.append(trash)
        if out:
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
            raise VersionError(f"version {vid!r} does not exist in collection {self.collection!r}") from None

    def verify(self, vid: str) -> dict[str, Any]:
        """Check every file against the manifest's checksums; returns the manifest."""
        m = self.manifest(vid)
        root = self.path(vid)
        got = checksums(root)
        if got != m.get("checksums"):
            raise VersionError(f"version {vid} failed its checksum check")
        return m

    def list(self) -> list[dict[str, Any]]:
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

    def active(self) -> str | None:
        try:
            with open(self.root / "ACTIVE") as f:
                return json.load(f)["version"]
        except FileNotFoundError:
            return None

    def active_mtime(self) -> float:
        try:
            return (self.root / "ACTIVE").stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    def activate(self, vid: str) -> None:
        """Point ACTIVE at ``vid`` atomically (the version must exist and be complete). Under the
        collection's lock, so retention never removes a version as it becomes the active one."""
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
        shutil.rmtree(self.root, ignore_errors=True)


def new_version_id(n: int) -> str:
    return f"v{n:04d}"
