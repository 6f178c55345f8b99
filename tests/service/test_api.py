"""The REST contract (docs/api.md) over real HTTP through the ASGI app: real SQLite, FAISS and encoder."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

LANGS = ("en", "de", "fr")


def corpus(n: int = 60) -> list[dict]:
    """Unique texts; metadata of every filterable type (str, int, bool, null)."""
    out = []
    for i in range(n):
        out.append({
            "id": f"doc-{i:03d}",
            "text": f"document {i} talks about subject {i % 7} in chapter {i // 7} with marker {i * 37 % 101}",
            "metadata": {"lang": LANGS[i % 3], "group": i % 4, "even": i % 2 == 0,
                         "tag": None if i % 5 == 0 else "t"},
        })
    return out


def error_of(r) -> dict:
    """Every failure answers {"error": {"code", "message"}}."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    return body["error"]


def expect_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = error_of(r)
    if code is not None:
        assert err["code"] == code, err
    return err


def create(client, name: str = "docs", docs: list[dict] | None = None, **body) -> dict:
    r = client.post("/collections", json={"name": name, "modality": "text", **body})
    assert r.status_code == 201, r.text
    info = r.json()
    if docs:
        r = client.put(f"/collections/{name}/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        assert r.json() == {"upserted": len(docs), "truncated": 0}
    return info


def search(client, name: str = "docs", **body) -> dict:
    r = client.post(f"/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def count(client, name: str = "docs") -> int:
    r = client.get(f"/collections/{name}")
    assert r.status_code == 200, r.text
    return r.json()["count"]


@pytest.fixture()
def client(make_client):
    return make_client()


@pytest.fixture()
def docs_client(client):
    create(client, docs=corpus())
    return client


# -- health and metrics ---------------------------------------------------------------------------


def test_health_ready_metrics(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    create(client, docs=corpus(5))
    search(client, query="document 1", top_k=2)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE strop_http_requests_total counter" in text
    assert 'strop_http_requests_total{method="POST",route="/collections/{name}/search",status="200"} 1.0' in text
    assert "# TYPE strop_encode_batch_size histogram" in text
    assert 'strop_collection_documents{collection="docs"} 5.0' in text
    for line in text.splitlines():  # Prometheus exposition: comments or "name{labels} value"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_unknown_route_and_method_answer_error_json(client) -> None:
    expect_error(client.get("/nope"), 404, "not_found")
    expect_error(client.patch("/collections"), 405)


# -- embeddings -------------------------------------------------------------------------------------


def test_embeddings_openai_shape(client, tiny_encoder_path: str) -> None:
    create(client, docs=corpus(3))
    r = client.post("/v1/embeddings", json={"model": "docs", "input": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "docs"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.asarray(item["embedding"], np.float32)
    assert vec.shape == (64,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

    texts = ["hello world", "a second input", "and a third one, longer than the others"]
    r = client.post("/v1/embeddings", json={"model": "docs", "input": texts, "user": "extra fields are fine"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    many = np.asarray([d["embedding"] for d in body["data"]], np.float32)
    np.testing.assert_allclose(many[0], vec, atol=1e-5)  # same text, same vector, batched or not
    assert not np.allclose(many[1], many[2])
    assert body["usage"]["prompt_tokens"] > 3

    r = client.post("/v1/embeddings", json={"model": "docs", "input": texts, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])
    np.testing.assert_allclose(decoded, many, atol=1e-6)

    # the configured default encoder by its name works too, and matches the collection's
    r = client.post("/v1/embeddings", json={"model": tiny_encoder_path, "input": "hello world"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["data"][0]["embedding"]), vec, atol=1e-5)

    expect_error(client.post("/v1/embeddings", json={"model": "no-such-model", "input": "x"}), 404, "unknown_model")
    expect_error(client.post("/v1/embeddings", json={"model": "docs", "input": []}), 422)
    expect_error(client.post("/v1/embeddings", json={"model": "docs", "input": ""}), 422)
    expect_error(client.post("/v1/embeddings", json={"model": "docs", "input": ["ok", ""]}), 422)
    expect_error(client.post("/v1/embeddings", json={"model": "docs", "input": [1, 2]}), 422)
    expect_error(client.post("/v1/embeddings", json={"model": "docs", "input": "x", "encoding_format": "hex"}), 422)
    expect_error(client.post("/v1/embeddings", json={"input": "x"}), 422)


# -- collections --------------------------------------------------------------------------------------


def test_collections_create_list_get_delete(client, tiny_encoder_path: str) -> None:
    info = create(client, "docs")
    assert info["name"] == "docs" and info["modality"] == "text" and info["count"] == 0
    assert info["encoder"] == tiny_encoder_path
    assert info["version"]["id"] and isinstance(info["version"]["created_at"], float)
    assert info["version"]["metrics"] == {}
    create(client, "code-idx", modality="code", index={"kind": "hnsw"})
    expect_error(client.post("/collections", json={"name": "docs", "modality": "text"}), 409, "conflict")

    r = client.get("/collections")
    assert r.status_code == 200
    listed = r.json()["collections"]
    assert [c["name"] for c in listed] == ["code-idx", "docs"]
    assert {c["modality"] for c in listed} == {"text", "code"}

    client.put("/collections/docs/documents", json={"documents": corpus(4)})
    r = client.get("/collections/docs")
    assert r.status_code == 200
    got = r.json()
    assert got["count"] == 4 and got["version"]["id"] == info["version"]["id"]

    r = client.delete("/collections/docs")
    assert r.status_code == 200 and r.json() == {"deleted": "docs"}
    expect_error(client.get("/collections/docs"), 404, "not_found")
    expect_error(client.post("/collections/docs/search", json={"query": "x"}), 404, "not_found")
    expect_error(client.delete("/collections/docs"), 404, "not_found")
    assert [c["name"] for c in client.get("/collections").json()["collections"]] == ["code-idx"]
    # the name can be used again, and starts empty
    create(client, "docs")
    assert count(client) == 0
    assert search(client, query="document 1")["hits"] == []
    r = client.get("/collections/docs/documents/doc-000")
    expect_error(r, 404, "not_found")


def test_create_collection_bad_options(client) -> None:
    expect_error(client.post("/collections", json={"name": "x", "modality": "audio"}), 422)
    expect_error(client.post("/collections", json={"name": "x", "index": {"kind": "lsh"}}), 422)
    expect_error(client.post("/collections", json={"name": "x", "index": {"nprobe": 0}}), 422)
    expect_error(client.post("/collections", json={"name": "x", "colour": "red"}), 422)
    expect_error(client.post("/collections", json={"name": "x", "encoder": "/no/such/encoder/dir"}), 422, "bad_encoder")
    assert client.get("/collections").json()["collections"] == []


# -- documents ------------------------------------------------------------------------------------------


def test_documents_put_get_delete(client) -> None:
    create(client, docs=corpus(10))
    r = client.get("/collections/docs/documents/doc-003")
    assert r.status_code == 200
    assert r.json() == {"id": "doc-003", "text": corpus(10)[3]["text"], "image": None,
                        "metadata": {"lang": "en", "group": 3, "even": False, "tag": "t"}}
    # ids may contain slashes and spaces; text is stored verbatim
    odd = {"id": "src/pkg/mod.py:func one", "text": "  def f():\n\treturn 'ü'  \n", "metadata": {"path": "src/pkg"}}
    r = client.put("/collections/docs/documents", json={"documents": [odd]})
    assert r.status_code == 200 and r.json()["upserted"] == 1
    r = client.get("/collections/docs/documents/src/pkg/mod.py:func one")
    assert r.status_code == 200 and r.json()["text"] == odd["text"] and r.json()["metadata"] == odd["metadata"]
    assert count(client) == 11

    # replace: new text wins in get and in search; count unchanged
    r = client.put("/collections/docs/documents",
                   json={"documents": [{"id": "doc-003", "text": "a completely rewritten zebra paragraph"}]})
    assert r.status_code == 200
    assert client.get("/collections/docs/documents/doc-003").json()["metadata"] == {}
    assert count(client) == 11
    hits = search(client, query="a completely rewritten zebra paragraph", top_k=3)["hits"]
    assert hits[0]["id"] == "doc-003" and hits[0]["text"] == "a completely rewritten zebra paragraph"
    hits = search(client, query=corpus(10)[3]["text"], top_k=11)["hits"]
    assert all(h["text"] != corpus(10)[3]["text"] for h in hits)

    # delete: gone from get and from search, before the 200
    r = client.delete("/collections/docs/documents/doc-005")
    assert r.status_code == 200 and r.json() == {"deleted": "doc-005"}
    expect_error(client.get("/collections/docs/documents/doc-005"), 404, "not_found")
    expect_error(client.delete("/collections/docs/documents/doc-005"), 404, "not_found")
    assert count(client) == 10
    hits = search(client, query=corpus(10)[5]["text"], top_k=20)["hits"]
    assert "doc-005" not in [h["id"] for h in hits] and len(hits) == 10
    r = client.delete("/collections/docs/documents/src/pkg/mod.py:func one")
    assert r.status_code == 200 and count(client) == 9
    expect_error(client.get("/collections/docs/documents/never-existed"), 404, "not_found")


def test_long_document_is_stored_whole_and_counted_truncated(client) -> None:
    create(client)
    long_text = " ".join(f"word{i}" for i in range(400))  # far past the tiny encoder's 128 tokens
    r = client.put("/collections/docs/documents", json={"documents": [{"id": "long", "text": long_text},
                                                                      {"id": "short", "text": "short"}]})
    assert r.status_code == 200 and r.json() == {"upserted": 2, "truncated": 1}
    assert client.get("/collections/docs/documents/long").json()["text"] == long_text


# -- search -------------------------------------------------------------------------------------------------


def test_search_top_k_and_self_queries(docs_client) -> None:
    docs = corpus()
    for d in docs[:20]:
        body = search(docs_client, query=d["text"], top_k=5)
        assert body["hits"][0]["id"] == d["id"]
        assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert body["hits"][0]["text"] == d["text"] and body["hits"][0]["metadata"] == d["metadata"]
    body = search(docs_client, query="subject 3 in chapter 2", top_k=7)
    assert len(body["hits"]) == 7 and len({h["id"] for h in body["hits"]}) == 7
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert body["version"] == docs_client.get("/collections/docs").json()["version"]["id"]
    assert isinstance(body["took_ms"], float) and body["took_ms"] >= 0
    assert "match" not in body or body["match"] is None
    assert len(search(docs_client, query="x", top_k=1000)["hits"]) == 60
    assert len(search(docs_client, query="x")["hits"]) == 10  # default top_k


def test_search_filters(docs_client) -> None:
    docs = corpus()

    def matching(**where) -> set[str]:
        return {d["id"] for d in docs if all(k in d["metadata"] and d["metadata"][k] == v
                                             and type(d["metadata"][k]) is type(v) for k, v in where.items())}

    cases = [
        {"lang": "de"},
        {"group": 2},
        {"even": True},
        {"tag": None},
        {"lang": "en", "even": False},
        {"lang": "fr", "group": 1, "even": False},
        {"lang": "en", "tag": None, "even": True},
    ]
    for where in cases:
        expected = matching(**where)
        assert expected, where
        k = min(10, len(expected))
        hits = search(docs_client, query="document about subject 2", top_k=k, filter=where)["hits"]
        assert len(hits) == k, (where, len(hits), len(expected))  # filtered search still fills top_k
        assert {h["id"] for h in hits} <= expected, where
        for h in hits:
            assert all(h["metadata"][key] == v for key, v in where.items())
        # asking for more than match: exactly the matching set
        hits = search(docs_client, query="document about subject 2", top_k=60, filter=where)["hits"]
        assert {h["id"] for h in hits} == expected, where
    # the best match under a filter is the same document an unfiltered search ranks first among those
    d = docs[13]
    hits = search(docs_client, query=d["text"], top_k=3, filter={"lang": d["metadata"]["lang"]})["hits"]
    assert hits[0]["id"] == d["id"]
    # bool vs int vs string are distinct
    assert search(docs_client, query="x", top_k=60, filter={"even": 1})["hits"] == []
    assert search(docs_client, query="x", top_k=60, filter={"group": "2"})["hits"] == []
    assert search(docs_client, query="x", top_k=5, filter={"lang": "xx"})["hits"] == []
    assert search(docs_client, query="x", top_k=5, filter={"missing": "t"})["hits"] == []
    # empty filter = no filter
    assert len(search(docs_client, query="x", top_k=5, filter={})["hits"]) == 5
    # deleted documents never come back under a filter
    docs_client.delete("/collections/docs/documents/doc-001")
    hits = search(docs_client, query=docs[1]["text"], top_k=60, filter={"lang": "de"})["hits"]
    assert "doc-001" not in {h["id"] for h in hits} and len(hits) == len(matching(lang="de")) - 1


def test_semantic_quality_with_minilm(client) -> None:
    # conftest's make_client pins default_encoder to the tiny one, so name the packaged MiniLM per collection
    docs = [
        {"id": "cat", "text": "The cat curled up on the sofa and purred."},
        {"id": "stocks", "text": "Shares fell sharply after the central bank raised interest rates."},
        {"id": "pasta", "text": "Boil the spaghetti for nine minutes, then toss it with garlic and olive oil."},
        {"id": "football", "text": "The striker scored twice in the second half to win the match."},
        {"id": "python", "text": "def read_json(path):\n    with open(path) as f:\n        return json.load(f)"},
    ]
    info = create(client, docs=docs, encoder="all-MiniLM-L6-v2")
    assert info["encoder"] == "all-MiniLM-L6-v2"
    queries = {
        "a kitten sleeping on the couch": "cat",
        "stock market drops after a rate hike": "stocks",
        "how to cook noodles": "pasta",
        "goal in a soccer game": "football",
        "load a JSON file in Python": "python",
    }
    for q, want in queries.items():
        assert search(client, query=q, top_k=1)["hits"][0]["id"] == want, q
    r = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["hello"]})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    r = client.post("/collections/docs/evaluate",
                    json={"pairs": [{"query": q, "positive_ids": [w]} for q, w in queries.items()]})
    assert r.status_code == 200 and r.json()["mrr@10"] == 1.0


# -- evaluate ----------------------------------------------------------------------------------------------


def test_evaluate(docs_client) -> None:
    docs = corpus()
    pairs = [{"query": d["text"], "positive_ids": [d["id"]]} for d in docs[:8]]
    r = docs_client.post("/collections/docs/evaluate", json={"pairs": pairs})
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("mrr@10", "recall@1", "recall@10", "ndcg@10", "n"):
        assert key in body, key
    assert body["n"] == 8
    assert body["mrr@10"] == pytest.approx(1.0) and body["recall@1"] == pytest.approx(1.0)
    assert body["recall@10"] == pytest.approx(1.0) and body["ndcg@10"] == pytest.approx(1.0)
    # a positive that does not exist could never be found: refused, not averaged in as a zero
    bad = pairs[:4] + [{"query": d["text"], "positive_ids": ["no-such-doc"]} for d in docs[:4]]
    r = docs_client.post("/collections/docs/evaluate", json={"pairs": bad})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_documents"
    # two positives, the first found first: recall@1 counts the query as a hit
    two = [{"query": docs[0]["text"], "positive_ids": [docs[0]["id"], docs[1]["id"]]}]
    body = docs_client.post("/collections/docs/evaluate", json={"pairs": two, "k": 5}).json()
    assert body["mrr@10"] == pytest.approx(1.0) and body["recall@1"] == pytest.approx(1.0)
    assert body["ndcg@10"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))
    expect_error(docs_client.post("/collections/docs/evaluate", json={"pairs": []}), 422)
    expect_error(docs_client.post("/collections/docs/evaluate", json={"pairs": [{"query": "", "positive_ids": ["a"]}]}), 422)
    expect_error(docs_client.post("/collections/docs/evaluate", json={"pairs": pairs, "k": 0}), 422)


# -- feedback -------------------------------------------------------------------------------------------------


def test_feedback(docs_client) -> None:
    r = docs_client.post("/collections/docs/feedback",
                         json={"query": "subject 3", "positive_ids": ["doc-003"], "negative_ids": ["doc-004"]})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] is True
    r = docs_client.post("/collections/docs/feedback", json={"query": "subject 5", "positive_ids": ["doc-005"]})
    assert r.status_code == 202
    store = docs_client.app.state.store
    assert store.list_feedback("docs") == [
        {"query": "subject 3", "positive_ids": ["doc-003"], "negative_ids": ["doc-004"]},
        {"query": "subject 5", "positive_ids": ["doc-005"], "negative_ids": []},
    ]
    err = expect_error(docs_client.post("/collections/docs/feedback",
                                        json={"query": "q", "positive_ids": ["doc-001", "ghost"]}), 422, "unknown_documents")
    assert "ghost" in err["message"]
    expect_error(docs_client.post("/collections/docs/feedback",
                                  json={"query": "q", "positive_ids": ["doc-001"], "negative_ids": ["ghost"]}), 422)
    expect_error(docs_client.post("/collections/docs/feedback", json={"query": "q", "positive_ids": []}), 422)
    expect_error(docs_client.post("/collections/docs/feedback", json={"query": "", "positive_ids": ["doc-001"]}), 422)
    expect_error(docs_client.post("/collections/nope/feedback", json={"query": "q", "positive_ids": ["x"]}), 404)
    assert len(store.list_feedback("docs")) == 2  # rejected feedback is not stored


def test_click_feedback_by_search_id(docs_client) -> None:
    found = docs_client.post("/collections/docs/search", json={"query": "subject 7", "top_k": 3}).json()
    sid = found["search_id"]
    hit = found["hits"][0]["id"]
    r = docs_client.post("/collections/docs/feedback", json={"search_id": sid, "positive_ids": [hit]})
    assert r.status_code == 202, r.text
    r = docs_client.post("/collections/docs/feedback", json={"search_id": sid, "query": "subject 7",
                                                             "positive_ids": [hit]})
    assert r.status_code == 202, r.text
    store = docs_client.app.state.store
    assert [f["query"] for f in store.list_feedback("docs")] == ["subject 7", "subject 7"]
    expect_error(docs_client.post("/collections/docs/feedback", json={"search_id": sid, "query": "other",
                                                                      "positive_ids": [hit]}), 422, "search_id_mismatch")
    expect_error(docs_client.post("/collections/docs/feedback", json={"search_id": "0" * 23, "positive_ids": [hit]}),
                 422, "unknown_search")
    expect_error(docs_client.post("/collections/docs/feedback", json={"positive_ids": [hit]}), 422, "missing_query")
    create(docs_client, name="other", docs=corpus())
    expect_error(docs_client.post("/collections/other/feedback", json={"search_id": sid, "positive_ids": [hit]}),
                 422, "unknown_search")
    assert len(store.list_feedback("docs")) == 2


# -- versions ----------------------------------------------------------------------------------------------


def test_versions_list_and_activate(docs_client) -> None:
    from strop.index.collection import build_version
    from strop.index.faiss_index import IndexSpec
    from strop.index.versions import new_version_id

    r = docs_client.get("/collections/docs/versions")
    assert r.status_code == 200
    body = r.json()
    assert len(body["versions"]) == 1
    v1 = body["versions"][0]
    assert v1["active"] is True and body["active"] == v1["id"]
    assert {"id", "created_at", "metrics", "parent", "job"} <= set(v1)

    # re-activating the active version is a no-op answer
    r = docs_client.post(f"/collections/docs/versions/{v1['id']}/activate")
    assert r.status_code == 200 and r.json()["active"] == v1["id"]

    # a second version (same encoder, an HNSW index over the current documents)
    manager = docs_client.app.state.manager
    st = manager.state("docs")
    model = st.served.model
    v2 = new_version_id(manager.store.next_version_number("docs"))
    build_version(manager.store, st.vstore, v2, model.batcher.encode_sync, model.encoder.dim,
                  IndexSpec(kind="hnsw"), encoder_ref=st.record.encoder, parent=v1["id"])
    ids = [v["id"] for v in docs_client.get("/collections/docs/versions").json()["versions"]]
    assert ids == [v1["id"], v2]

    r = docs_client.post(f"/collections/docs/versions/{v2}/activate")
    assert r.status_code == 200 and r.json() == {"active": v2, "previous": v1["id"]}
    body = docs_client.get("/collections/docs/versions").json()
    assert body["active"] == v2 and [v["active"] for v in body["versions"]] == [False, True]
    assert docs_client.get("/collections/docs").json()["version"]["id"] == v2
    d = corpus()[17]
    hit = search(docs_client, query=d["text"], top_k=1)
    assert hit["version"] == v2 and hit["hits"][0]["id"] == d["id"]
    # roll back
    r = docs_client.post(f"/collections/docs/versions/{v1['id']}/activate")
    assert r.status_code == 200 and r.json()["active"] == v1["id"]
    assert search(docs_client, query=d["text"], top_k=1)["version"] == v1["id"]

    expect_error(docs_client.post("/collections/docs/versions/v9999/activate"), 404)
    expect_error(docs_client.post("/collections/docs/versions/..%2Fx/activate"), 404)
    expect_error(docs_client.get("/collections/nope/versions"), 404, "not_found")
    assert docs_client.get("/collections/docs/versions").json()["active"] == v1["id"]


# -- bad inputs --------------------------------------------------------------------------------------------


def test_unknown_collection(docs_client) -> None:
    for method, url, body in [
        ("GET", "/collections/nope", None),
        ("DELETE", "/collections/nope", None),
        ("PUT", "/collections/nope/documents", {"documents": corpus(1)}),
        ("GET", "/collections/nope/documents/doc-000", None),
        ("DELETE", "/collections/nope/documents/doc-000", None),
        ("POST", "/collections/nope/search", {"query": "x"}),
        ("POST", "/collections/nope/evaluate", {"pairs": [{"query": "x", "positive_ids": ["a"]}]}),
        ("GET", "/collections/nope/versions", None),
        ("POST", "/collections/nope/versions/v0001/activate", None),
    ]:
        r = docs_client.request(method, url, json=body)
        expect_error(r, 404, "not_found")
    assert count(docs_client) == 60


def test_wrong_modality_and_bad_base64(docs_client) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
    for image in (png, "!!! not base64 ~~~", "abc"):
        r = docs_client.put("/collections/docs/documents",
                            json={"documents": [{"id": "img", "text": "a logo", "image": image}]})
        expect_error(r, 422, "wrong_modality")
        r = docs_client.post("/collections/docs/search", json={"image": image, "top_k": 3})
        expect_error(r, 422, "wrong_modality")
        r = docs_client.post("/collections/docs/search", json={"query": "logo", "image": image})
        expect_error(r, 422, "wrong_modality")
    # one bad document rejects the whole request
    docs = corpus(3)
    docs[1] = {"id": "img", "image": png}
    expect_error(docs_client.put("/collections/docs/documents", json={"documents": docs}), 422)
    expect_error(docs_client.get("/collections/docs/documents/img"), 404)
    # a text collection's encoder cannot serve an image collection (tests/service/test_image_api.py has the rest)
    r = docs_client.post("/collections", json={"name": "logos", "modality": "image", "encoder": "all-MiniLM-L6-v2"})
    expect_error(r, 422, "bad_encoder")
    assert count(docs_client) == 60


def test_malformed_json(docs_client) -> None:
    h = {"content-type": "application/json"}
    for url, method in [("/collections/docs/search", "POST"), ("/collections/docs/documents", "PUT"),
                        ("/collections", "POST"), ("/v1/embeddings", "POST")]:
        r = docs_client.request(method, url, content=b'{"query": "unterminated', headers=h)
        expect_error(r, 400, "malformed_json")
    r = docs_client.post("/collections/docs/search", content=b"[1, 2", headers=h)
    expect_error(r, 400, "malformed_json")
    # valid JSON of the wrong shape
    expect_error(docs_client.post("/collections/docs/search", json=["query"]), 422)
    expect_error(docs_client.put("/collections/docs/documents", json={"documents": {"id": "a"}}), 422)
    expect_error(docs_client.put("/collections/docs/documents", json={"docs": corpus(1)}), 422)
    # not JSON at all
    r = docs_client.post("/collections/docs/search", content=b"query=hello",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500
    error_of(r)
    r = docs_client.post("/collections/docs/search", content=b'{"query": "\xff\xfe"}', headers=h)
    assert 400 <= r.status_code < 500
    error_of(r)
    assert count(docs_client) == 60


def test_bad_documents(docs_client) -> None:
    url = "/collections/docs/documents"
    expect_error(docs_client.put(url, json={"documents": []}), 422, "empty_request")
    dup = [{"id": "x1", "text": "one"}, {"id": "x2", "text": "two"}, {"id": "x1", "text": "three"}]
    err = expect_error(docs_client.put(url, json={"documents": dup}), 422, "duplicate_ids")
    assert "x1" in err["message"]
    for bad in [
        {"id": "", "text": "empty id"},
        {"id": "a" * 513, "text": "long id"},
        {"id": "ctl\x00id", "text": "control char"},
        {"id": "notext"},
        {"id": "blank", "text": "   \n\t"},
        {"id": "meta", "text": "t", "metadata": ["not", "an", "object"]},
        {"id": "extra", "text": "t", "colour": "red"},
        {"text": "no id"},
        {"id": 12, "text": "numeric id"},
    ]:
        r = docs_client.put(url, json={"documents": [bad]})
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
        error_of(r)
    r = docs_client.put(url, json={"documents": [{"id": "big", "text": "t", "metadata": {"k": "v" * 20_000}}]})
    expect_error(r, 413, "metadata_too_large")
    assert count(docs_client) == 60
    expect_error(docs_client.get("/collections/docs/documents/x1"), 404)


def test_too_many_documents(make_client) -> None:
    client = make_client(max_documents_per_request=3)
    create(client, docs=corpus(3))
    err = expect_error(client.put("/collections/docs/documents", json={"documents": corpus(4)}), 413,
                       "too_many_documents")
    assert "3" in err["message"]
    assert count(client) == 3
    r = client.put("/collections/docs/documents", json={"documents": corpus(6)[3:]})
    assert r.status_code == 200 and count(client) == 6


def test_bad_queries(docs_client) -> None:
    url = "/collections/docs/search"
    for body in [{"query": ""}, {"query": "   \n"}, {}, {"top_k": 5}]:
        expect_error(docs_client.post(url, json=body), 422, "empty_query")
    expect_error(docs_client.post(url, json={"query": "x" * 5000}), 413, "query_too_long")
    for top_k in (0, -1, 1001, 10**9, 10**30):
        expect_error(docs_client.post(url, json={"query": "x", "top_k": top_k}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "top_k": "many"}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "filter": {"k": {"nested": 1}}}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "filter": {"k": [1, 2]}}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "filter": "lang=en"}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "unknown": 1}), 422)
    expect_error(docs_client.post(url, json={"query": "x", "rerank": True}), 409, "no_teacher")
    expect_error(docs_client.post("/collections/docs/evaluate",
                                  json={"pairs": [{"query": "x", "positive_ids": ["doc-001"]}], "rerank": True}),
                 409, "no_teacher")
    assert len(search(docs_client, query="x", top_k=3)["hits"]) == 3


