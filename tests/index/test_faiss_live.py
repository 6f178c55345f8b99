"""Real faiss-cpu indexes (flat / HNSW / IVF) and the LiveIndex delta + tombstones over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strop.index import faiss_index as fi
from strop.index import live as live_mod
from strop.index.faiss_index import IndexSpec
from strop.index.live import LiveIndex

DIM = 32
N = 3000
KINDS = ["flat", "hnsw", "ivf"]


def normalised(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    ids = (np.arange(N, dtype=np.int64) * 7 + 100)  # sparse, non-contiguous row ids like the store's
    return ids, normalised(rng, N)


_MAINS: dict[str, object] = {}


def main_index(kind: str, data) -> object:
    """One built index per kind for the whole module: LiveIndex never mutates its main index."""
    if kind not in _MAINS:
        ids, vecs = data
        _MAINS[kind] = fi.build(IndexSpec(kind=kind), DIM, ids, vecs)
    return _MAINS[kind]


@pytest.fixture(scope="module", params=KINDS)
def built(request: pytest.FixtureRequest, data) -> tuple[str, object]:
    return request.param, main_index(request.param, data)


def brute_force(queries: np.ndarray, rids: np.ndarray, vecs: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vecs.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return rids[order]


# -- building and searching -----------------------------------------------------------------------


def test_build_kind_and_exact_self_queries(built, data) -> None:
    kind, index = built
    ids, vecs = data
    spec = IndexSpec(kind=kind)
    assert fi.inner_kind(index) == kind
    assert index.ntotal == N
    scores, got = fi.search(index, spec, vecs, 10)
    assert got.shape == (N, 10) and scores.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], ids)  # every vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert set(np.unique(got)) <= set(ids.tolist())
    # every stored vector comes back under its id
    all_ids, all_vecs = fi.all_vectors(index)
    order = np.argsort(all_ids)
    np.testing.assert_array_equal(all_ids[order], np.sort(ids))
    np.testing.assert_allclose(all_vecs[order], vecs[np.argsort(ids)], atol=1e-6)


def test_search_pads_when_k_exceeds_size() -> None:
    rng = np.random.default_rng(0)
    vecs = normalised(rng, 5)
    ids = np.arange(10, 15, dtype=np.int64)
    for kind in ("flat", "hnsw"):
        index = fi.build(IndexSpec(kind=kind), DIM, ids, vecs)
        scores, got = fi.search(index, IndexSpec(kind=kind), vecs[:2], 8)
        assert got.shape == (2, 8)
        assert sorted(got[0, :5].tolist()) == ids.tolist()
        assert (got[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    empty = fi.build(IndexSpec(), DIM, np.empty(0, np.int64), np.empty((0, DIM), np.float32))
    scores, got = fi.search(empty, IndexSpec(), vecs[:1], 3)
    assert (got == -1).all() and np.isneginf(scores).all()


def test_auto_resolves_flat_below_threshold_hnsw_above(data) -> None:
    ids, vecs = data
    spec = IndexSpec(kind="auto", auto_threshold=1000)
    assert spec.resolve(0) == "flat" and spec.resolve(999) == "flat"
    assert spec.resolve(1000) == "hnsw" and spec.resolve(10**6) == "hnsw"
    assert IndexSpec().resolve(N) == "flat"  # default threshold is far above N
    assert fi.inner_kind(fi.build(spec, DIM, ids[:999], vecs[:999])) == "flat"
    small = IndexSpec(kind="auto", auto_threshold=300)
    assert fi.inner_kind(fi.build(small, DIM, ids[:299], vecs[:299])) == "flat"
    assert fi.inner_kind(fi.build(small, DIM, ids[:300], vecs[:300])) == "hnsw"
    assert fi.inner_kind(fi.build(IndexSpec(), DIM, ids, vecs)) == "flat"
    # IVF needs enough points to train its quantiser; below that it is flat
    assert IndexSpec(kind="ivf").resolve(100) == "flat"
    assert fi.inner_kind(fi.build(IndexSpec(kind="ivf"), DIM, ids[:100], vecs[:100])) == "flat"
    # a growing "auto" collection asks for compaction into HNSW once past the threshold
    live = LiveIndex(fi.build(spec, DIM, ids[:900], vecs[:900]), spec, DIM)
    assert not live.needs_compaction()
    live.add(ids[900:1100], vecs[900:1100])
    assert live.needs_compaction()
    rids, v = live.snapshot()
    assert fi.inner_kind(fi.build(spec, DIM, rids, v)) == "hnsw"


def test_spec_dict_round_trip() -> None:
    spec = IndexSpec(kind="ivf", nprobe=4, ivf_nlist=32)
    assert IndexSpec.from_dict({**spec.to_dict(), "built_kind": "ivf", "unknown": 1}) == spec
    assert IndexSpec.from_dict(None) == IndexSpec()


def test_save_load_round_trip(built, data, tmp_path: Path) -> None:
    kind, index = built
    ids, vecs = data
    spec = IndexSpec(kind=kind)
    path = tmp_path / "index.faiss"
    fi.save(index, path)
    assert path.exists() and not Path(f"{path}.tmp").exists()
    loaded = fi.load(path)
    assert fi.inner_kind(loaded) == kind and loaded.ntotal == N
    q = vecs[:200]
    s1, i1 = fi.search(index, spec, q, 10)
    s2, i2 = fi.search(loaded, spec, q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    # the loaded index can back a LiveIndex (needs reconstruct: IVF's direct map) and filtered search
    live = LiveIndex(loaded, spec, DIM)
    allow = ids[::50]
    _, got = live.search(q[:5], 3, allow=allow)
    np.testing.assert_array_equal(got, brute_force(q[:5], allow, vecs[::50], 3))


# -- LiveIndex: delta, tombstones, replacement ----------------------------------------------------


def make_live(kind: str, data) -> tuple[LiveIndex, dict[int, np.ndarray]]:
    """A LiveIndex over a fresh main index, plus the truth: rid -> vector of every live row."""
    ids, vecs = data
    spec = IndexSpec(kind=kind)
    main = main_index(kind, data)
    live = LiveIndex(main, spec, DIM)
    assert live.main is main and main.ntotal == N
    return live, {int(r): vecs[i] for i, r in enumerate(ids)}


def mutate(live: LiveIndex, truth: dict[int, np.ndarray], data, seed: int = 7) -> dict[str, np.ndarray]:
    """Delete some main rows, add delta rows, delete some delta rows, replace some rows (new rid)."""
    ids, vecs = data
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N)
    deleted_main = ids[perm[:300]]
    live.remove(deleted_main)
    new_rids = np.arange(10**6, 10**6 + 200, dtype=np.int64)
    new_vecs = normalised(rng, 200)
    live.add(new_rids, new_vecs)
    deleted_delta = new_rids[:50]
    live.remove(deleted_delta)
    # replacement = remove the old revision's rid, add the new revision under a new rid
    replaced_old = ids[perm[300:340]]
    replaced_new = np.arange(2 * 10**6, 2 * 10**6 + 40, dtype=np.int64)
    replaced_vecs = normalised(rng, 40)
    live.remove(replaced_old)
    live.add(replaced_new, replaced_vecs)
    for r in [*deleted_main, *replaced_old]:
        truth.pop(int(r))
    for r, v in zip(new_rids[50:], new_vecs[50:], strict=True):
        truth[int(r)] = v
    for r, v in zip(replaced_new, replaced_vecs, strict=True):
        truth[int(r)] = v
    return {
        "deleted_main": deleted_main, "deleted_delta": deleted_delta, "new_rids": new_rids,
        "new_vecs": new_vecs, "replaced_old": replaced_old, "replaced_new": replaced_new,
        "replaced_vecs": replaced_vecs,
        "gone": np.concatenate([deleted_main, deleted_delta, replaced_old]),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_live_add_remove_tombstones(kind: str, data) -> None:
    ids, vecs = data
    live, truth = make_live(kind, data)
    m = mutate(live, truth, data)
    gone = set(m["gone"].tolist())
    assert live.ntotal == len(truth) == N - 300 - 40 + 150 + 40
    assert set(live.ids().tolist()) == set(truth)
    assert len(live.tombstones) == 340
    for r in list(gone)[:20]:
        assert not live.contains(int(r))
    assert live.contains(int(m["new_rids"][60])) and live.contains(int(m["replaced_new"][0]))
    assert all(live.contains(int(r)) for r in ids if int(r) in truth)

    # deleted rows are never returned, whatever the query (their own vectors included)
    gone_q = np.vstack([vecs[np.isin(ids, m["deleted_main"])], m["new_vecs"][:50],
                        vecs[np.isin(ids, m["replaced_old"])]])
    _, got = live.search(gone_q, 10)
    assert not (set(got.ravel().tolist()) & gone)
    assert (got >= 0).all()  # still k hits each
    # live rows find themselves first: main rows, delta rows, replaced rows (only the new rid)
    live_rids = np.fromiter(truth, np.int64)
    q = np.vstack([truth[int(r)] for r in live_rids])
    scores, got = live.search(q, 10)
    np.testing.assert_array_equal(got[:, 0], live_rids)
    assert not (set(got.ravel().tolist()) & gone)
    _, got = live.search(m["replaced_vecs"], 5)
    np.testing.assert_array_equal(got[:, 0], m["replaced_new"])
    assert not set(got.ravel().tolist()) & set(m["replaced_old"].tolist())

    # adding the same delta row again, or removing unknown rows, changes nothing
    before = live.ntotal
    live.add(m["new_rids"][60:70], m["new_vecs"][60:70])
    live.remove(np.array([123456789], np.int64))
    live.add([], np.empty((0, DIM), np.float32))
    assert live.ntotal == before


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_unfiltered_search_fills_top_k_with_half_deleted(kind: str, data) -> None:
    ids, vecs = data
    live, _ = make_live(kind, data)
    dead = ids[::2]
    live.remove(dead)
    scores, got = live.search(vecs[:100], 10)
    assert (got >= 0).all(), "fewer than top_k hits though 1,500 rows are live"
    assert not set(got.ravel().tolist()) & set(dead.tolist())
    np.testing.assert_array_equal(got[1::2, 0], ids[1:100:2])


# -- filtered search -----------------------------------------------------------------------------


@pytest.fixture(params=["exact", "selector"])
def filter_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Exercise both filtered-search paths: exact scoring of the allowed ids, and the index with an id selector."""
    if request.param == "selector":
        monkeypatch.setattr(live_mod, "EXACT_FILTER_LIMIT", 0)
    return request.param


