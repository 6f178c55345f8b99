"""Writes to served collections: upsert and delete, indexed in the active version at once, and the
background compaction that folds the live delta into a new main index (a new reference, never an
in-place rebuild)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from strop.index.collection import doc_text
from strop.index.image.verify import document_features
from strop.index.live import LiveIndex
from strop.index.store import Document
from strop.service.state import CollectionState, ManagerBase, Served

log = logging.getLogger("strop.manager")


class Writes(ManagerBase):
    """Mixed into :class:`strop.service.manager.CollectionManager`."""


    def upsert(self, name: str, docs: Sequence[Document]) -> tuple[int, int]:
        """Encode, store durably, index. Returns (upserted, truncated)."""
        st = self.state(name)
        # An image collection's references get their local features here, before the write lock: they
        # depend only on the image, and extracting them costs tens of ms per reference.
        table = st.served.version.extra.get("local_features")
        local = document_features(dict(enumerate(docs)), table.config) if table is not None else {}
        with st.write_lock:
            served = st.served
            enc = served.model.encoder
            texts = [doc_text(d) for d in docs]
            truncated = enc.count_truncated(texts)
            vecs = served.model.batcher.encode_sync(texts)
            stored = self.store.upsert(name, docs, vectors={served.id: vecs})
            old = [st.id_map[d.id] for d in stored if d.id in st.id_map]
            if old:
                served.live.remove(old)
            served.live.add([d.rid for d in stored], vecs)
            for d in stored:
                st.id_map[d.id] = d.rid
            now = served.version.extra.get("local_features")
            if now is not None and table is not None and now.config == table.config:
                now.add({d.rid: local[i] for i, d in enumerate(stored) if i in local})
            # (a version served meanwhile with other settings computes them when they are first candidates)
        self.maybe_compact(name)
        return len(stored), truncated

    def delete_document(self, name: str, doc_id: str) -> None:
        st = self.state(name)
        with st.write_lock:
            self.store.delete(name, doc_id)
            rid = st.id_map.pop(doc_id, None)
            if rid is not None:
                st.served.live.remove([rid])

    def maybe_compact(self, name: str) -> None:
        st = self._states.get(name)
        if st is None or st.compacting or not st.served.live.needs_compaction():
            return
        st.compacting = True
        threading.Thread(target=self._compact, args=(name, st), name=f"compact:{name}", daemon=True).start()

    def _compact(self, name: str, st: CollectionState) -> None:
        """Rebuild the main index off the request path, then swap (writes meanwhile are replayed)."""
        from strop.index import faiss_index as fi

        try:
            served = st.served
            t0 = time.perf_counter()
            rids, vecs = served.live.snapshot()
            main = fi.build(served.version.spec, served.version.dim, rids, vecs)
            new_live = LiveIndex(main, served.version.spec, served.version.dim)
            with st.write_lock:
                if st.served is not served:
                    return  # a new version arrived meanwhile
                cur = served.live.ids()
                gone = np.setdiff1d(rids, cur)
                added = np.setdiff1d(cur, rids)
                if gone.size:
                    new_live.remove(gone)
                if added.size:
                    extra_ids, extra_vecs = served.live.snapshot()
                    sel = np.isin(extra_ids, added)
                    new_live.add(extra_ids[sel], extra_vecs[sel])
                st.served = Served(replace(served.version, live=new_live), served.model)
            log.info("compacted %s: %d vectors into %s in %.1fs", name, rids.size,
                     fi.inner_kind(main), time.perf_counter() - t0)
        except Exception:
            log.exception("compaction of %s failed", name)
        finally:
            st.compacting = False


def make_documents(items: Sequence[dict[str, Any]]) -> list[Document]:
    return [Document(id=i["id"], text=i.get("text"), image=i.get("image"), metadata=i.get("metadata") or {})
            for i in items]
