"""Collections as the API process serves them: one active version each, swapped by reference.

All methods here are blocking (SQLite, FAISS, file I/O) and run in worker
threads; handlers reach them through ``anyio.to_thread`` and encoders through
their batchers. Per collection, a write lock orders writes against activation:
a write encodes with the version it will be indexed in, and an activation
replays every write after its catch-up before swapping, so no acknowledged
document is missing after a swap.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.index.collection import (
    ServedVersion,
    Sidecar,
    apply_changes,
    build_version,
    catch_up,
    encoder_source,
    load_index,
)
from strop.index.faiss_index import IndexSpec
from strop.index.image.verify import LOCAL_FEATURES_FILE, FeatureTable, reference_sidecar
from strop.index.retention import clean_versions
from strop.index.store import CollectionRecord, Conflict, DocumentStore, NotFound
from strop.index.versions import Remote, VersionStore, new_version_id
from strop.service.activation import Activation
from strop.service.models import LoadedModel, ModelRegistry
from strop.service.state import CollectionState, Served
from strop.service.writes import Writes

log = logging.getLogger("strop.manager")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MODALITIES = ("text", "code", "image")


class BadEncoder(ValueError):
    """A collection's encoder does not load (a missing path, a directory that holds no model)."""


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # fullmatch: "$" alone admits a trailing "\n"
        raise ValueError(
            f"invalid collection name {name!r}: use 1-63 characters from a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )


class CollectionManager(Writes, Activation):
    """Lifecycle of the served collections (open, create, delete, follow other processes); writes
    (``strop.service.writes``) and activation (``strop.service.activation``) are mixed in."""

    def __init__(self, store: DocumentStore, models: ModelRegistry, data_dir: Path,
                 auto_threshold: int = 50_000, retention: int = 5,
                 on_activate: Callable[[str, str], None] | None = None, remote: Remote | None = None):
        self.store = store
        self.remote = remote  # versions in object storage: the data dir is a cache
        self.models = models
        self.data_dir = Path(data_dir)
        self.auto_threshold = auto_threshold
        self.retention = retention
        self.on_activate = on_activate
        self._states: dict[str, CollectionState] = {}
        # collection -> (version, why, when): an active version this process could not load (a failed
        # checksum, the object store away); /readyz reports it and polling retries it after a pause
        self.failures: dict[str, tuple[str | None, str, float]] = {}
        self._lock = threading.RLock()
        self._open_locks: dict[str, threading.Lock] = {}

    # -- lookup -----------------------------------------------------------------------
    def state(self, name: str) -> CollectionState:
        st = self._states.get(name)
        if st is None:
            raise NotFound(f"collection {name!r} does not exist; create it with POST /collections")
        return st

    def names(self) -> list[str]:
        return sorted(self._states)

    # -- lifecycle ----------------------------------------------------------------------
    def open_all(self) -> None:
        for name in self.store.list_collections():
            try:
                self._open(name)
            except Exception as e:  # noqa: BLE001 - reported by /readyz, retried by polling
                self._failed(name, None, e)

    def _open(self, name: str, create_base: bool = True) -> CollectionState | None:
        """Load a collection's active version. A replica that merely noticed a new collection
        (``create_base=False``) waits for its creator to write the base version instead of racing it."""
        with self._lock:
            lock = self._open_locks.setdefault(name, threading.Lock())
        with lock:
            if name in self._states:
                return self._states[name]
            record = self.store.get_collection(name)
            vstore = VersionStore(self.data_dir, name, self.remote).ensure()
            clean_versions(self.store, vstore)  # what a crashed writer or removal left behind
            mtime = vstore.active_mtime()  # before reading the pointer: an activation while we load is polled
            vid = vstore.active()
            if vid is None:
                if not create_base and time.time() - record.created_at < 60:
                    return None  # the creating process is still writing the base version
                vid = self._create_base_version(record, vstore)
            served = self._load(record, vstore, vid)
            cursor, id_map = catch_up(self.store, served.version, served.model.batcher.encode_sync)
            st = CollectionState(record, vstore, served, cursor, id_map, active_mtime=mtime)
            self._states[name] = st
            return st

    def _create_base_version(self, record: CollectionRecord, vstore: VersionStore) -> str:
        model = self.models.acquire(record.encoder)
        try:
            vid = new_version_id(self.store.next_version_number(record.name))
            spec = IndexSpec.from_dict(record.index_spec)
            build_version(self.store, vstore, vid, model.batcher.encode_sync, model.encoder.dim, spec,
                          encoder_ref=record.encoder, metrics={}, sidecar=self._sidecar(record, model))
            vstore.activate(vid)
            return vid
        finally:
            self.models.release(model)

    def _load(self, record: CollectionRecord, vstore: VersionStore, vid: str) -> Served:
        manifest = vstore.verify(vid)
        source = encoder_source(vstore, manifest)
        model = self.models.acquire(source)
        try:
            if model.encoder.dim != int(manifest["dim"]):
                raise Conflict(f"version {vid}: encoder dim {model.encoder.dim} != index dim {manifest['dim']}")
            live = load_index(vstore, manifest)
        except BaseException:
            self.models.release(model)
            raise
        sv = ServedVersion(record.name, vid, manifest, source, live, live.spec)
        if record.modality == "image":
            sv.extra["local_features"] = FeatureTable(vstore.path(vid) / LOCAL_FEATURES_FILE,
                                                      model.encoder.verify_config)
        return Served(sv, model)

    def _sidecar(self, record: CollectionRecord, model: LoadedModel) -> Sidecar | None:
        """Image collections store their references' local features (for verification) with each version."""
        if record.modality != "image":
            return None
        return reference_sidecar(self.store, model.encoder.verify_config)

    def create(self, name: str, modality: str, encoder: str, index: dict[str, Any]) -> CollectionState:
        check_name(name)
        spec = IndexSpec.from_dict({"auto_threshold": self.auto_threshold, **index})
        # Load the encoder first so a bad name fails before anything is stored.
        try:
            model = self.models.acquire(encoder)
        except Exception as e:  # noqa: BLE001 - whatever the loader raises, the caller named a bad model
            raise BadEncoder(f"could not load encoder {encoder!r}: {type(e).__name__}: {e}"[:500]) from e
        try:
            self.store.create_collection(name, modality, encoder, spec.to_dict())
            try:
                st = self._open(name)
                assert st is not None
                return st
            except BaseException:
                self.store.delete_collection(name)
                VersionStore(self.data_dir, name, self.remote).remove_all()
                raise
        finally:
            self.models.release(model)

    def delete(self, name: str) -> None:
        st = self.state(name)
        with st.write_lock:
            self.store.delete_collection(name)
            with self._lock:
                self._states.pop(name, None)
            st.vstore.remove_all()
            self.models.release(st.served.model)

    # -- writes -------------------------------------------------------------------------

    # -- sync with other processes --------------------------------------------------------
    RETRY_FAILED_S = 30.0

    def _failed(self, name: str, vid: str | None, e: Exception) -> None:
        self.failures[name] = (vid, f"{type(e).__name__}: {e}"[:300], time.time())
        log.error("collection %s: could not load version %s: %s", name, vid, e)

    def _recently_failed(self, name: str, vid: str | None) -> bool:
        f = self.failures.get(name)
        return f is not None and f[0] == vid and time.time() - f[2] < self.RETRY_FAILED_S

    def poll(self) -> None:
        """Pick up collections, versions and writes made by other processes (API replicas, trainers)."""
        known = set(self.store.list_collections())
        for name in known - set(self._states):
            if self._recently_failed(name, None):
                continue
            try:
                if self._open(name, create_base=False) is not None:
                    self.failures.pop(name, None)
            except Exception as e:  # noqa: BLE001 - reported by /readyz, retried after a pause
                self._failed(name, None, e)
        for name in set(self.failures) - known:
            self.failures.pop(name, None)
        for name in set(self._states) - known:
            st = self._states.pop(name, None)
            if st is not None:
                self.models.release(st.served.model)
        for name, st in list(self._states.items()):
            try:
                self._poll_one(name, st)
            except NotFound:
                continue
            except Exception:
                log.exception("poll failed for collection %s", name)

    def _poll_one(self, name: str, st: CollectionState) -> None:
        mtime = st.vstore.active_mtime()
        if mtime != st.active_mtime:
            vid = st.vstore.active()
            if vid and vid != st.served.id and not self._recently_failed(name, vid):
                try:
                    self.activate(name, vid, write_pointer=False)
                except Exception as e:  # noqa: BLE001 - the version in service keeps serving
                    self._failed(name, vid, e)
                    return
            self.failures.pop(name, None)
            st.active_mtime = mtime
        changes = self.store.changes_since(name, st.cursor)
        if changes:
            with st.write_lock:
                changes = self.store.changes_since(name, st.cursor, limit=100_000)
                apply_changes(self.store, st.served.version, changes, st.id_map,
                              st.served.model.batcher.encode_sync)
                if changes:
                    st.cursor = changes[-1].seq
        try:
            st.record = self.store.get_collection(name)
        except NotFound:
            pass

    def close(self) -> None:
        with self._lock:
            states = list(self._states.values())
            self._states.clear()
        for st in states:
            self.models.release(st.served.model)