@pytest.mark.parametrize("kind", KINDS)
def test_filtered_search_returns_top_k(kind: str, data, filter_path: str) -> None:
    ids, vecs = data
    live, truth = make_live(kind, data)
    m = mutate(live, truth, data)
    gone = set(m["gone"].tolist())
    rng = np.random.default_rng(99)
    queries = normalised(rng, 20)
    # a broad filter (about 1 in 6 rows), including delta rows and some rows that are gone
    allow = np.concatenate([ids[::6], m["new_rids"][::3], m["replaced_new"][::2]])
    allowed_live = np.array([r for r in allow.tolist() if r in truth], np.int64)
    scores, got = live.search(queries, 10, allow=allow)
    assert (got >= 0).all(), "filtered search came up short though plenty match"
    assert set(got.ravel().tolist()) <= set(allowed_live.tolist())
    assert not set(got.ravel().tolist()) & gone
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    if filter_path == "exact":
        np.testing.assert_array_equal(got, brute_force(queries, allowed_live, np.vstack([truth[r] for r in allowed_live.tolist()]), 10))
    # a very selective filter: 12 matching rows (main and delta), 3 gone ones, top_k=10
    main_live = ids[np.isin(ids, m["gone"], invert=True)]
    sel = np.concatenate([main_live[[5, 500, 1500, 2500]],
                          m["new_rids"][[60, 70, 80, 190]], m["replaced_new"][[1, 2, 3, 4]], m["deleted_main"][:3]])
    sel_live = np.array([r for r in sel.tolist() if r in truth], np.int64)
    assert sel_live.size == 12
    sel_vecs = np.vstack([truth[r] for r in sel_live.tolist()])
    scores, got = live.search(queries, 10, allow=sel)
    np.testing.assert_array_equal(got, brute_force(queries, sel_live, sel_vecs, 10))
    # fewer matches than top_k: all of them, then empty slots
    few = sel_live[:4]
    scores, got = live.search(queries[:3], 10, allow=few)
    for row in got:
        assert sorted(row[:4].tolist()) == sorted(few.tolist())
        assert (row[4:] == -1).all()
    assert np.isneginf(scores[:, 4:]).all()
    # nothing matches
    _, got = live.search(queries[:2], 5, allow=np.array([], np.int64))
    assert (got == -1).all()
    _, got = live.search(queries[:2], 5, allow=m["deleted_main"][:10])
    assert (got == -1).all()


