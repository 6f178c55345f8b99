"""Version retention through the API on real parts (SQLite, FAISS, the tiny encoder): activations free old
versions, the bytes each version holds are reported, and a removal killed with SIGKILL at any step leaves a
collection that opens, searches and finishes the removal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from strop.index.collection import build_version
from strop.index.faiss_index import IndexSpec
from strop.index.store import DocumentStore
from strop.index.versions import new_version_id


def doc(i: int) -> dict:
    return {"id": f"d{i:03d}", "text": f"note {i}: the {i % 9} quick foxes near lake {i * 13 % 97}"}


def put(client, docs: list[dict]) -> None:
    r = client.put("/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 200, r.text


def search(client, query: str) -> dict:
    r = client.post("/collections/docs/search", json={"query": query, "top_k": 3})
    assert r.status_code == 200, r.text
    return r.json()


def versions_dir(data_dir: Path) -> Path:
    return data_dir / "collections" / "docs" / "versions"


def new_versions(client, tiny_encoder_path: str, n: int) -> list[str]:
    """``n`` versions the way a job writes them (own encoder weights, FAISS index over every live
    document), each activated in turn with a document written while it serves (a vector row)."""
    manager = client.app.state.manager
    out = []
    for _ in range(n):
        st = manager.state("docs")
        vid = new_version_id(manager.store.next_version_number("docs"))
        build_version(manager.store, st.vstore, vid, st.served.model.batcher.encode_sync,
                      st.served.model.encoder.dim, IndexSpec(kind="flat"), encoder_ref=st.record.encoder,
                      save_encoder=lambda p: shutil.copytree(tiny_encoder_path, p), parent=st.served.id)
        assert client.post(f"/collections/docs/versions/{vid}/activate").status_code == 200
        put(client, [{"id": f"during-{vid}", "text": f"written while {vid} served"}])
        out.append(vid)
        time.sleep(0.002)  # distinct created_at
    return out


def vector_rows(data_dir: Path) -> dict[str, int]:
    store = DocumentStore(data_dir / "strop.db")
    try:
        return {v: n for v, (n, _) in store.vector_usage("docs").items()}
    finally:
        store.close()


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_activations_keep_retention_and_report_bytes(make_client, tiny_encoder_path, data_dir) -> None:
    client = make_client(version_retention=2)
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(40)])
    base = client.get("/collections/docs").json()["version"]["id"]
    made = new_versions(client, tiny_encoder_path, 4)  # v0002..v0005, each activated through the API
    kept = made[-3:]  # the active one and the two newest others
    listed = client.get("/collections/docs/versions").json()
    assert [v["id"] for v in listed["versions"]] == kept and listed["active"] == made[-1]
    assert sorted(p.name for p in versions_dir(data_dir).iterdir()) == kept  # no .trash-* left
    assert set(vector_rows(data_dir)) == set(kept)  # the removed versions' rows went with them
    assert base not in [v["id"] for v in listed["versions"]]

    # the bytes each version holds: its directory (index, manifest, encoder weights) plus its vector rows
    rows = vector_rows(data_dir)
    dim = client.app.state.manager.state("docs").served.model.encoder.dim
    for v in listed["versions"]:
        disk = disk_bytes(versions_dir(data_dir) / v["id"])
        assert disk > disk_bytes(Path(tiny_encoder_path))  # the encoder weights are counted
        assert v["disk_bytes"] == disk and v["vector_bytes"] == rows[v["id"]] * dim * 4
        assert v["bytes"] == disk + v["vector_bytes"]
    storage = client.get("/collections/docs").json()["storage"]
    assert storage["retention"] == 2
    assert [(s["id"], s["bytes"], s["active"]) for s in storage["versions"]] == \
        [(v["id"], v["bytes"], v["active"]) for v in listed["versions"]]
    assert storage["bytes"] == sum(v["bytes"] for v in listed["versions"])

    # rolling back to a kept older version removes nothing (the two newest others are kept) and serves it
    assert client.post(f"/collections/docs/versions/{kept[0]}/activate").json()["active"] == kept[0]
    assert [v["id"] for v in client.get("/collections/docs/versions").json()["versions"]] == kept
    assert search(client, doc(7)["text"])["version"] == kept[0]
    # a removed version is gone for good
    r = client.post(f"/collections/docs/versions/{made[0]}/activate")
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
    # the list of collections does not walk version directories
    assert client.get("/collections").json()["collections"][0]["storage"] is None


PRUNE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from strop.index import retention
    from strop.index.store import DocumentStore
    from strop.index.versions import VersionStore

    data_dir, step, target, marker = sys.argv[1:]

    def fault(s, vid):
        if (s, vid) == (step, target):
            Path(marker).write_text("here")
            time.sleep(600)  # killed here

    retention._fault = fault
    retention.prune_versions(DocumentStore(Path(data_dir) / "strop.db"), VersionStore(data_dir, "docs"), keep=1)
    Path(marker).write_text("finished")
""")


@pytest.mark.parametrize("step", ["chosen", "hidden", "rows_dropped"])
def test_kill_during_pruning_then_a_clean_start(make_client, tiny_encoder_path, data_dir, tmp_path, step) -> None:
    client = make_client(version_retention=100)
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    put(client, [doc(i) for i in range(40)])
    base = client.get("/collections/docs").json()["version"]["id"]
    made = new_versions(client, tiny_encoder_path, 4)
    assert client.post(f"/collections/docs/versions/{base}/activate").status_code == 200  # serve the oldest
    before = search(client, doc(11)["text"])
    client.__exit__(None, None, None)
    assert set(vector_rows(data_dir)) == {base, *made}

    # keep=1: the active base and the newest other stay; made[0..2] go, and the process dies on made[1]
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", PRUNE, str(data_dir), step, made[1], str(marker)],
                            start_new_session=True)
    try:
        end = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert marker.exists() and marker.read_text() == "here", f"pruning never reached {step} (rc {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)

    left = sorted(p.name for p in versions_dir(data_dir).iterdir())
    trash = [n for n in left if n.startswith(".trash-")]
    rows = vector_rows(data_dir)
    if step == "chosen":  # killed holding the collection's lock, before anything moved
        assert left == sorted([base, *made]) and not trash
    elif step == "hidden":  # every doomed version hidden, the first one fully removed
        assert sorted(n for n in left if not n.startswith(".")) == [base, made[3]]
        assert sorted(n.split("-")[1] for n in trash) == [made[1], made[2]]
        assert set(rows) == {base, made[1], made[2], made[3]}
    else:  # and made[1]'s rows dropped too, its files not yet
        assert sorted(n.split("-")[1] for n in trash) == [made[1], made[2]]
        assert set(rows) == {base, made[2], made[3]}

    client = make_client(version_retention=100)  # a clean start over the same data dir
    info = client.get("/collections/docs").json()
    assert info["version"]["id"] == base and info["count"] == 40 + len(made)
    after = search(client, doc(11)["text"])
    assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]] and after["version"] == base
    kept = [base, *made] if step == "chosen" else [base, made[3]]
    assert [v["id"] for v in client.get("/collections/docs/versions").json()["versions"]] == kept
    assert sorted(p.name for p in versions_dir(data_dir).iterdir()) == sorted(kept)  # leftovers finished
    assert set(vector_rows(data_dir)) == set(kept)
    assert [v["id"] for v in info["storage"]["versions"]] == kept
    # the collection's lock died with the process: activation still works, and so does the next prune
    assert client.post(f"/collections/docs/versions/{made[3]}/activate").status_code == 200
    assert search(client, doc(11)["text"])["version"] == made[3]
