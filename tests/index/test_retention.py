"""Version retention on real parts (SQLite store, FAISS versions on disk): what is kept, what is freed, what a
crash leaves and how opening a collection finishes it."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from strop.index import retention
from strop.index.collection import write_version
from strop.index.faiss_index import IndexSpec
from strop.index.retention import clean_versions, pin_active, prune_versions, version_sizes
from strop.index.store import Document, DocumentStore
from strop.index.versions import VersionStore, new_version_id

DIM = 8


@pytest.fixture()
def store(tmp_path: Path) -> DocumentStore:
    s = DocumentStore(tmp_path / "strop.db")
    s.create_collection("docs", "text", "tiny", {})
    s.create_collection("other", "text", "tiny", {})
    yield s
    s.close()


@pytest.fixture()
def vs(tmp_path: Path) -> VersionStore:
    return VersionStore(tmp_path, "docs").ensure()


def add_versions(store: DocumentStore, vs: VersionStore, n: int, with_encoder: bool = True) -> list[str]:
    """``n`` real versions (FAISS index over the live documents, a small encoder directory), each with
    vector rows in the store for one document written after it."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        vid = new_version_id(store.next_version_number(vs.collection))
        live = store.live_rids(vs.collection)
        rids = np.fromiter(live.values(), np.int64, count=len(live))

        def save(p: Path) -> None:
            p.mkdir()
            (p / "model.safetensors").write_bytes(os.urandom(4096))

        write_version(vs, vid, rids, rng.standard_normal((len(rids), DIM)).astype(np.float32), DIM,
                      IndexSpec.from_dict({"kind": "flat"}), store.watermark(),
                      save_encoder=save if with_encoder else None)
        store.upsert(vs.collection, [Document(f"after-{vid}", f"written after {vid}")],
                     vectors={vid: rng.standard_normal((1, DIM)).astype(np.float32)})
        out.append(vid)
        time.sleep(0.002)  # distinct created_at
    return out


def rows(store: DocumentStore, collection: str = "docs") -> dict[str, int]:
    return {v: n for v, (n, _) in store.vector_usage(collection).items()}


def names(vs: VersionStore) -> list[str]:
    return sorted(p.name for p in vs.versions.iterdir())


def running_job(store: DocumentStore, job_id: str, collection: str = "docs", beat: float | None = None) -> None:
    store.create_job(job_id, collection, "encoder", {})
    now = time.time()
    assert store.finish_job_if(job_id, ("queued",), state="running", started_at=now,
                               heartbeat_at=now if beat is None else beat)


def test_keeps_active_and_the_newest_others(store: DocumentStore, vs: VersionStore) -> None:
    store.upsert("docs", [Document(f"d{i}", f"text {i}") for i in range(5)])
    vids = add_versions(store, vs, 6)
    # the same version ids in another collection: their rows are not this collection's to drop
    other = VersionStore(vs.root.parent.parent, "other").ensure()
    store.upsert("other", [Document("o", "other text")])
    add_versions(store, other, 3)
    other_rows = rows(store, "other")
    assert rows(store) == {v: 1 for v in vids}

    vs.activate("v0002")  # rolled back to an old one
    removed = prune_versions(store, vs, keep=2)
    assert removed == ["v0001", "v0003", "v0004"]
    assert [m["id"] for m in vs.list()] == ["v0002", "v0005", "v0006"]
    assert names(vs) == ["v0002", "v0005", "v0006"]  # no .trash-* left, encoder directories gone with them
    assert rows(store) == {"v0002": 1, "v0005": 1, "v0006": 1}
    assert rows(store, "other") == other_rows
    assert vs.active() == "v0002"
    vs.verify("v0002")

    vs.activate("v0006")
    assert prune_versions(store, vs, keep=0) == ["v0002", "v0005"]
    assert names(vs) == ["v0006"] and rows(store) == {"v0006": 1}
    assert prune_versions(store, vs, keep=0) == []  # never the active one
    assert [m["id"] for m in vs.list()] == ["v0006"]
    assert prune_versions(store, vs, keep=5) == []


def test_nothing_is_removed_without_an_active_version_or_with_negative_keep(store: DocumentStore, vs: VersionStore) -> None:
    add_versions(store, vs, 3)
    assert prune_versions(store, vs, keep=0) == []
    assert len(vs.list()) == 3
    vs.activate("v0003")
    assert prune_versions(store, vs, keep=-1) == []  # negative: retention off
    assert len(vs.list()) == 3


