"""The query-embedding cache: repeated text queries skip the encoder, hits show in /metrics, and a swap
to other weights starts from an empty cache. Real app, real FAISS, the tiny encoder."""

from __future__ import annotations

import numpy as np


def corpus(n: int = 60) -> list[dict]:
    return [{"id": f"d{i}", "text": f"document {i} about subject {i % 7}"} for i in range(n)]


def create(client, docs: list[dict]) -> None:
    assert client.post("/collections", json={"name": "docs"}).status_code == 201
    r = client.put("/collections/docs/documents", json={"documents": docs})
    assert r.status_code == 200, r.text


def search(client, **body) -> dict:
    r = client.post("/collections/docs/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def cache_metrics(client) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        for name in ("strop_query_cache_hits_total", "strop_query_cache_lookups_total", "strop_query_cache_hit_ratio"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[-1])
        if line.startswith("strop_query_cache_entries{"):
            out["entries"] = out.get("entries", 0.0) + float(line.split()[-1])
    return out


def batches(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("strop_encode_batch_size_count"):
            return float(line.split()[-1])
    return 0.0


def embed(client, text: str, model: str = "docs") -> np.ndarray:
    r = client.post("/v1/embeddings", json={"model": model, "input": text})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["data"][0]["embedding"], np.float32)


def test_repeated_query_is_answered_from_the_cache(make_client) -> None:
    client = make_client(query_cache_entries=100)
    create(client, docs=corpus())
    first = search(client, query="document 7", top_k=5)
    encodes = batches(client)
    m0 = cache_metrics(client)
    again = search(client, query="document 7", top_k=5)
    assert [h["id"] for h in again["hits"]] == [h["id"] for h in first["hits"]]
    assert [h["score"] for h in again["hits"]] == [h["score"] for h in first["hits"]]
    m1 = cache_metrics(client)
    assert m1["strop_query_cache_hits_total"] == m0["strop_query_cache_hits_total"] + 1
    assert batches(client) == encodes  # no trip through the model thread
    # the embeddings endpoint shares the cache and returns the same vector
    v = embed(client, "document 7")
    assert cache_metrics(client)["strop_query_cache_hits_total"] == m1["strop_query_cache_hits_total"] + 1
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)
    # a new text is a miss and is encoded
    search(client, query="document 8", top_k=5)
    m2 = cache_metrics(client)
    assert m2["strop_query_cache_lookups_total"] > m2["strop_query_cache_hits_total"]
    assert 0.0 < m2["strop_query_cache_hit_ratio"] < 1.0
    assert batches(client) == encodes + 1


def test_cache_is_bounded_and_can_be_off(make_client, tmp_path) -> None:
    client = make_client(query_cache_entries=2)
    create(client, docs=corpus(10))
    for q in ("alpha", "beta", "gamma", "alpha"):  # alpha was evicted by gamma: four misses
        search(client, query=q, top_k=1)
    m = cache_metrics(client)
    assert m["strop_query_cache_hits_total"] == 0 and m["strop_query_cache_lookups_total"] == 4
    assert m["entries"] == 2
    search(client, query="alpha", top_k=1)
    assert cache_metrics(client)["strop_query_cache_hits_total"] == 1

    off = make_client(data_dir=tmp_path / "off", query_cache_entries=0)
    create(off, docs=corpus(10))
    search(off, query="alpha", top_k=1)
    search(off, query="alpha", top_k=1)
    m = cache_metrics(off)
    assert m.get("strop_query_cache_lookups_total", 0.0) == 0 and batches(off) == 2


def test_swap_to_other_weights_starts_with_an_empty_cache(make_client, tmp_path) -> None:
    from strop.index.collection import build_version
    from strop.index.encoder import Encoder, build_tiny_encoder
    from strop.index.faiss_index import IndexSpec
    from strop.index.versions import new_version_id

    client = make_client(query_cache_entries=100)
    create(client, docs=corpus())
    before = embed(client, "document 3")
    embed(client, "document 3")
    hits = cache_metrics(client)["strop_query_cache_hits_total"]
    assert hits == 1

    other = build_tiny_encoder(tmp_path / "other", seed=7)
    enc = Encoder.load(str(other), precision="fp32")
    manager = client.app.state.manager
    st = manager.state("docs")
    v1 = st.served.version.id
    v2 = new_version_id(manager.store.next_version_number("docs"))
    build_version(manager.store, st.vstore, v2, lambda texts: enc.encode(texts).vectors, enc.dim, IndexSpec(),
                  encoder_ref=str(other), parent=v1)
    assert client.post(f"/collections/docs/versions/{v2}/activate").status_code == 200

    after = embed(client, "document 3")  # a miss: encoded by the new weights, not served from the old cache
    assert cache_metrics(client)["strop_query_cache_hits_total"] == hits
    assert float(before @ after) < 0.99
    assert np.allclose(after, enc.encode(["document 3"]).vectors[0], atol=1e-5)
    embed(client, "document 3")
    assert cache_metrics(client)["strop_query_cache_hits_total"] == hits + 1
