"""/evaluate judges only what it can retrieve: a positive id that is not in the collection is a 422."""

from __future__ import annotations


def test_evaluate_refuses_unknown_positive_ids(make_client) -> None:
    client = make_client()
    assert client.post("/collections", json={"name": "t"}).status_code == 201
    docs = [{"id": "a", "text": "faiss searches dense vectors"}, {"id": "b", "text": "redis stores keys"}]
    assert client.put("/collections/t/documents", json={"documents": docs}).status_code == 200
    ok = client.post("/collections/t/evaluate", json={"pairs": [{"query": "vector search", "positive_ids": ["a"]}]})
    assert ok.status_code == 200 and ok.json()["n"] == 1
    r = client.post("/collections/t/evaluate", json={"pairs": [
        {"query": "vector search", "positive_ids": ["a", "nope"]}, {"query": "keys", "positive_ids": ["gone"]}]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "unknown_documents" and "nope" in err["message"] and "gone" in err["message"]
    # a deleted document is unknown too
    assert client.delete("/collections/t/documents/b").status_code == 200
    r = client.post("/collections/t/evaluate", json={"pairs": [{"query": "keys", "positive_ids": ["b"]}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_documents"