def test_protected_and_pinned_versions_survive(store: DocumentStore, vs: VersionStore) -> None:
    add_versions(store, vs, 6)
    vs.activate("v0001")
    running_job(store, "job-a")
    assert pin_active(store, vs, "job-a") == "v0001"  # the job snapshots v0001 ...
    vs.activate("v0006")  # ... which stops being active while the job runs
    running_job(store, "job-stale", beat=time.time() - 3600)  # a job whose worker died unnoticed
    store.pin_version("docs", "v0002", "job-stale")
    store.create_job("job-done", "docs", "encoder", {})
    store.pin_version("docs", "v0003", "job-done")
    assert store.finish_job_if("job-done", ("queued",), state="succeeded")

    removed = prune_versions(store, vs, keep=1, protected=["v0004"])
    assert removed == ["v0002", "v0003"]
    assert [m["id"] for m in vs.list()] == ["v0001", "v0004", "v0005", "v0006"]
    assert store.pinned_versions("docs") == {"v0001"}
    # the dead jobs' pins are gone from the table
    assert [r[0] for r in store._conn().execute("SELECT owner FROM version_pins")] == ["job-a"]

    # the job ends: its parent is no longer protected
    assert store.finish_job_if("job-a", ("running",), state="succeeded")
    assert prune_versions(store, vs, keep=1) == ["v0001", "v0004"]
    assert [m["id"] for m in vs.list()] == ["v0005", "v0006"]

    # a job that just activated its own version releases its pin as it prunes
    running_job(store, "job-b")
    assert pin_active(store, vs, "job-b") == "v0006"
    (v7,) = add_versions(store, vs, 1)
    vs.activate(v7)
    assert prune_versions(store, vs, keep=0, release="job-b") == ["v0005", "v0006"]
    assert store.pinned_versions("docs") == set()


def test_a_deleted_collection_takes_its_pins(store: DocumentStore, vs: VersionStore) -> None:
    store.pin_version("docs", "v0001", "tool")
    assert store.pinned_versions("docs") == {"v0001"}  # an owner that is not a job: until unpinned
    store.delete_collection("docs")
    assert store.pinned_versions("docs") == set()


def test_leftovers_of_a_crashed_removal_are_finished_on_open(store: DocumentStore, vs: VersionStore) -> None:
    add_versions(store, vs, 3)
    vs.activate("v0003")
    # a removal killed after hiding v0001 (rows and files still there) ...
    os.rename(vs.path("v0001"), vs.versions / ".trash-v0001-deadbeef")
    # ... and one killed halfway through deleting v0002's files
    half = vs.versions / ".trash-v0002-cafebabe"
    os.rename(vs.path("v0002"), half)
    shutil.rmtree(half / "encoder")
    # rows another process wrote for a version that is gone
    (d,) = store.upsert("docs", [Document("late", "late")], vectors={"v0000": np.ones((1, DIM), np.float32)})
    assert [m["id"] for m in vs.list()] == ["v0003"]  # hidden versions are never listed
    assert rows(store) == {"v0000": 1, "v0001": 1, "v0002": 1, "v0003": 1}

    clean_versions(store, vs)
    assert names(vs) == ["v0003"]
    assert rows(store) == {"v0003": 1}
    vs.verify("v0003")
    assert store.get("docs", "late").rid == d.rid  # documents are untouched


def test_kill_points_are_hooked_in_order(store: DocumentStore, vs: VersionStore, monkeypatch) -> None:
    add_versions(store, vs, 3)
    vs.activate("v0003")
    seen = []

    def fault(step: str, vid: str) -> None:
        hidden = sorted(p.name.split("-")[1] for p in vs.versions.glob(".trash-*"))
        seen.append((step, vid, hidden, sorted(rows(store))))

    monkeypatch.setattr(retention, "_fault", fault)
    assert prune_versions(store, vs, keep=0) == ["v0001", "v0002"]
    assert seen == [
        ("chosen", "v0001", [], ["v0001", "v0002", "v0003"]),
        ("chosen", "v0002", [], ["v0001", "v0002", "v0003"]),
        ("hidden", "v0001", ["v0001", "v0002"], ["v0001", "v0002", "v0003"]),
        ("rows_dropped", "v0001", ["v0001", "v0002"], ["v0002", "v0003"]),
        ("hidden", "v0002", ["v0002"], ["v0002", "v0003"]),
        ("rows_dropped", "v0002", ["v0002"], ["v0003"]),
    ]


def test_a_failed_removal_does_not_raise(store: DocumentStore, vs: VersionStore, monkeypatch) -> None:
    add_versions(store, vs, 3)
    vs.activate("v0003")

    def fault(step: str, vid: str) -> None:
        if step == "rows_dropped" and vid == "v0001":
            raise OSError("disk went away")

    monkeypatch.setattr(retention, "_fault", fault)
    assert prune_versions(store, vs, keep=0) == ["v0002"]  # v0001 waits for the next open
    assert [m["id"] for m in vs.list()] == ["v0003"]
    monkeypatch.setattr(retention, "_fault", None)
    clean_versions(store, vs)
    assert names(vs) == ["v0003"]


def test_activation_and_pruning_share_the_collection_lock(vs: VersionStore) -> None:
    with vs.lock():
        fd = os.open(vs.root / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(vs.root / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)


def test_version_sizes(store: DocumentStore, vs: VersionStore) -> None:
    store.upsert("docs", [Document(f"d{i}", f"text {i}") for i in range(4)])
    add_versions(store, vs, 1, with_encoder=False)
    add_versions(store, vs, 1)
    sizes = version_sizes(store, vs)
    assert list(sizes) == ["v0001", "v0002"]
    for vid, s in sizes.items():
        disk = sum(p.stat().st_size for p in vs.path(vid).rglob("*") if p.is_file())
        assert s == {"bytes": disk + DIM * 4, "disk_bytes": disk, "vector_bytes": DIM * 4, "vector_rows": 1}
    assert sizes["v0002"]["disk_bytes"] >= sizes["v0001"]["disk_bytes"] + 4096  # its encoder weights
