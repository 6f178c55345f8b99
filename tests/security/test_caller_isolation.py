"""One caller's bad input never fails another caller's request (live server, real HTTP)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, serve_env, start_serve, stop_serve

from strop.index.encoder import Encoder
from strop.service.batching import EncodeBatcher

WORDS = ["river", "mountain", "forest", "desert", "ocean", "valley", "glacier", "canyon", "island", "meadow"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("isolation")
    port = free_port()
    p = start_serve(root / "data", port, serve_env(tiny_encoder_path), root / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert httpx.post(url + "/collections", json={"name": "geo"}, timeout=60).status_code == 201
        docs = [{"id": f"d{i}", "text": f"a {w} near the {WORDS[(i + 3) % 10]} number {i}", "metadata": {"n": i}}
                for i, w in enumerate(WORDS * 5)]
        assert httpx.put(url + "/collections/geo/documents", json={"documents": docs}, timeout=120).status_code == 200
        yield url
    finally:
        stop_serve(p)


def _raw(url: str, path: str, body: str) -> httpx.Response:
    # a hand-written body: json.dumps would refuse to write a lone surrogate as an escape
    return httpx.post(url + path, content=body.encode(), headers={"content-type": "application/json"}, timeout=60)


def _p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * (len(xs) - 1))]


def _searches(server: str, searchers: int = 8, each: int = 25) -> tuple[list[httpx.Response], list[float]]:
    """``searchers`` clients at once, each sending ``each`` distinct searches: answers and latencies."""
    answers: list[httpx.Response] = []
    latencies: list[float] = []

    def searcher(k: int) -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            for i in range(each):
                t0 = time.perf_counter()
                r = c.post("/collections/geo/search", json={"query": f"{WORDS[(k + i) % 10]} {k} {i}", "top_k": 3})
                latencies.append(time.perf_counter() - t0)
                answers.append(r)

    threads = [threading.Thread(target=searcher, args=(k,)) for k in range(searchers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return answers, latencies


def test_lone_surrogates_are_refused_and_never_fail_other_searches(server: str) -> None:
    _, unloaded = _searches(server)  # the same traffic without the attackers
    bad_results: list[httpx.Response] = []
    stop = threading.Event()

    def attacker() -> None:
        while not stop.is_set():
            bad_results.append(_raw(server, "/collections/geo/search", '{"query": "\\ud800 x", "top_k": 3}'))

    attackers = [threading.Thread(target=attacker) for _ in range(2)]
    for t in attackers:
        t.start()
    try:
        good, loaded = _searches(server)
    finally:
        stop.set()
        for t in attackers:
            t.join(60)
    assert len(good) == 200 and all(r.status_code == 200 for r in good), [r.text for r in good if r.status_code != 200][:3]
    assert bad_results and all(r.status_code == 422 for r in bad_results)
    assert {r.json()["error"]["code"] for r in bad_results} == {"invalid_unicode"}
    # the attackers cost a refusal each, not the searchers' latency (20 ms of slack for timer noise)
    assert _p95(loaded) <= 3 * _p95(unloaded) + 0.02, (_p95(loaded), _p95(unloaded))


@pytest.mark.parametrize(("body", "code"), [
    ('{"documents": [{"id": "p1", "text": "ok", "metadata": {"k": "\\ud800"}}]}', "invalid_unicode"),
    ('{"documents": [{"id": "p2", "text": "ok", "metadata": {"\\udfff": 1}}]}', "invalid_unicode"),
    ('{"documents": [{"id": "p3\\ud800", "text": "ok"}]}', "invalid_unicode"),
    ('{"documents": [{"id": "p4", "text": "ok \\udc00"}]}', "invalid_unicode"),
    ('{"documents": [{"id": "p5", "text": "ok", "metadata": {"k": NaN}}]}', "invalid_number"),
    ('{"documents": [{"id": "p6", "text": "ok", "metadata": {"k": -Infinity}}]}', "invalid_number"),
    ('{"documents": [{"id": "p7", "text": "ok", "metadata": {"k": 1' + "0" * 30 + '}}]}', "invalid_number"),
    ('{"documents": [{"id": "p8", "text": "ok", "metadata": ' + '{"a": ' * 256 + "1" + "}" * 256 + "}]}", "too_deep"),
    ('{"documents": [{"id": "p9", "text": "ok", "metadata": ' + "[" * 100000 + "]" * 100000 + "}]}", "too_deep"),
])
def test_poison_documents_are_refused_and_nothing_is_stored(server: str, body: str, code: str) -> None:
    r = httpx.put(server + "/collections/geo/documents", content=body.encode(),
                  headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    # everything readable still reads: the list, every document, a search that would hit them
    listing = httpx.get(server + "/collections/geo/documents", params={"limit": 1000}, timeout=60)
    assert listing.status_code == 200 and not any(d["id"].startswith("p") for d in listing.json()["documents"])
    assert httpx.post(server + "/collections/geo/search", json={"query": "ok", "top_k": 50}, timeout=60).status_code == 200
    assert httpx.get(server + "/healthz", timeout=10).status_code == 200


def test_other_text_fields_refuse_lone_surrogates(server: str) -> None:
    for path, body in [("/collections/geo/evaluate", '{"pairs": [{"query": "\\ud800", "positive_ids": ["d1"]}]}'),
                       ("/collections/geo/feedback", '{"query": "x\\ud800", "positive_ids": ["d1"]}'),
                       ("/v1/embeddings", '{"model": "geo", "input": ["fine", "\\ud834"]}'),
                       ("/collections", '{"name": "\\ud800"}'),
                       ("/collections/geo/search", '{"query": "x", "filter": {"\\ud800": 1}}')]:
        r = _raw(server, path, body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_unicode", (path, r.text)


def test_concurrent_distinct_embeddings_all_succeed(server: str) -> None:
    """Distinct single-input /v1/embeddings calls from 32 connections, as real traffic sends them: the
    usage token count and the model's forward pass never share a tokenizer."""
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=server, timeout=120) as c:
            for i in range(12):
                text = " ".join(WORDS[(k + j) % 10] for j in range(1 + (k * 7 + i * 3) % 23))
                r = c.post("/v1/embeddings", json={"model": "geo", "input": f"{text} {k}-{i}"})
                with lock:
                    done[0] += 1
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert done[0] == 32 * 12 and not failures, failures[:5]


