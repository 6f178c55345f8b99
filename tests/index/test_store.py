"""DocumentStore on both backends (a real SQLite file, a real PostgreSQL schema): documents, sequence numbers,
change feed, filters, vectors, feedback, jobs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from strop.index.store import Conflict, Document, DocumentStore, NotFound


@pytest.fixture()
def store(store_url: str) -> DocumentStore:
    s = DocumentStore(store_url)
    s.create_collection("docs", "text", "tiny", {"kind": "flat"})
    s.create_collection("other", "code", "tiny", {"kind": "auto"})
    yield s
    s.close()


def docs(*ids: str, **meta) -> list[Document]:
    return [Document(id=i, text=f"text of {i}", metadata=dict(meta)) for i in ids]


# -- collections ---------------------------------------------------------------------------------


def test_collections_create_get_list_delete(store: DocumentStore) -> None:
    rec = store.get_collection("docs")
    assert (rec.name, rec.modality, rec.encoder, rec.index_spec) == ("docs", "text", "tiny", {"kind": "flat"})
    assert rec.teacher is None and rec.teacher_metrics is None
    assert store.list_collections() == ["docs", "other"]
    with pytest.raises(Conflict):
        store.create_collection("docs", "text", "tiny", {})
    store.set_teacher("docs", "/models/teacher", {"mrr@10": 0.5})
    rec = store.get_collection("docs")
    assert rec.teacher == "/models/teacher" and rec.teacher_metrics == {"mrr@10": 0.5}
    assert [store.next_version_number("docs") for _ in range(3)] == [1, 2, 3]
    assert store.next_version_number("other") == 1
    store.delete_collection("other")
    assert store.list_collections() == ["docs"]
    with pytest.raises(NotFound):
        store.get_collection("other")
    with pytest.raises(NotFound):
        store.delete_collection("other")
    with pytest.raises(NotFound):
        store.next_version_number("other")


# -- documents -----------------------------------------------------------------------------------


def test_upsert_get_delete(store: DocumentStore) -> None:
    out = store.upsert("docs", [Document("a", "alpha", metadata={"k": 1}), Document("b", "beta")])
    assert [d.id for d in out] == ["a", "b"]
    assert all(d.rid == d.seq and d.rid > 0 for d in out)
    got = store.get("docs", "a")
    assert (got.id, got.text, got.metadata, got.rid) == ("a", "alpha", {"k": 1}, out[0].rid)
    assert store.count("docs") == 2
    assert set(store.get_many("docs", ["a", "b", "zzz", "a"])) == {"a", "b"}

    seq = store.delete("docs", "a")
    assert seq > out[1].seq
    with pytest.raises(NotFound):
        store.get("docs", "a")
    with pytest.raises(NotFound):
        store.delete("docs", "a")  # already deleted
    with pytest.raises(NotFound):
        store.delete("docs", "never")
    assert store.count("docs") == 1
    assert set(store.get_many("docs", ["a", "b"])) == {"b"}
    assert out[0].rid not in store.by_rids([out[0].rid, out[1].rid])
    # documents are per collection
    with pytest.raises(NotFound):
        store.get("other", "b")
    with pytest.raises(NotFound):
        store.upsert("missing", docs("x"))
    # a deleted id can be written again, with a fresh rid
    again = store.upsert("docs", [Document("a", "alpha again")])
    assert again[0].rid > seq and store.get("docs", "a").text == "alpha again"
    assert store.upsert("docs", []) == []


def test_image_bytes_round_trip(store: DocumentStore) -> None:
    blob = bytes(range(256)) * 3
    store.upsert("docs", [Document("img", "brand", image=blob)])
    assert store.get("docs", "img").image == blob


def test_seq_is_monotonic_across_collections_and_threads(store: DocumentStore) -> None:
    seqs: list[int] = []
    for i in range(5):
        seqs += [d.seq for d in store.upsert("docs" if i % 2 else "other", docs(f"d{i}", f"e{i}"))]
    seqs.append(store.delete("docs", "d1"))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert store.watermark() == seqs[-1]

    got: list[int] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        for j in range(25):
            out = store.upsert("docs", docs(f"t{t}-{j}-a", f"t{t}-{j}-b"))
            with lock:
                got.extend(d.seq for d in out)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 200 and len(set(got)) == 200
    assert min(got) > seqs[-1] and store.watermark() == max(got)
    assert store.count("docs") == 3 + 200  # d1, e1, d3, e3 minus the deleted d1


def test_second_connection_sees_committed_writes(store: DocumentStore) -> None:
    other = DocumentStore(store.url)  # another process opening the same file
    store.upsert("docs", docs("a"))
    assert other.get("docs", "a").text == "text of a"
    other.upsert("docs", [Document("b", "from the other side")])
    assert store.get("docs", "b").text == "from the other side"
    assert store.watermark() == other.watermark()
    other.close()


def test_replacement_gets_new_rid(store: DocumentStore) -> None:
    (first,) = store.upsert("docs", [Document("a", "old text", metadata={"v": 1})])
    (second,) = store.upsert("docs", [Document("a", "new text", metadata={"v": 2})])
    assert second.rid > first.rid and second.seq > first.seq
    assert store.count("docs") == 1
    cur = store.get("docs", "a")
    assert (cur.text, cur.metadata, cur.rid) == ("new text", {"v": 2}, second.rid)
    by = store.by_rids([first.rid, second.rid])
    assert list(by) == [second.rid] and by[second.rid].text == "new text"
    assert store.live_rids("docs") == {"a": second.rid}
    assert [d.id for d in store.iter_documents("docs")] == ["a"]


def test_iter_documents_and_watermark(store: DocumentStore) -> None:
    out = store.upsert("docs", docs(*[f"d{i:03d}" for i in range(25)]))
    mark = store.watermark()
    store.upsert("docs", docs("late"))
    store.delete("docs", "d003")
    all_docs = list(store.iter_documents("docs", batch=7))
    assert [d.id for d in all_docs] == [f"d{i:03d}" for i in range(25) if i != 3] + ["late"]
    assert [d.rid for d in all_docs] == sorted(d.rid for d in all_docs)
    upto = [d.id for d in store.iter_documents("docs", max_seq=mark, batch=4)]
    assert upto == [f"d{i:03d}" for i in range(25) if i != 3]
    assert next(store.iter_documents("docs", with_images=False)).rid == out[0].rid


def test_change_feed(store: DocumentStore) -> None:
    base = store.watermark()
    a, b, c = store.upsert("docs", docs("a", "b", "c"))
    store.upsert("other", docs("x"))  # another collection: not in this feed
    (a2,) = store.upsert("docs", [Document("a", "a v2")])
    del_seq = store.delete("docs", "b")
    ch = store.changes_since("docs", base)
    # one row per document, its current state, ordered by the seq of its last change
    assert [(x.id, x.rid, x.deleted) for x in ch] == [("c", c.rid, False), ("a", a2.rid, False), ("b", b.rid, True)]
    assert [x.seq for x in ch] == [c.seq, a2.seq, del_seq]
    assert [x.id for x in store.changes_since("docs", a2.seq)] == ["b"]
    assert store.changes_since("docs", del_seq) == []
    assert len(store.changes_since("docs", base, limit=2)) == 2


# -- metadata filters ---------------------------------------------------------------------------


def test_filter_rids_types_and_and(store: DocumentStore) -> None:
    rows = [
        ("s1", {"lang": "en", "n": 1, "flag": True, "opt": None}),
        ("s2", {"lang": "en", "n": 2, "flag": False, "opt": "x"}),
        ("s3", {"lang": "de", "n": 1, "flag": True, "opt": None}),
        ("s4", {"lang": "en", "n": 1, "flag": False}),
        ("s5", {"lang": "1", "n": "1", "flag": 1, "opt": 0}),  # look-alikes of other types
        ("s6", {"lang": "en", "n": 1.5, "flag": True, "weird key.with$chars": "yes"}),
    ]
    out = store.upsert("docs", [Document(i, i, metadata=m) for i, m in rows])
    rid = {d.id: d.rid for d in out}

    def ids(where: dict) -> set[str]:
        back = {v: k for k, v in rid.items()}
        got = store.filter_rids("docs", where)
        assert got.dtype == np.int64
        return {back[int(r)] for r in got}

    assert ids({"lang": "en"}) == {"s1", "s2", "s4", "s6"}
    assert ids({"lang": "1"}) == {"s5"}
    assert ids({"n": 1}) == {"s1", "s3", "s4"}  # not the string "1", not 1.5
    assert ids({"n": "1"}) == {"s5"}
    assert ids({"n": 1.5}) == {"s6"}
    assert ids({"flag": True}) == {"s1", "s3", "s6"}  # not the integer 1
    assert ids({"flag": False}) == {"s2", "s4"}
    assert ids({"flag": 1}) == {"s5"}  # not True
    assert ids({"opt": None}) == {"s1", "s3"}  # explicit null; not 0, not "x"
    assert ids({"opt": 0}) == {"s5"}
    assert ids({"weird key.with$chars": "yes"}) == {"s6"}
    # several keys: AND
    assert ids({"lang": "en", "n": 1}) == {"s1", "s4"}
    assert ids({"lang": "en", "n": 1, "flag": True}) == {"s1"}
    assert ids({"lang": "en", "n": 1, "flag": True, "opt": None}) == {"s1"}
    assert ids({"lang": "de", "flag": False}) == set()
    assert ids({"nope": "x"}) == set()
    assert ids({}) == set(rid)
    # deleted and replaced rows drop out; other collections never leak in
    store.delete("docs", "s1")
    store.upsert("docs", [Document("s4", "s4", metadata={"lang": "fr"})])
    store.upsert("other", [Document("o1", "o", metadata={"lang": "en"})])
    assert ids({"lang": "en"}) == {"s2", "s6"}
    assert len(store.filter_rids("other", {"lang": "en"})) == 1


# -- vectors ---------------------------------------------------------------------------------------


def test_vectors_table(store: DocumentStore) -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    out = store.upsert("docs", docs("a", "b", "c"), vectors={"v0001": v})
    rids = [d.rid for d in out]
    got = store.get_vectors("v0001", rids, 8)
    assert set(got) == set(rids)
    for i, r in enumerate(rids):
        np.testing.assert_array_equal(got[r], v[i])
    assert store.get_vectors("v0001", rids, 16) == {}  # wrong dim: ignored, not mis-shaped
    assert store.get_vectors("v0002", rids, 8) == {}

    w = rng.standard_normal((2, 8)).astype(np.float32)
    store.put_vectors("v0002", rids[:2], w)
    np.testing.assert_array_equal(store.get_vectors("v0002", rids, 8)[rids[1]], w[1])

    # replacing a document drops the old revision's vectors (every version); deleting too
    (a2,) = store.upsert("docs", [Document("a", "a v2")])
    assert rids[0] not in store.get_vectors("v0001", rids, 8)
    assert rids[0] not in store.get_vectors("v0002", rids, 8)
    assert store.get_vectors("v0001", [a2.rid], 8) == {}
    store.delete("docs", "b")
    assert set(store.get_vectors("v0001", rids, 8)) == {rids[2]}

    store.drop_vectors("v0001")
    assert store.get_vectors("v0001", rids, 8) == {}
    # deleting a collection removes its vectors
    (o,) = store.upsert("other", docs("x"), vectors={"v0009": v[:1]})
    store.delete_collection("other")
    assert store.get_vectors("v0009", [o.rid], 8) == {}


def test_vector_deletes_by_rid_use_an_index(store: DocumentStore) -> None:
    # a rewritten or deleted document (and every document of a deleted collection) drops its vectors by rid;
    # a table scan there made deleting a 14k-document collection take minutes under the write lock
    if store.dialect == "postgresql":  # a plan on an empty table is a scan whatever: ask for the index's use
        with store._tx() as db:
            db.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(r[0]) for r in db.execute("EXPLAIN DELETE FROM vectors WHERE rid = ?", (1,)))
        assert "vectors_rid" in plan, plan
        return
    plan = " ".join(str(r[-1]) for r in store._conn().execute("EXPLAIN QUERY PLAN DELETE FROM vectors WHERE rid = ?",
                                                              (1,)))
    assert "USING" in plan and "INDEX" in plan and "vectors_rid" in plan, plan


# -- feedback -------------------------------------------------------------------------------------


def test_feedback(store: DocumentStore) -> None:
    assert store.list_feedback("docs") == []
    f1 = store.add_feedback("docs", "q one", ["a"], ["b", "c"])
    f2 = store.add_feedback("docs", "q two", ["d"], [])
    store.add_feedback("other", "q other", ["x"], [])
    assert f2 > f1 > 0
    assert store.list_feedback("docs") == [
        {"query": "q one", "positive_ids": ["a"], "negative_ids": ["b", "c"]},
        {"query": "q two", "positive_ids": ["d"], "negative_ids": []},
    ]
    store.delete_collection("docs")
    assert store.list_feedback("docs") == []
    assert len(store.list_feedback("other")) == 1


# -- jobs ------------------------------------------------------------------------------------------


def test_jobs_and_compare_and_set(store: DocumentStore) -> None:
    store.create_job("j1", "docs", "encoder", {"train": {"source": "feedback"}})
    store.create_job("j2", "other", "teacher", {})
    j = store.get_job("j1")
    assert (j["state"], j["stage"], j["spec"], j["progress"], j["metrics"]) == (
        "queued", "queued", {"train": {"source": "feedback"}}, {}, {})
    with pytest.raises(NotFound):
        store.get_job("nope")

    store.update_job("j1", state="running", stage="train", progress={"step": 3, "total_steps": 10}, started_at=1.0)
    j = store.get_job("j1")
    assert (j["state"], j["stage"], j["progress"], j["started_at"]) == ("running", "train", {"step": 3, "total_steps": 10}, 1.0)
    with pytest.raises(ValueError):
        store.update_job("j1", collection="hijack")

    # CAS: only from the given states
    assert store.finish_job_if("j1", ["queued"], state="cancelled") is False
    assert store.get_job("j1")["state"] == "running"
    assert store.finish_job_if("j1", ["queued", "running"], state="succeeded", version="v0002",
                               metrics={"after": {"mrr@10": 0.7}}, finished_at=2.0) is True
    j = store.get_job("j1")
    assert (j["state"], j["version"], j["metrics"], j["finished_at"]) == ("succeeded", "v0002", {"after": {"mrr@10": 0.7}}, 2.0)
    # a late cancel (or a second finisher) loses the race and changes nothing
    assert store.finish_job_if("j1", ["queued", "running"], state="cancelled", error="late") is False
    j = store.get_job("j1")
    assert (j["state"], j["error"]) == ("succeeded", None)
    assert store.finish_job_if("nope", ["queued"], state="failed") is False

    # concurrent finishers: exactly one wins
    store.create_job("j3", "docs", "encoder", {})
    wins: list[bool] = []
    lock = threading.Lock()

    def finisher(state: str) -> None:
        ok = store.finish_job_if("j3", ["queued", "running"], state=state)
        with lock:
            wins.append(ok)

    threads = [threading.Thread(target=finisher, args=(s,)) for s in ("succeeded", "failed", "cancelled", "rejected")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]

    assert [j["id"] for j in store.list_jobs("docs")] == ["j3", "j1"]
    assert {j["id"] for j in store.list_jobs()} == {"j1", "j2", "j3"}


def test_postgres_replicas_opening_a_fresh_schema_together(pg_url: str) -> None:
    failures: list[str] = []
    barrier = threading.Barrier(6)

    def open_store() -> None:
        barrier.wait()
        try:
            DocumentStore(pg_url).close()
        except Exception as e:  # noqa: BLE001  (collected and reported below)
            failures.append(repr(e))

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]


def test_replicas_opening_a_fresh_database_together(tmp_path):
    """Compose starts API replicas and a trainer at once on an empty volume: every one must open the
    store. Without the WAL retry, about 1 in 150 of these opens failed with "database is locked"."""
    failures: list[str] = []
    for trial in range(60):
        path = tmp_path / f"s{trial}.db"
        barrier = threading.Barrier(8)

        def open_store(path=path, barrier=barrier) -> None:
            barrier.wait()
            try:
                DocumentStore(path)
            except Exception as e:  # noqa: BLE001  (collected and reported below)
                failures.append(repr(e))

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures[:3]


def test_a_newer_or_half_migrated_schema_is_refused(store_url: str) -> None:
    from strop.index.sqlbackend import SchemaError

    store = DocumentStore(store_url)
    with store._tx() as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(SchemaError, match="newer than this strop"):
        DocumentStore(store_url)
    with store._tx() as db:
        db.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
        db.execute("INSERT INTO meta (name, value) VALUES ('migrating_to', '2')")
    with pytest.raises(SchemaError, match="did not finish"):
        DocumentStore(store_url)
    with store._tx() as db:
        db.execute("DELETE FROM meta WHERE name = 'migrating_to'")
    DocumentStore(store_url).close()
    store.close()
