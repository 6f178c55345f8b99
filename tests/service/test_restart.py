"""Durability across restarts, and searches that keep answering while versions are hot-swapped."""

from __future__ import annotations

import threading
import time

import pytest

from strop.index.collection import build_version
from strop.index.faiss_index import IndexSpec
from strop.index.versions import new_version_id


def doc(i: int, **meta) -> dict:
    return {"id": f"d{i:03d}", "text": f"note {i}: the {i % 9} quick foxes near lake {i * 13 % 97}",
            "metadata": {"k": i % 3, **meta}}


def put(client, docs: list[dict]) -> None:
    r = client.put("/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 200, r.text


def hits(client, query: str, top_k: int = 5, **body) -> list[tuple[str, float]]:
    r = client.post("/collections/docs/search", json={"query": query, "top_k": top_k, **body})
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"]) for h in r.json()["hits"]]


QUERIES = ["the 3 quick foxes", "note 17", "lake 40", "quick foxes near lake", "note 5: the 5 quick foxes near lake 65"]


def snapshot(client) -> list[list[tuple[str, float]]]:
    return [hits(client, q, 8) for q in QUERIES] + [hits(client, q, 8, filter={"k": 1}) for q in QUERIES[:2]]


def same_hits(a, b) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert [i for i, _ in ra] == [i for i, _ in rb]
        assert [s for _, s in ra] == pytest.approx([s for _, s in rb], abs=1e-6)


def test_restart_keeps_documents_and_results(make_client) -> None:
    client = make_client()
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(80)])
    before = snapshot(client)
    version = client.get("/collections/docs").json()["version"]["id"]
    client.__exit__(None, None, None)

    client = make_client()  # same data dir
    info = client.get("/collections/docs").json()
    assert info["count"] == 80 and info["version"]["id"] == version
    same_hits(snapshot(client), before)
    assert client.get("/collections/docs/documents/d042").json()["text"] == doc(42)["text"]

    # delete + replace, restart: the deleted doc stays gone, the replacement's text is what's found
    assert client.delete("/collections/docs/documents/d007").status_code == 200
    put(client, [{"id": "d011", "text": "an entirely new body about violet submarines", "metadata": {"k": 9}}])
    after_edit = snapshot(client)
    client.__exit__(None, None, None)

    client = make_client()
    assert client.get("/collections/docs").json()["count"] == 79
    assert client.get("/collections/docs/documents/d007").status_code == 404
    found = hits(client, doc(7)["text"], 80)
    assert "d007" not in [i for i, _ in found] and len(found) == 79
    top = hits(client, "an entirely new body about violet submarines", 1)
    assert top[0][0] == "d011" and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert client.get("/collections/docs/documents/d011").json()["metadata"] == {"k": 9}
    assert [i for i, _ in hits(client, "violet submarines", 5, filter={"k": 9})] == ["d011"]
    old_text_hits = hits(client, doc(11)["text"], 3)
    assert old_text_hits[0][0] != "d011" or old_text_hits[0][1] < 0.999
    same_hits(snapshot(client), after_edit)


def test_restart_on_a_trained_version(make_client) -> None:
    """A non-base version (HNSW main index + writes after its watermark) survives a restart too."""
    client = make_client()
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(60)])
    manager = client.app.state.manager
    st = manager.state("docs")
    vid = new_version_id(manager.store.next_version_number("docs"))
    build_version(manager.store, st.vstore, vid, st.served.model.batcher.encode_sync, st.served.model.encoder.dim,
                  IndexSpec(kind="hnsw"), encoder_ref=st.record.encoder)
    assert client.post(f"/collections/docs/versions/{vid}/activate").status_code == 200
    put(client, [doc(i) for i in range(60, 70)])  # past the new version's watermark
    assert client.delete("/collections/docs/documents/d003").status_code == 200  # in its main index
    before = snapshot(client)
    client.__exit__(None, None, None)

    client = make_client()
    assert client.get("/collections/docs").json()["version"]["id"] == vid
    assert client.get("/collections/docs").json()["count"] == 69
    same_hits(snapshot(client), before)
    assert "d003" not in [i for i, _ in hits(client, doc(3)["text"], 69)]
    assert hits(client, doc(65)["text"], 1)[0][0] == "d065"