def test_a_batch_member_that_fails_to_encode_fails_alone(tiny_encoder_path: str) -> None:
    """Even input that passes validation and still breaks the tokenizer fails only its own request."""
    enc = Encoder.load(tiny_encoder_path, precision="fp32", device="cpu")
    batcher = EncodeBatcher(enc, max_batch=8)

    async def run() -> list:
        texts: list = ["first query", 12345, "third query", {"not": "text"}, "fifth"]
        return await asyncio.gather(*(batcher.encode_query(t) for t in texts), return_exceptions=True)

    try:
        out = asyncio.run(run())
    finally:
        batcher.close()
    assert [isinstance(o, Exception) for o in out] == [False, True, False, True, False], out
    alone = enc.encode(["third query"]).vectors[0]
    assert float(alone @ out[2]) > 0.999  # the survivors' vectors are their own


def test_parse_refuses_what_json_allows_but_strop_cannot_use() -> None:
    from strop.service.strictjson import BodyRejected, parse

    assert parse(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse(json.dumps({"k": "caf\u00e9 \U0001F600"}).encode()) == {"k": "caf\u00e9 \U0001F600"}  # a real pair
    for bad in (b'"\xed\xa0\x80"', b'"\\ud800"', b'{"a": NaN}', b'[Infinity]', b'{"a": 99999999999999999999}', b"[" * 40 + b"]" * 40):
        with pytest.raises(BodyRejected):
            parse(bad)


def test_log_of_the_isolation_server_has_no_tracebacks(server: str, tmp_path: Path) -> None:
    # the refusals above are 4xx at the edge: nothing reached a model thread as an unhandled error
    r = httpx.get(server + "/metrics", timeout=30)
    assert r.status_code == 200 and 'status="500"' not in r.text


def test_bulk_work_is_cut_into_chunks_queries_can_pass(tiny_encoder_path: str) -> None:
    """A bulk encode of long texts goes through the model thread in chunks of a bounded token
    budget, so a query waits for one chunk, not for the whole bulk request."""
    import numpy as np

    enc = Encoder.load(tiny_encoder_path, precision="fp32", device="cpu")
    batcher = EncodeBatcher(enc, max_batch=32)
    try:
        long = ["word " * 3000] * 64  # 15,000 characters each: every one is a full max_seq_length
        order = np.arange(len(long))
        n = batcher._chunk_len(long, order, 0)
        assert n * min(len(long[0]) // 4 + 2, enc.max_seq_length) <= batcher.bulk_tokens
        assert n < 32 and batcher._chunk_len(["hi"] * 500, np.arange(500), 0) == 128  # short texts: 4 batches
        assert batcher._chunk_len(["x" * 10**6], np.arange(1), 0) == 1  # always progress

        async def race() -> tuple[float, float]:
            t0 = time.perf_counter()
            bulk = asyncio.ensure_future(batcher.encode_bulk(long * 4))
            await asyncio.sleep(0.05)  # the bulk request is in the model thread
            await batcher.encode_query("a short question")
            t_query = time.perf_counter() - t0
            await bulk
            return t_query, time.perf_counter() - t0

        t_query, t_bulk = asyncio.run(race())
        assert t_query < t_bulk / 2, (t_query, t_bulk)  # the query did not wait for the whole bulk
    finally:
        batcher.close()