def test_filtered_search_on_an_empty_main(data) -> None:
    """The base version of a new collection: an empty main index, everything in the delta."""
    ids, vecs = data
    spec = IndexSpec()
    live = LiveIndex(fi.build(spec, DIM, np.empty(0, np.int64), np.empty((0, DIM), np.float32)), spec, DIM)
    live.add(ids[:300], vecs[:300])
    live.remove(ids[:10])
    _, got = live.search(vecs[10:20], 1)
    np.testing.assert_array_equal(got[:, 0], ids[10:20])
    _, got = live.search(vecs[:5], 3, allow=ids[:40])
    assert set(got.ravel().tolist()) <= set(ids[10:40].tolist()) and (got >= 0).all()


# -- compaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_compaction_snapshot_round_trip(kind: str, data) -> None:
    live, truth = make_live(kind, data)
    m = mutate(live, truth, data)
    rids, vecs = live.snapshot()
    assert rids.dtype == np.int64 and vecs.shape == (len(truth), DIM)
    assert sorted(rids.tolist()) == sorted(truth)
    for r, v in zip(rids[::37], vecs[::37], strict=True):
        np.testing.assert_allclose(v, truth[int(r)], atol=1e-6)
    spec = IndexSpec(kind=kind)
    compacted = LiveIndex(fi.build(spec, DIM, rids, vecs), spec, DIM)
    assert fi.inner_kind(compacted.main) == kind
    assert compacted.ntotal == live.ntotal and compacted.delta.ntotal == 0 and not compacted.tombstones
    assert set(compacted.ids().tolist()) == set(truth)
    q = np.vstack([truth[int(r)] for r in rids[::10]])
    _, a = live.search(q, 1)
    _, b = compacted.search(q, 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b[:, 0], rids[::10])
    _, got = compacted.search(m["new_vecs"][:50], 10)
    assert not set(got.ravel().tolist()) & set(m["gone"].tolist())


def test_needs_compaction_after_many_tombstones(data) -> None:
    ids, vecs = data
    live, _ = make_live("flat", data)
    assert not live.needs_compaction()
    live.remove(ids[:1001])
    assert live.needs_compaction()