def test_searches_keep_answering_during_activation(make_client) -> None:
    client = make_client()
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(150)])
    manager = client.app.state.manager
    st = manager.state("docs")
    v1 = st.served.id
    model = st.served.model
    v2 = new_version_id(manager.store.next_version_number("docs"))
    build_version(manager.store, st.vstore, v2, model.batcher.encode_sync, model.encoder.dim,
                  IndexSpec(kind="hnsw"), encoder_ref=st.record.encoder, parent=v1)

    statuses: list[int] = []
    write_statuses: list[int] = []
    versions_seen: set[str] = set()
    wrong: list[str] = []
    written: list[dict] = []
    stop = threading.Event()

    def searcher() -> None:
        i = 0
        while not stop.is_set() or len(statuses) < 100:
            d = doc(i % 149)  # d149 is deleted midway
            r = client.post("/collections/docs/search", json={"query": d["text"], "top_k": 3})
            statuses.append(r.status_code)
            if r.status_code == 200:
                body = r.json()
                versions_seen.add(body["version"])
                if not body["hits"] or body["hits"][0]["id"] != d["id"]:
                    wrong.append(d["id"])
            i += 1

    def writer() -> None:  # writes acknowledged while activations load, catch up and swap
        n = 0
        while not stop.is_set() or n < 10:
            batch = [doc(1000 + 4 * n + j, batch=n) for j in range(4)]
            r = client.put("/collections/docs/documents", json={"documents": batch})
            write_statuses.append(r.status_code)
            if r.status_code == 200:
                written.extend(batch)
            n += 1

    threads = [threading.Thread(target=searcher) for _ in range(2)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        for n, target in enumerate([v2, v1, v2, v1, v2, v1, v2]):
            r = client.post(f"/collections/docs/versions/{target}/activate")
            assert r.status_code == 200, r.text
            assert r.json()["active"] == target
            if n == 3:
                assert client.delete("/collections/docs/documents/d149").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(statuses) >= 100
    assert [s for s in statuses + write_statuses if s != 200] == []
    assert wrong == []  # every answer was correct, whichever version served it
    assert versions_seen == {v1, v2}
    assert len(written) >= 40

    time.sleep(0.6)  # a few poll intervals: the poller must not undo or redo an activation
    body = client.get("/collections/docs/versions").json()
    assert body["active"] == v2 == st.vstore.active() == manager.state("docs").served.id
    # every acknowledged document is findable, the deleted one is not
    info = client.get("/collections/docs").json()
    assert info["count"] == 150 - 1 + len(written) and info["version"]["id"] == v2
    assert manager.state("docs").served.live.ntotal == info["count"]
    missing = [d["id"] for d in [doc(i) for i in range(149)] + written if hits(client, d["text"], 1)[0][0] != d["id"]]
    assert missing == []
    assert "d149" not in [i for i, _ in hits(client, doc(149)["text"], 50)]
    assert len(hits(client, "quick foxes", 20, filter={"batch": 3})) == 4
    # and after one more swap back, still all there
    assert client.post(f"/collections/docs/versions/{v1}/activate").status_code == 200
    assert manager.state("docs").served.live.ntotal == info["count"]
    assert [d["id"] for d in written if hits(client, d["text"], 1)[0][0] != d["id"]] == []


def test_stale_announcement_does_not_undo_a_rollback(make_client) -> None:
    """Another process activated v2, then rolled back to v1; this process hears "v2" late (pub/sub or a poll
    that read the pointer just before the rollback). It must keep serving what ACTIVE names, and stay so."""
    client = make_client()
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(30)])
    manager = client.app.state.manager
    st = manager.state("docs")
    v1 = st.served.id
    v2 = new_version_id(manager.store.next_version_number("docs"))
    build_version(manager.store, st.vstore, v2, st.served.model.batcher.encode_sync, st.served.model.encoder.dim,
                  IndexSpec(kind="flat"), encoder_ref=st.record.encoder)
    assert st.vstore.active() == v1
    manager.activate("docs", v2, write_pointer=False)  # the late "v2 is active" event
    assert manager.state("docs").served.id == v1
    time.sleep(0.6)  # the poller follows the pointer: still v1
    assert manager.state("docs").served.id == v1
    assert client.post("/collections/docs/search", json={"query": "note 3", "top_k": 1}).json()["version"] == v1
    # an announcement that matches the pointer is followed
    st.vstore.activate(v2)  # written by another process
    manager.activate("docs", v2, write_pointer=False)
    assert manager.state("docs").served.id == v2
    assert hits(client, doc(12)["text"], 1)[0][0] == "d012"