def test_oversized_body(make_client) -> None:
    client = make_client(max_body_bytes=2_000)
    create(client, docs=corpus(3))
    big = [{"id": f"big-{i}", "text": "y" * 300} for i in range(10)]
    expect_error(client.put("/collections/docs/documents", json={"documents": big}), 413, "body_too_large")
    expect_error(client.post("/collections/docs/search", json={"query": "z" * 3_000}), 413, "body_too_large")

    def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"documents": ['
        for i in range(10):
            yield (b'{"id": "s%d", "text": "' % i) + b"w" * 300 + b'"},'
        yield b'{"id": "last", "text": "x"}]}'

    r = client.put("/collections/docs/documents", content=chunks(), headers={"content-type": "application/json"})
    expect_error(r, 413, "body_too_large")
    assert count(client) == 3
    assert search(client, query="document 1", top_k=1)["hits"]


@pytest.mark.parametrize("name", ["../x", "A", "x/y", "a" * 64, "", "-x", "_x", "a b", "x.y", "é", "docs\n"])
def test_bad_collection_names(client, name: str) -> None:
    r = client.post("/collections", json={"name": name, "modality": "text"})
    expect_error(r, 422, "invalid_name")
    assert client.get("/collections").json()["collections"] == []


def test_good_collection_names(client) -> None:
    for name in ["a", "0", "a" * 63, "my-docs_2"]:
        create(client, name)
    assert len(client.get("/collections").json()["collections"]) == 4


def test_service_survives_bad_inputs(docs_client) -> None:
    """A burst of every kind of bad request, then: still answering, nothing changed."""
    before = search(docs_client, query="subject 4 in chapter 3", top_k=5)
    bad_requests = [
        ("POST", "/collections/docs/search", {"query": ""}),
        ("POST", "/collections/docs/search", {"query": "x", "top_k": 0}),
        ("POST", "/collections/docs/search", {"image": "AAAA"}),
        ("PUT", "/collections/docs/documents", {"documents": []}),
        ("PUT", "/collections/docs/documents", {"documents": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]}),
        ("PUT", "/collections/docs/documents", {"documents": [{"id": "i", "image": "@@@"}]}),
        ("POST", "/collections", {"name": "../x"}),
        ("POST", "/collections/nope/search", {"query": "x"}),
        ("POST", "/collections/docs/feedback", {"query": "q", "positive_ids": ["ghost"]}),
    ]
    for _ in range(3):
        for method, url, body in bad_requests:
            r = docs_client.request(method, url, json=body)
            assert 400 <= r.status_code < 500, (url, body, r.status_code)
            error_of(r)
        r = docs_client.post("/collections/docs/search", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400
    assert docs_client.get("/healthz").status_code == 200
    assert docs_client.get("/readyz").status_code == 200
    assert count(docs_client) == 60
    same = {"took_ms": 0, "search_id": ""}  # per request
    assert search(docs_client, query="subject 4 in chapter 3", top_k=5) | same == before | same
    metrics = docs_client.get("/metrics").text
    assert 'status="500"' not in metrics


# -- lexical fusion ("lexical": w on search and evaluate) ------------------------------------------------------

LEX_WORDS = ["alpha", "bravo", "delta", "echo", "foxtrot", "golf", "hotel", "india", "kilo", "lima", "mike", "oscar"]


def lexical_docs() -> list[dict]:
    """Forty functions; only `cfg-target` mentions parse, config or header."""
    docs = [{"id": f"fn-{i}", "text": f"def {LEX_WORDS[i % 12]}_{LEX_WORDS[(i * 5 + 1) % 12]}_{i}(x):\n"
                                      f"    return {LEX_WORDS[(i * 7 + 3) % 12]}(x) + {i}"} for i in range(40)]
    docs.append({"id": "cfg-target", "text": "def parseConfigHeader(raw):\n    return raw.split(':', 1)"})
    return docs


def test_search_and_evaluate_with_lexical(client) -> None:
    create(client, name="code", docs=lexical_docs())
    plain = {h["id"]: h["score"] for h in search(client, "code", query="parse config header", top_k=41)["hits"]}
    body = search(client, "code", query="parse config header", top_k=5, lexical=1.0)
    hits = body["hits"]
    assert len(hits) == 5 and hits[0]["id"] == "cfg-target"
    assert hits[0]["scores"]["lexical"] == pytest.approx(1.0)
    for h in hits:
        assert h["scores"]["bi_encoder"] == pytest.approx(plain[h["id"]], abs=1e-5)
        assert h["score"] == pytest.approx(h["scores"]["bi_encoder"] + 1.0 * h["scores"]["lexical"], abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # no query word in any candidate: the order is the dense order
    same = search(client, "code", query="zzz qqq", top_k=5, lexical=0.5)["hits"]
    assert [h["id"] for h in same] == [h["id"] for h in search(client, "code", query="zzz qqq", top_k=5)["hits"]]
    assert all(h["scores"]["lexical"] == 0.0 for h in same)
    pairs = [{"query": "parse config header", "positive_ids": ["cfg-target"]},
             {"query": "config header parser", "positive_ids": ["cfg-target"]}]
    r = client.post("/collections/code/evaluate", json={"pairs": pairs, "lexical": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["mrr@10"] == pytest.approx(1.0)
    r0 = client.post("/collections/code/evaluate", json={"pairs": pairs})
    r00 = client.post("/collections/code/evaluate", json={"pairs": pairs, "lexical": 0.0})
    assert r0.json()["mrr@10"] == r00.json()["mrr@10"]


def test_lexical_bad_values(client) -> None:
    create(client, name="code", docs=lexical_docs()[:5])
    for bad in (-0.1, 1.5, "much"):
        expect_error(client.post("/collections/code/search", json={"query": "x", "lexical": bad}), 422)
        expect_error(client.post("/collections/code/evaluate",
                                 json={"pairs": [{"query": "x", "positive_ids": ["fn-1"]}], "lexical": bad}), 422)
    expect_error(client.post("/collections/code/search", json={"query": "x", "lexical": 0.1, "rerank": True}),
                 422, "conflicting_options")
    expect_error(client.post("/collections/code/evaluate", json={
        "pairs": [{"query": "x", "positive_ids": ["fn-1"]}], "lexical": 0.1, "rerank": True}), 422, "conflicting_options")
    assert search(client, "code", query="x", top_k=1)["hits"]  # still serving


def test_code_collections_fuse_by_default(make_client) -> None:
    client = make_client(code_lexical=0.1)
    create(client, name="code", docs=lexical_docs(), modality="code")
    create(client, name="text", docs=lexical_docs())
    hits = search(client, "code", query="parse config header", top_k=3)["hits"]
    assert all(set(h["scores"]) == {"bi_encoder", "lexical"} for h in hits)
    assert hits[0]["score"] == pytest.approx(hits[0]["scores"]["bi_encoder"] + 0.1 * hits[0]["scores"]["lexical"], abs=1e-5)
    # explicit 0 is dense only, and so is a text collection by default
    for name, body in (("code", {"lexical": 0}), ("text", {})):
        hits = search(client, name, query="parse config header", top_k=3, **body)["hits"]
        assert all("scores" not in h for h in hits)
    pairs = [{"query": "parse config header", "positive_ids": ["cfg-target"]}]
    default = client.post("/collections/code/evaluate", json={"pairs": pairs}).json()
    explicit = client.post("/collections/code/evaluate", json={"pairs": pairs, "lexical": 0.1}).json()
    assert default["mrr@10"] == explicit["mrr@10"]
    # rerank without a teacher is still the 409 that says how to get one, not a conflict with the default
    expect_error(client.post("/collections/code/search", json={"query": "x", "rerank": True}), 409, "no_teacher")
    off = make_client(code_lexical=0.0)
    assert all("scores" not in h for h in search(off, "code", query="parse config header", top_k=3)["hits"])

