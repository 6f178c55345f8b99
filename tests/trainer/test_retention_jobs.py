"""Version retention with real jobs: real Redis, real rq workers in subprocesses, the tiny encoder, FAISS and
SQLite. Each activation (the trainer's publish, the API's rollback) frees what retention does not keep, and a
version a running job builds on is kept until the job ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_jobs import REDIS_URL, active, corpus, env, job_body, load, wait, workers  # noqa: F401 - fixtures

from strop.index.collection import build_version
from strop.index.faiss_index import IndexSpec
from strop.index.store import DocumentStore
from strop.index.versions import new_version_id

pytestmark = [pytest.mark.redis]


def versions(client) -> list[dict]:
    return client.get("/collections/code/versions").json()["versions"]


def follow(client, vid: str) -> None:
    """Wait until the API serves ``vid`` (pub/sub announcement or its poll of the active pointer)."""
    end = time.monotonic() + 30
    while active(client) != vid and time.monotonic() < end:
        time.sleep(0.1)
    assert active(client) == vid


def vector_rows(data_dir: Path) -> dict[str, int]:
    store = DocumentStore(data_dir / "strop.db")
    try:
        return {v: n for v, (n, _) in store.vector_usage("code").items()}
    finally:
        store.close()


def encoder_dirs(data_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in (data_dir / "collections" / "code" / "versions").glob("*/encoder"))


@pytest.mark.slow
def test_five_jobs_with_retention_two(make_client, env, corpus, workers, data_dir):  # noqa: F811
    client = make_client(redis_url=REDIS_URL, redis_prefix=env["STROP_REDIS_PREFIX"], version_retention=2)
    evals = load(client, corpus)
    made = [active(client)]
    last_bytes: dict[str, int] = {}  # each version's bytes as last reported
    workers.start(burst=False, STROP_VERSION_RETENTION="2")
    for i in range(5):
        job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=2)).json()["job_id"]
        job = wait(client, job_id)
        assert job["state"] == "succeeded", job
        assert job["details"]["snapshot"]["version"] == made[-1]  # built on the version active at its start
        made.append(job["version"])
        follow(client, job["version"])
        # a document written while this version serves: encoded by it, kept in its vector rows
        r = client.put("/collections/code/documents",
                       json={"documents": [{"id": f"late.doc{i}", "text": f"def late_{i}(): return {i}"}]})
        assert r.status_code == 200
        kept = made[-3:]  # the active version and the two newest others
        listed = versions(client)
        assert [v["id"] for v in listed] == kept
        assert encoder_dirs(data_dir) == [v for v in kept if v != made[0]]  # the base version has none
        assert set(vector_rows(data_dir)) == set(kept)
        storage = client.get("/collections/code").json()["storage"]
        assert [s["id"] for s in storage["versions"]] == kept
        assert storage["bytes"] == sum(v["bytes"] for v in listed)
        for v in listed:
            assert v["vector_bytes"] > 0 and v["disk_bytes"] > 0
            last_bytes[v["id"]] = v["bytes"]

    assert made == [new_version_id(n) for n in range(1, 7)]
    removed = made[:3]
    # what the three removed versions held is freed: files, encoder weights and vector rows
    assert all(last_bytes[v] > 0 for v in removed)
    total = client.get("/collections/code").json()["storage"]["bytes"]
    assert total == sum(last_bytes[v] for v in made[3:]) < sum(last_bytes.values())
    for v in removed:
        assert not (data_dir / "collections" / "code" / "versions" / v).exists()
    assert not list((data_dir / "collections" / "code" / "versions").glob(".*"))  # no .tmp-* or .trash-*
    store = DocumentStore(data_dir / "strop.db")
    assert store.pinned_versions("code") == set()  # every job released the version it built on
    store.close()
    log = (data_dir.parent / "worker0.log").read_text()
    assert all(f"removed version {v}" in log for v in removed)  # the trainer's publish freed them

    # the active version searches; rolling back to a kept older version works and serves it
    r = client.post("/collections/code/search", json={"query": evals["pairs"][0]["query"], "top_k": 3}).json()
    assert r["version"] == made[-1] and len(r["hits"]) == 3
    r = client.post(f"/collections/code/versions/{made[3]}/activate")
    assert r.status_code == 200 and r.json() == {"active": made[3], "previous": made[-1]}
    r = client.post("/collections/code/search", json={"query": evals["pairs"][0]["query"], "top_k": 3}).json()
    assert r["version"] == made[3] and len(r["hits"]) == 3
    assert [v["id"] for v in versions(client)] == made[3:]  # the two newest others stay for roll-forward
    r = client.post(f"/collections/code/versions/{made[1]}/activate")
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"


@pytest.mark.slow
def test_a_running_jobs_parent_is_kept(make_client, env, corpus, workers, data_dir):  # noqa: F811
    client = make_client(redis_url=REDIS_URL, redis_prefix=env["STROP_REDIS_PREFIX"], version_retention=0)
    evals = load(client, corpus)
    parent = active(client)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=2)).json()["job_id"]
    workers.start(burst=True, STROP_FAULT_PAUSE="train=120")
    end = time.monotonic() + 180
    while client.get(f"/jobs/{job_id}").json()["stage"] != "train" and time.monotonic() < end:
        time.sleep(0.1)
    assert client.get(f"/jobs/{job_id}").json()["details"]["snapshot"]["version"] == parent

    manager = client.app.state.manager

    def new_version() -> str:
        st = manager.state("code")
        vid = new_version_id(manager.store.next_version_number("code"))
        build_version(manager.store, st.vstore, vid, st.served.model.batcher.encode_sync,
                      st.served.model.encoder.dim, IndexSpec(kind="flat"), encoder_ref=st.record.encoder)
        return vid

    v2, v3 = new_version(), new_version()
    assert client.post(f"/collections/code/versions/{v2}/activate").status_code == 200
    # retention 0 keeps only the active version, and the one the running job builds on
    assert [v["id"] for v in versions(client)] == [parent, v2]
    assert v3 not in [v["id"] for v in versions(client)]

    assert client.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"
    workers.procs[-1].wait(120)
    v4 = new_version()
    assert client.post(f"/collections/code/versions/{v4}/activate").status_code == 200
    assert [v["id"] for v in versions(client)] == [v4]  # the job ended: its parent goes too
    assert sorted(p.name for p in (data_dir / "collections" / "code" / "versions").iterdir()) == [v4]
    r = client.post("/collections/code/search", json={"query": evals["pairs"][0]["query"], "top_k": 3}).json()
    assert r["version"] == v4 and len(r["hits"]) == 3
