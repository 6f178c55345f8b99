"""Activation: swap a collection to another version (a job's, a rollback) without a failed request,
prune old versions after it, and load the collection's teacher."""

from __future__ import annotations

import logging
from typing import Any

from strop.index.collection import apply_changes, catch_up
from strop.index.retention import prune_versions
from strop.index.store import NotFound
from strop.service.models import LoadedModel
from strop.service.state import ManagerBase, Served

log = logging.getLogger("strop.manager")


class Activation(ManagerBase):
    """Mixed into :class:`strop.service.manager.CollectionManager`."""


    def activate(self, name: str, vid: str, write_pointer: bool = True) -> Served:
        """Load ``vid``, catch it up with the store, swap it in; the old one keeps serving until then."""
        st = self.state(name)
        if st.served.id == vid:
            if write_pointer and st.vstore.active() != vid:
                st.vstore.activate(vid)
            return st.served
        new = self._load(st.record, st.vstore, vid)
        try:
            cursor, id_map = catch_up(self.store, new.version, new.model.batcher.encode_sync)
            with st.write_lock:
                if not write_pointer and st.vstore.active() != vid:
                    # Following the pointer (poll or a pub/sub event), but it has moved on meanwhile:
                    # a late or out-of-order announcement must not swap in a version ACTIVE no longer names.
                    self.models.release(new.model)
                    return st.served
                # writes acknowledged since the catch-up
                changes = self.store.changes_since(name, cursor, limit=1_000_000)
                apply_changes(self.store, new.version, changes, id_map, new.model.batcher.encode_sync)
                if write_pointer:
                    st.vstore.activate(vid)
                old = st.served
                st.served = new
                st.id_map = id_map
                st.cursor = max(cursor, changes[-1].seq if changes else cursor)
                st.active_mtime = st.vstore.active_mtime()
        except BaseException:
            self.models.release(new.model)
            raise
        self.models.release(old.model)
        log.info("collection %s now serves %s (was %s)", name, vid, old.id)
        if write_pointer and self.on_activate:
            self.on_activate(name, vid)
        if write_pointer:  # keep the active version and the `retention` newest others
            prune_versions(self.store, st.vstore, self.retention)
        self.maybe_compact(name)
        return new

    def teacher(self, name: str) -> LoadedModel:
        """The collection's teacher behind its micro-batcher (loaded on first use, reloaded when it changes)."""
        st = self.state(name)
        path = st.record.teacher
        if not path:
            raise NotFound(f"collection {name!r} has no teacher")
        current = st.teacher
        if current is not None and current.key == "teacher:" + path:
            return current
        lm = self.models.acquire_teacher(path)
        with self._lock:
            old, st.teacher = st.teacher, lm
        if old is not None:
            self.models.release(old)
        return lm

    def set_teacher(self, name: str, teacher: str | None) -> None:
        """Name the collection's teacher, or remove it with None. The teacher is loaded here, so a path
        that holds no model fails now rather than on the next rerank, and the first rerank finds it warm
        (the registry keeps an unreferenced model for its grace period)."""
        st = self.state(name)
        lm = self.models.acquire_teacher(teacher) if teacher else None
        try:
            self.store.set_teacher(name, teacher, {"set_by": "PUT /collections/{name}/teacher"} if teacher else None)
            st.record = self.store.get_collection(name)
        finally:
            if lm is not None:
                self.models.release(lm)

    def versions(self, name: str) -> list[dict[str, Any]]:
        st = self.state(name)
        served = st.served
        out = []
        for m in st.vstore.list():
            active = m["id"] == served.id
            out.append({
                "id": m["id"], "created_at": m.get("created_at"), "parent": m.get("parent"),
                "job": m.get("job"), "metrics": m.get("metrics", {}),
                # the active version serves every write since it was built; the others, what they were built with
                "count": served.live.ntotal if active else m.get("count"), "built_count": m.get("count"),
                "encoder": m.get("encoder"), "index": m.get("index", {}).get("built_kind"),
                "active": active,
            })
        return out
