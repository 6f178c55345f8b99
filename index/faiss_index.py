"""FAISS index construction, search parameters and persistence.

All indexes are inner-product indexes over L2-normalised float32 vectors (so a
score is a cosine), wrapped in ``IndexIDMap2`` with explicit int64 ids (the
store's row ids). Search parameters (efSearch, nprobe, id selectors) are passed
per call, never set on a shared index.

``auto`` is flat below ``auto_threshold`` vectors and HNSW (M=32) above it; see
docs/benchmarks.md ("index kinds") for the recall@10-vs-flat measurement that
picks the threshold and the efSearch default.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]

# Flat batch search over many vectors is 5-7x faster through BLAS even for small
# query batches (measured on faiss-cpu 1.15, docs/benchmarks.md). Results are identical.
faiss.cvar.distance_compute_blas_threshold = 1

_threads_lock = threading.Lock()

# The OpenBLAS inside the faiss-cpu wheel (an OpenMP build) degrades badly when two threads call
# sgemm at once: a flat 20k x 384 search of 16 queries took 11 ms alone and 50-100 ms per search
# with two searching threads (bench/serving.py profile, docs/benchmarks.md). BLAS-backed searches
# (flat, and IVF's coarse step) therefore take turns; HNSW searches (no BLAS) run concurrently.
_blas_lock = threading.Lock()


@dataclass(frozen=True)
class IndexSpec:
    kind: IndexKind = "auto"
    auto_threshold: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_nlist: int = 0  # 0 = 4 * sqrt(n)
    nprobe: int = 16

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IndexSpec:
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve(self, n: int) -> str:
        """The concrete kind for a corpus of ``n`` vectors."""
        if self.kind == "auto":
            return "hnsw" if n >= self.auto_threshold else "flat"
        if self.kind == "ivf" and n < self.min_ivf_size():
            return "flat"  # too few points to train the coarse quantiser
        return self.kind

    def nlist(self, n: int) -> int:
        return self.ivf_nlist or max(1, int(4 * math.sqrt(max(n, 1))))

    def min_ivf_size(self) -> int:
        return 39 * (self.ivf_nlist or 16)


def build(spec: IndexSpec, dim: int, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """Build a new index of the resolved kind holding ``vectors`` under ``ids``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n = vectors.shape[0]
    kind = spec.resolve(n)
    if kind == "flat":
        inner: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = spec.ef_construction
        inner.hnsw.efSearch = spec.ef_search
    elif kind == "ivf":
        nlist = min(spec.nlist(n), max(1, n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.train(vectors)
        inner.nprobe = spec.nprobe
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(vectors, ids)
    if kind == "ivf":
        inner.make_direct_map()
    _keep(index, inner)
    return index


def _keep(index: faiss.Index, inner: faiss.Index) -> None:
    # SWIG: keep the Python wrapper of the inner index alive as long as the outer one.
    index.__dict__["_inner"] = inner


def inner_kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf"
    return "flat"


def search_params(index: faiss.Index, spec: IndexSpec, selector: Any | None) -> Any | None:
    kind = inner_kind(index)
    if kind == "hnsw":
        p = faiss.SearchParametersHNSW()
        p.efSearch = spec.ef_search
    elif kind == "ivf":
        p = faiss.SearchParametersIVF()
        p.nprobe = spec.nprobe
    else:
        if selector is None:
            return None
        p = faiss.SearchParameters()
    if selector is not None:
        p.sel = selector
    return p


def search(
    index: faiss.Index, spec: IndexSpec, queries: np.ndarray, k: int, selector: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query; missing slots have id -1 and score -inf."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = queries.shape[0]
    if index.ntotal == 0 or k <= 0:
        return np.full((nq, max(k, 0)), -np.inf, np.float32), np.full((nq, max(k, 0)), -1, np.int64)
    params = search_params(index, spec, selector)
    kk = min(k, index.ntotal)
    if kind_needs_ef_bump(index) and params is not None:
        params.efSearch = max(params.efSearch, kk)
    lock = _blas_lock if inner_kind(index) != "hnsw" else contextlib.nullcontext()
    with lock:
        if params is None:
            scores, ids = index.search(queries, kk)
        else:
            scores, ids = index.search(queries, kk, params=params)
    if kk < k:
        pad = k - kk
        scores = np.hstack([scores, np.full((nq, pad), -np.inf, np.float32)])
        ids = np.hstack([ids, np.full((nq, pad), -1, np.int64)])
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids


def kind_needs_ef_bump(index: faiss.Index) -> bool:
    return inner_kind(index) == "hnsw"


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) in an IDMap2 index, for rebuilding into another kind."""
    n = index.ntotal
    if n == 0:
        return np.empty(0, np.int64), np.empty((0, index.d), np.float32)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    vecs = inner.reconstruct_n(0, n)  # IVF: needs the direct map made at build/load time
    return ids, np.asarray(vecs, dtype=np.float32)


def save(index: faiss.Index, path: str | Path) -> None:
    tmp = f"{path}.tmp"
    faiss.write_index(index, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> faiss.Index:
    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexIVFFlat):
            inner.make_direct_map()
        _keep(index, inner)
    return index


def set_threads(n: int) -> None:
    with _threads_lock:
        faiss.omp_set_num_threads(n)
