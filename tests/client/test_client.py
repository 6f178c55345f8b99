"""strop.client against a live `strop serve` (real uvicorn over HTTP, embedded Redis, a worker process,
the tiny encoder): every resource, an error per resource, no server, and the async client."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from strop.client import AsyncClient, Client, StropConnectionError, StropError

pytestmark = pytest.mark.slow

TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]


def corpus() -> list[dict]:
    return [{"id": f"{t.split()[0]}-{j}", "text": f"notes about {t}, part {j}",
             "metadata": {"topic": t.split()[0], "part": j}} for t in TOPICS for j in range(3)]


def job_spec() -> dict:
    """A job that finishes in seconds: two steps of the tiny encoder, a gate that always passes."""
    return {"train": {"pairs": [{"query": f"notes about {t}", "positive_id": f"{t.split()[0]}-0"} for t in TOPICS]},
            "eval": {"pairs": [{"query": t, "positive_ids": [f"{t.split()[0]}-{j}" for j in range(3)]}
                              for t in TOPICS]},
            "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "gate": {"metric": "mrr@10", "min_delta": -1.0, "min_pairs": 1}}


@pytest.fixture()
def client(live_server):
    with Client(live_server.url) as c:
        yield c


def with_docs(c: Client, name: str) -> None:
    c.create_collection(name)
    assert c.upsert(name, corpus()) == len(corpus())


def wait_active(c: Client, collection: str, version: str) -> None:
    """A job's version is activated by the worker; each API process swaps to it on the announcement
    (or its next poll), just after the job reads succeeded."""
    end = time.time() + 10
    while c.get_collection(collection)["version"]["id"] != version and time.time() < end:
        time.sleep(0.1)
    assert c.get_collection(collection)["version"]["id"] == version


def raises(status: int, code: str, fn, *args, **kwargs) -> StropError:
    with pytest.raises(StropError) as info:
        fn(*args, **kwargs)
    e = info.value
    assert (e.status, e.code) == (status, code), str(e)
    assert str(e).startswith(f"error {status} {code}: ") and e.message
    return e


def test_collections(client: Client, tiny_encoder_path: str):
    info = client.create_collection("c-notes", "text", index="flat")
    assert info["name"] == "c-notes" and info["modality"] == "text" and info["count"] == 0
    assert info["encoder"] == tiny_encoder_path and info["teacher"] is None and info["version"]["id"]
    got = client.get_collection("c-notes")
    assert {k: v for k, v in got.items() if k != "storage"} == {k: v for k, v in info.items() if k != "storage"}
    assert got["storage"] and got["storage"]["versions"][0]["id"] == info["version"]["id"]
    assert "c-notes" in [x["name"] for x in client.list_collections()]
    assert client.create_collection("c-code", modality="code", index={"kind": "hnsw", "hnsw_m": 16})["modality"] == "code"

    raises(409, "conflict", client.create_collection, "c-notes")
    raises(422, "invalid_name", client.create_collection, "No Spaces")
    raises(422, "invalid_request", client.create_collection, "c-x", index="annoy")
    raises(404, "not_found", client.get_collection, "c-missing")
    # a teacher that is not there is refused, and nothing changes
    raises(422, "bad_teacher", client.set_teacher, "c-notes", "/no/such/teacher")
    assert client.get_collection("c-notes")["teacher"] is None
    assert client.set_teacher("c-notes", None)["teacher"] is None

    assert client.delete_collection("c-code") == {"deleted": "c-code"}
    raises(404, "not_found", client.delete_collection, "c-code")
    assert "c-code" not in [x["name"] for x in client.list_collections()]


def test_documents(client: Client):
    client.create_collection("d-notes")
    docs = corpus()
    seen: list[tuple[int, int | None]] = []
    assert client.upsert("d-notes", docs, batch_size=10, progress=lambda d, t: seen.append((d, t))) == 24
    assert seen == [(10, 24), (20, 24), (24, 24)]
    seen.clear()
    assert client.upsert("d-notes", (d for d in docs[:5]), batch_size=2,
                         progress=lambda d, t: seen.append((d, t))) == 5  # a generator: no total
    assert seen == [(2, None), (4, None), (5, None)]
    assert client.get_collection("d-notes")["count"] == 24

    odd = "dir/sub file?#%.py"  # ids are free text: quoted as one path segment
    client.upsert("d-notes", [{"id": odd, "text": "an odd id", "metadata": {"k": 1}}])
    got = client.get_document("d-notes", odd)
    assert (got["id"], got["text"], got["metadata"]) == (odd, "an odd id", {"k": 1})
    page = client.list_documents("d-notes", limit=10)
    assert len(page["documents"]) == 10 and page["next"] == page["documents"][-1]["id"]
    page2 = client.list_documents("d-notes", after=page["next"], limit=10)
    assert page2["documents"][0]["id"] > page["next"]
    ids = [d["id"] for d in client.iter_documents("d-notes", page_size=7)]
    assert ids == sorted(ids) and len(ids) == 25 and odd in ids
    assert client.delete_document("d-notes", odd) == {"deleted": odd}
    raises(404, "not_found", client.get_document, "d-notes", odd)

    # a batch is all or nothing; the error says which documents were stored before it
    bad = [{"id": f"b{i}", "text": f"fine text {i}"} for i in range(4)] + [{"id": "b4", "text": "  "}]
    e = raises(422, "empty_text", client.upsert, "d-notes", bad, batch_size=3)
    assert "documents 1-3 were stored" in e.message
    assert client.get_document("d-notes", "b2")["text"] == "fine text 2"
    raises(404, "not_found", client.get_document, "d-notes", "b3")
    raises(422, "wrong_modality", client.upsert, "d-notes", [{"id": "img", "image": b"\x89PNG not really"}])
    raises(404, "not_found", client.upsert, "d-missing", docs[:1])


def test_search_evaluate_feedback(client: Client):
    with_docs(client, "s-notes")
    out = client.search("s-notes", "rivers and lakes", top_k=3)
    assert len(out["hits"]) == 3 and out["version"] and out["took_ms"] >= 0
    assert all({"id", "score", "metadata"} <= set(h) for h in out["hits"])
    out = client.search("s-notes", "rivers and lakes", top_k=5, filter={"part": 1})
    assert out["hits"] and all(h["metadata"]["part"] == 1 for h in out["hits"])
    out = client.search("s-notes", "rivers and lakes", top_k=3, lexical=1.0)
    assert all(h["id"].startswith("rivers-") for h in out["hits"])  # every query word matches
    assert set(out["hits"][0]["scores"]) == {"bi_encoder", "lexical"}
    raises(422, "empty_query", client.search, "s-notes", "  ")
    raises(409, "no_teacher", client.search, "s-notes", "rivers", rerank=True)
    raises(422, "wrong_modality", client.search, "s-notes", image=b"\x89PNG")

    pairs = [{"query": t, "positive_ids": [f"{t.split()[0]}-{j}" for j in range(3)]} for t in TOPICS]
    metrics = client.evaluate("s-notes", pairs, k=5)
    assert metrics["n"] == len(TOPICS) and 0 <= metrics["mrr@10"] <= 1 and "recall@5" in metrics
    raises(422, "invalid_request", client.evaluate, "s-notes", [])

    assert client.feedback("s-notes", "lakes", ["rivers-0"], ["apples-1"])["accepted"] is True
    raises(422, "unknown_documents", client.feedback, "s-notes", "lakes", ["nope"])


def test_embeddings(client: Client):
    client.create_collection("e-notes")
    vecs = client.embeddings(["rivers and lakes", "stars"], model="e-notes")
    assert len(vecs) == 2 and len(vecs[0]) == 64 and all(isinstance(x, float) for x in vecs[0])
    assert len(client.embeddings("one text", "e-notes")) == 1
    raw = client.embeddings_response("one text", "e-notes")
    assert raw["object"] == "list" and raw["model"] == "e-notes" and raw["usage"]["total_tokens"] > 0
    assert raw["data"][0]["index"] == 0 and len(raw["data"][0]["embedding"]) == 64
    raises(404, "unknown_model", client.embeddings, "x", "no-such-model")
    raises(422, "empty_input", client.embeddings, [], "e-notes")


def test_jobs_and_versions(client: Client):
    with_docs(client, "j-notes")
    base = client.get_collection("j-notes")["version"]["id"]
    job = client.submit_job("j-notes", job_spec())
    assert job["state"] == "queued" and job["job_id"]
    updates: list[dict] = []
    final = client.follow_job(job["job_id"], on_progress=updates.append, poll_s=0.2, timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["version"] and final["version"] != base and final["collection"] == "j-notes"
    assert updates[-1] == final and len(updates) >= 2
    assert set(final["metrics"]) >= {"before", "after"}
    assert client.get_job(job["job_id"])["state"] == "succeeded"
    assert job["job_id"] in [j["job_id"] for j in client.list_jobs("j-notes")]
    assert job["job_id"] in [j["job_id"] for j in client.list_jobs()]
    assert client.list_jobs("j-nothing") == []

    wait_active(client, "j-notes", final["version"])
    versions = client.list_versions("j-notes")
    assert [v["id"] for v in versions["versions"]] == [base, final["version"]]
    assert versions["active"] == final["version"] and versions["versions"][1]["active"]
    assert client.activate_version("j-notes", base) == {"active": base, "previous": final["version"]}
    assert client.search("j-notes", "stars")["version"] == base
    assert client.list_versions("j-notes")["active"] == base
    raises(404, "version_not_found", client.activate_version, "j-notes", "v9999")

    # cancel: right after submission the job is queued or just started; either way it ends cancelled
    second = client.submit_job("j-notes", {**job_spec(), "max_steps": 50})
    cancelled = client.cancel_job(second["job_id"])
    assert cancelled["state"] == "cancelled"
    assert client.follow_job(second["job_id"], poll_s=0.2, timeout=60)["state"] == "cancelled"
    assert client.get_collection("j-notes")["version"]["id"] == base  # nothing activated

    raises(404, "not_found", client.get_job, "0" * 32)
    raises(404, "not_found", client.cancel_job, "0" * 32)
    e = raises(422, "unknown_documents", client.submit_job, "j-notes",
               {"train": {"pairs": [{"query": "q", "positive_id": "nope"}]}})
    assert "nope" in e.message
    raises(422, "invalid_job", client.submit_job, "j-notes", {"train": {"pairs": []}, "epochs": 0})


def test_ingest_code(client: Client, tmp_path: Path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "geo.py").write_text(textwrap.dedent('''
        def haversine(a, b):
            """Great-circle distance between two points."""
            return 0.0


        class Map:
            """A map of places."""

            def add(self, place):
                """Put a place on the map."""
        ''').lstrip())
    (root / "pkg" / "broken.py").write_text("def oops(:\n")
    stages: set[str] = set()
    summary = client.ingest_code("i-code", root, progress=lambda stage, d, t: stages.add(stage))
    assert summary["files"] == 2 and summary["documents"] == summary["upserted"] >= 3
    assert summary["deleted"] == 0 and [s["path"] for s in summary["skipped_files"]] == ["pkg/broken.py"]
    assert stages == {"parse", "upsert"}
    assert client.get_collection("i-code")["modality"] == "code"
    assert client.get_document("i-code", "pkg.geo.haversine")["metadata"]["path"] == "pkg/geo.py"
    again = client.ingest_code("i-code", root)
    assert again["upserted"] == 0 and again["unchanged"] == summary["documents"]
    summary = client.ingest_code("i-code", root, exclude=["geo.py"])
    assert summary["deleted"] == again["unchanged"] and client.get_collection("i-code")["count"] == 0

    client.create_collection("i-text")
    raises(422, "wrong_modality", client.ingest_code, "i-text", root)
    with pytest.raises(NotADirectoryError):
        client.ingest_code("i-code", root / "pkg" / "geo.py")


def test_no_server():
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as c, pytest.raises(StropConnectionError) as info:
        c.list_collections()
    e = info.value
    assert isinstance(e, StropError) and e.status == 0 and e.code == "unreachable" and e.url == url
    assert url in str(e) and "strop serve" in str(e)
    with pytest.raises(StropConnectionError, match="not a server URL"):
        Client("127.0.0.1:8000")


def test_from_env(live_server, monkeypatch):
    monkeypatch.setenv("STROP_URL", live_server.url + "/")
    monkeypatch.setenv("STROP_API_KEY", "k" * 20)
    with Client.from_env() as c:
        assert c.url == live_server.url
        assert c._http.headers["authorization"] == "Bearer " + "k" * 20
        assert c.health() == {"status": "ok"} and c.ready()["status"] == "ready"


def test_async_client(live_server, client: Client):
    with_docs(client, "a-notes")

    async def run() -> tuple[dict, dict, list[str]]:
        async with AsyncClient(live_server.url) as ac:
            hits = await ac.search("a-notes", "rivers and lakes", top_k=3, lexical=1.0)
            many = await asyncio.gather(*(ac.search("a-notes", t, top_k=1) for t in TOPICS))
            assert all(len(r["hits"]) == 1 for r in many)
            job = await ac.submit_job("a-notes", job_spec())
            seen: list[str] = []
            final = await ac.follow_job(job["job_id"], on_progress=lambda j: seen.append(j["state"]), poll_s=0.2,
                                        timeout=240)
            ids = [d["id"] async for d in ac.iter_documents("a-notes", page_size=5)]
            assert len(ids) == len(corpus())
            with pytest.raises(StropError) as info:
                await ac.get_collection("a-missing")
            assert info.value.status == 404
            return hits, final, seen

    hits, final, seen = asyncio.run(run())
    assert all(h["id"].startswith("rivers-") for h in hits["hits"])
    assert final["state"] == "succeeded" and seen[-1] == "succeeded"
    wait_active(client, "a-notes", final["version"])
