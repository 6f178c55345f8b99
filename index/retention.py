"""Version retention: keep the active version and the newest others, free the rest.

A collection keeps its active version plus the ``keep`` most recent other versions
(``STROP_VERSION_RETENTION``); every activation calls :func:`prune_versions`, which
removes the rest together with their encoder weights and their rows in the store's
per-version vector table. A version that a queued or running job builds on is kept
too: a job pins the active version when it snapshots it (:func:`pin_active`), and
the pin counts while the job is live (``DocumentStore.pinned_versions``).

Removal is crash-safe. Under the collection's lock (so the active pointer cannot
move onto a version being removed) each doomed version is renamed to
``versions/.trash-<vid>-<rand>`` and the directory fsynced; only then are its
vector rows deleted and its files removed. A ``kill -9`` anywhere leaves the active
version intact, at worst a ``.trash-*`` directory and vector rows of a version that
no longer exists; :func:`clean_versions` (run when a collection is opened) removes
both.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from typing import Any

from strop.index.store import DocumentStore
from strop.index.versions import VersionError, VersionStore

log = logging.getLogger("strop.retention")

DEFAULT_RETENTION = 5
PIN_STALE_S = 600.0  # a running job whose heartbeat is this old no longer protects its parent

# Test hook: called as ``_fault(step, vid)`` at "chosen" (under the lock, nothing changed yet), "hidden"
# (every doomed version renamed to .trash-*, this one's rows and files still there) and "rows_dropped"
# (its rows gone, its files not yet), so a test can kill the process there.
_fault: Callable[[str, str], None] | None = None


def pin_active(store: DocumentStore, vstore: VersionStore, owner: str) -> str | None:
    """Read the active version and pin it for ``owner`` (a job id) in one step under the collection's
    lock: retention then keeps it while the job is queued or running. Returns the version (None if none)."""
    with vstore.lock():
        vid = vstore.active()
        if vid is not None:
            store.pin_version(vstore.collection, vid, owner)
        return vid


def prune_versions(store: DocumentStore, vstore: VersionStore, keep: int = DEFAULT_RETENTION, *,
                   protected: Iterable[str] = (), release: str | None = None,
                   stale_s: float = PIN_STALE_S) -> list[str]:
    """Remove every version but the active one, the ``keep`` newest others (by ``created_at``), those in
    ``protected`` and those a live job has pinned; with their files, encoder weights and vector rows.

    ``release``: a job whose pins end now (the job that just activated its own version: it no longer
    needs its parent). A negative ``keep`` removes nothing. Returns the removed version ids. Never raises for I/O or database errors (an
    activation must not fail because clean-up did): they are logged and the rest waits for the next run.
    """
    collection = vstore.collection
    if keep < 0:
        return []
    try:
        if release is not None:
            store.unpin_versions(release)
        with vstore.lock():
            active = vstore.active()
            if active is None:
                return []
            spared = {active, *protected, *store.pinned_versions(collection, stale_s)}
            others = [m["id"] for m in vstore.list() if m["id"] != active]  # oldest first
            newest = set(others[len(others) - keep:]) if keep > 0 else set()
            doomed = [v for v in others if v not in newest and v not in spared]
            for vid in doomed:
                _step("chosen", vid)
            trash = vstore.hide(doomed)
    except (OSError, VersionError, *store.errors):
        log.exception("retention of %s: could not choose or hide old versions", collection)
        return []
    removed = []
    for vid, path in zip(doomed, trash, strict=True):
        try:
            _step("hidden", vid)
            rows = store.drop_vectors(vid, collection=collection)
            _step("rows_dropped", vid)
            shutil.rmtree(path, ignore_errors=True)  # another process opening the collection may help
            if path.exists():
                raise OSError(f"could not remove {path}")
            removed.append(vid)
            log.info("retention of %s: removed version %s (%d vector rows)", collection, vid, rows)
        except (OSError, *store.errors):
            log.exception("retention of %s: removing %s stopped; it is finished when the collection is next "
                          "opened", collection, vid)
    drop_orphan_vectors(store, vstore)
    return removed


def _step(step: str, vid: str) -> None:
    if _fault is not None:
        _fault(step, vid)


def drop_orphan_vectors(store: DocumentStore, vstore: VersionStore) -> list[str]:
    """Delete the vector rows of versions of this collection that no longer exist on disk (removal that
    stopped between hiding a version and dropping its rows, or rows a process still serving a removed
    version wrote since). Returns those versions."""
    try:
        with_rows = store.vector_usage(vstore.collection)
        # listed after the rows: a version has rows only once it exists, and ids never come back
        present = vstore.present()
        # a job's shards write under "stage-<job>" keys while it re-encodes: those are the job's to drop
        orphans = [v for v in with_rows if v not in present and not v.startswith("stage-")]
        for vid in orphans:
            store.drop_vectors(vid, collection=vstore.collection)
        return orphans
    except (OSError, *store.errors):
        log.exception("retention of %s: could not drop vector rows of removed versions", vstore.collection)
        return []


def clean_versions(store: DocumentStore, vstore: VersionStore) -> None:
    """What a crash can leave, cleaned when a collection is opened: old ``.tmp-*`` directories of writers,
    ``.trash-*`` directories of removals, and vector rows of versions that are gone."""
    vstore.clean_partials()
    vstore.evict()
    drop_orphan_vectors(store, vstore)


def version_sizes(store: DocumentStore, vstore: VersionStore) -> dict[str, dict[str, Any]]:
    """Bytes each version holds: ``disk_bytes`` (its directory: manifest, index, encoder weights),
    ``vector_bytes`` and ``vector_rows`` (its rows in the store's vector table), and ``bytes``, their sum."""
    usage = store.vector_usage(vstore.collection)
    out = {}
    for m in vstore.list():
        vid = m["id"]
        try:
            disk = vstore.disk_bytes(vid)
        except (OSError, VersionError):
            continue  # removed meanwhile
        rows, vec = usage.get(vid, (0, 0))
        out[vid] = {"bytes": disk + vec, "disk_bytes": disk, "vector_bytes": vec, "vector_rows": rows}
    return out
