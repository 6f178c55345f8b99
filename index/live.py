"""The served vector index of one collection version: an immutable main index plus a live delta.

* ``main`` is built once (by a version build or a compaction) and never mutated,
  so any kind (flat / HNSW / IVF) can be searched without locks.
* ``delta`` is a small flat index that takes writes made after ``main`` was built.
* ``tombstones`` hide rows of ``main`` that were deleted or replaced since.

Search merges both. ``compacted()`` builds a fresh main from the current state
off the request path; the owner swaps the reference (never rebuilds in place).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import faiss
import numpy as np

from strop.index import faiss_index as fi
from strop.index.faiss_index import IndexSpec

# Below this many allowed ids, a filtered search is answered exactly by scoring
# just those vectors; above it, by the index with an id selector (checked for
# completeness and retried exactly when the approximate search came up short).
EXACT_FILTER_LIMIT = 20_000


class LiveIndex:
    def __init__(self, main: faiss.Index, spec: IndexSpec, dim: int):
        self.main = main
        self.spec = spec
        self.dim = dim
        self._main_ids = np.sort(fi.all_vectors(main)[0]) if main.ntotal else np.empty(0, np.int64)
        self.delta = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.tombstones: set[int] = set()
        self._lock = threading.RLock()
        self._sel_cache: tuple[int, object | None, object | None] = (-1, None, None)
        self._gen = 0  # bumps on every tombstone change

    # -- writes -----------------------------------------------------------------------
    def in_main(self, rids: np.ndarray) -> np.ndarray:
        if self._main_ids.size == 0:
            return np.zeros(len(rids), bool)
        pos = np.searchsorted(self._main_ids, rids)
        pos = np.minimum(pos, self._main_ids.size - 1)
        return self._main_ids[pos] == rids

    def add(self, rids: Sequence[int], vectors: np.ndarray) -> None:
        rids_a = np.asarray(rids, dtype=np.int64)
        if rids_a.size == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            fresh = ~self.in_main(rids_a)
            revived = [int(r) for r in rids_a[~fresh] if int(r) in self.tombstones]
            if revived:
                self.tombstones.difference_update(revived)
                self._gen += 1
            d_ids = faiss.vector_to_array(self.delta.id_map) if self.delta.ntotal else np.empty(0, np.int64)
            have = set(np.intersect1d(rids_a[fresh], d_ids).tolist())
            keep = np.array([f and int(r) not in have for r, f in zip(rids_a, fresh, strict=True)], bool)
            if keep.any():
                self.delta.add_with_ids(vecs[keep], rids_a[keep])

    def _delta_has(self, rid: int) -> bool:
        try:
            self.delta.reconstruct(rid)
            return True
        except RuntimeError:
            return False

    def remove(self, rids: Sequence[int]) -> None:
        rids_a = np.asarray(rids, dtype=np.int64)
        if rids_a.size == 0:
            return
        with self._lock:
            inm = self.in_main(rids_a)
            if inm.any():
                self.tombstones.update(int(r) for r in rids_a[inm])
                self._gen += 1
            if (~inm).any():
                self.delta.remove_ids(faiss.IDSelectorBatch(rids_a[~inm]))

    def contains(self, rid: int) -> bool:
        with self._lock:
            if bool(self.in_main(np.array([rid], np.int64))[0]):
                return rid not in self.tombstones
            return self._delta_has(rid)

    @property
    def ntotal(self) -> int:
        with self._lock:
            return int(self.main.ntotal - len(self.tombstones) + self.delta.ntotal)

    def ids(self) -> np.ndarray:
        """All live row ids (main minus tombstones, plus delta)."""
        with self._lock:
            main = self._main_ids
            if self.tombstones:
                main = main[~np.isin(main, np.fromiter(self.tombstones, np.int64))]
            delta = faiss.vector_to_array(self.delta.id_map).astype(np.int64)
            return np.concatenate([main, delta])

    def vectors(self, rids: Sequence[int]) -> np.ndarray:
        """Stored vectors of live ``rids`` (IDMap2 reconstruct; zeros for a rid that is not here)."""
        out = np.zeros((len(rids), self.dim), np.float32)
        with self._lock:
            for i, r in enumerate(rids):
                for index in (self.delta, self.main):
                    try:
                        out[i] = index.reconstruct(int(r))
                        break
                    except RuntimeError:
                        continue
        return out

    # -- search -----------------------------------------------------------------------
    def _tombstone_selector(self) -> object | None:
        gen, batch, neg = self._sel_cache
        if gen == self._gen:
            return neg
        if not self.tombstones:
            self._sel_cache = (self._gen, None, None)
            return None
        batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64))
        neg = faiss.IDSelectorNot(batch)
        neg.__dict__["_keep"] = batch
        self._sel_cache = (self._gen, batch, neg)
        return neg

    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rids) per query. ``allow`` restricts to those rids (a metadata filter)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allow is not None and allow.size <= EXACT_FILTER_LIMIT:
            return self._exact(queries, k, allow)
        with self._lock:
            neg = self._tombstone_selector()
            n_delta = self.delta.ntotal
            if n_delta:
                dsel = faiss.IDSelectorBatch(allow) if allow is not None else None
                d_scores, d_ids = fi.search(self.delta, self.spec, queries, k, dsel)
        sel = neg
        keep: list[object] = []
        if allow is not None:
            allow_sel = faiss.IDSelectorBatch(allow)
            keep.append(allow_sel)
            sel = allow_sel if neg is None else faiss.IDSelectorAnd(allow_sel, neg)
        m_scores, m_ids = fi.search(self.main, self.spec, queries, k, sel)
        del keep
        if n_delta:
            scores, ids = _merge(m_scores, m_ids, d_scores, d_ids, k)
        else:
            scores, ids = m_scores, m_ids
        if allow is not None:
            expected = min(k, allow.size)
            if int((ids[:, :expected] >= 0).sum(axis=1).min(initial=expected)) < expected:
                return self._exact(queries, k, allow)  # approximate index came up short under the filter
        return scores, ids

    def _exact(self, queries: np.ndarray, k: int, allow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            allow = np.unique(allow.astype(np.int64))
            inm = self.in_main(allow)
            m_rids = allow[inm]
            if self.tombstones and m_rids.size:
                m_rids = m_rids[~np.isin(m_rids, np.fromiter(self.tombstones, np.int64))]
            d_all = faiss.vector_to_array(self.delta.id_map).astype(np.int64)
            d_rids = allow[~inm]
            d_rids = d_rids[np.isin(d_rids, d_all)] if d_rids.size else d_rids
            parts = []
            if m_rids.size:
                parts.append(self.main.reconstruct_batch(m_rids))
            if d_rids.size:
                parts.append(self.delta.reconstruct_batch(d_rids))
            rids = np.concatenate([m_rids, d_rids])
            vecs = np.vstack(parts) if parts else np.empty((0, self.dim), np.float32)
        nq = queries.shape[0]
        scores = np.full((nq, k), -np.inf, np.float32)
        ids = np.full((nq, k), -1, np.int64)
        if rids.size == 0 or k == 0:
            return scores, ids
        sims = queries @ vecs.T
        kk = min(k, rids.size)
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for q in range(nq):
            order = top[q][np.argsort(-sims[q, top[q]], kind="stable")]
            scores[q, :kk] = sims[q, order]
            ids[q, :kk] = rids[order]
        return scores, ids

    # -- compaction ---------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(rids, vectors) of everything live, for building a compacted main index."""
        with self._lock:
            m_ids, m_vecs = fi.all_vectors(self.main)
            if self.tombstones:
                keep = ~np.isin(m_ids, np.fromiter(self.tombstones, np.int64))
                m_ids, m_vecs = m_ids[keep], m_vecs[keep]
            d_ids, d_vecs = fi.all_vectors(self.delta)
        return np.concatenate([m_ids, d_ids]), np.vstack([m_vecs, d_vecs])

    def needs_compaction(self) -> bool:
        n_main = self.main.ntotal
        live = self.ntotal
        if self.spec.resolve(live) != fi.inner_kind(self.main) and live >= 1000:
            return True  # e.g. "auto" crossed its threshold
        return self.delta.ntotal > max(5_000, n_main // 5) or len(self.tombstones) > max(1_000, n_main // 5)


def _merge(
    a_scores: np.ndarray, a_ids: np.ndarray, b_scores: np.ndarray, b_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.hstack([a_scores, b_scores])
    ids = np.hstack([a_ids, b_ids])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
