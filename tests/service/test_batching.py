"""Micro-batching of query encodes, and back-pressure (429 + Retry-After) when the encode queue is full."""

from __future__ import annotations

import asyncio
import re
import threading

import numpy as np
import pytest

from strop.index.encoder import Encoder
from strop.service.batching import EncodeBatcher, Overloaded


@pytest.fixture(scope="module")
def encoder(tiny_encoder_path: str) -> Encoder:
    return Encoder.load(tiny_encoder_path, precision="fp32", device="cpu")


def long_texts(n: int, words: int = 120) -> list[str]:
    return [" ".join(f"token{(i * 7 + j) % 997}" for j in range(words)) for i in range(n)]


QUERIES = [f"query number {i} about {'cats' if i % 2 else 'dogs'} and item {i * 31 % 17}" for i in range(48)]


def test_concurrent_queries_form_batches(encoder: Encoder) -> None:
    sizes: list[int] = []
    batcher = EncodeBatcher(encoder, max_batch=16, queue_size=512, observe=lambda n, s: sizes.append(n))
    try:
        async def main() -> tuple[list[np.ndarray], np.ndarray]:
            busy = asyncio.ensure_future(batcher.encode_bulk(long_texts(128)))  # keeps the model thread busy
            await asyncio.sleep(0.01)
            vecs = await asyncio.gather(*(batcher.encode_query(q) for q in QUERIES))
            return list(vecs), await busy

        vecs, bulk = asyncio.run(main())
    finally:
        batcher.close()
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 16 and sum(sizes) == len(QUERIES)
    # batching changes nothing about the answers: each equals the query encoded alone, in order
    alone = encoder.encode(QUERIES).vectors
    np.testing.assert_allclose(np.stack(vecs), alone, atol=1e-5)
    np.testing.assert_allclose(bulk[::8], encoder.encode(long_texts(128)[::8]).vectors, atol=1e-5)


def test_grouped_searches_share_one_block(encoder: Encoder) -> None:
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def searcher(group: str):
        def run(block: np.ndarray) -> list:
            with lock:
                calls.append((group, block.shape[0]))
            return [(group, row.copy()) for row in block]

        return run

    batcher = EncodeBatcher(encoder, max_batch=32, queue_size=512)
    try:
        async def main() -> list:
            busy = asyncio.ensure_future(batcher.encode_bulk(long_texts(128)))
            await asyncio.sleep(0.01)
            out = await asyncio.gather(*(batcher.search(q, "A" if i % 2 else "B", searcher("A" if i % 2 else "B"))
                                         for i, q in enumerate(QUERIES)))
            await busy
            return out

        results = asyncio.run(main())
    finally:
        batcher.close()
    alone = encoder.encode(QUERIES).vectors
    for i, (group, vec) in enumerate(results):
        assert group == ("A" if i % 2 else "B")  # each answer from its own group's search
        np.testing.assert_allclose(vec, alone[i], atol=1e-5)  # and its own row of the block
    assert sum(n for _, n in calls) == len(QUERIES)
    assert max(n for _, n in calls) > 1, calls  # several queries searched in one call


def test_search_errors_reach_every_waiter(encoder: Encoder) -> None:
    batcher = EncodeBatcher(encoder, max_batch=8, queue_size=64)

    def broken(block: np.ndarray) -> list:
        raise ValueError("index exploded")

    try:
        async def main() -> list:
            return await asyncio.gather(*(batcher.search(q, "g", broken) for q in QUERIES[:6]),
                                        return_exceptions=True)

        out = asyncio.run(main())
    finally:
        batcher.close()
    assert all(isinstance(e, ValueError) for e in out), out


def test_full_queue_raises_overloaded(encoder: Encoder) -> None:
    batcher = EncodeBatcher(encoder, max_batch=4, queue_size=1)
    try:
        async def main() -> tuple[int, list[float], int]:
            busy = asyncio.ensure_future(batcher.encode_bulk(long_texts(128)))
            await asyncio.sleep(0.01)
            accepted, retry = [], []
            for q in QUERIES[:20]:
                try:
                    accepted.append(asyncio.ensure_future(batcher.encode_query(q)))
                    await asyncio.sleep(0)  # let it enqueue (or fail)
                except Overloaded as e:
                    retry.append(e.retry_after)
            results = await asyncio.gather(*accepted, return_exceptions=True)
            rejected = [r for r in results if isinstance(r, Overloaded)]
            retry += [r.retry_after for r in rejected]
            ok = sum(isinstance(r, np.ndarray) for r in results)
            await busy
            return ok, retry, len(results)

        ok, retry, n = asyncio.run(main())
        assert retry, "a queue of one never filled"
        assert all(r >= 1.0 for r in retry)
        assert ok >= 1 and ok + len(retry) == 20
        # and it recovers once drained
        assert asyncio.run(batcher.encode_query("after the storm")).shape == (encoder.dim,)
    finally:
        batcher.close()


def test_closed_batcher_refuses_work(encoder: Encoder) -> None:
    batcher = EncodeBatcher(encoder, max_batch=4, queue_size=8)
    batcher.close()
    with pytest.raises(RuntimeError):
        asyncio.run(batcher.encode_query("x"))
    with pytest.raises(RuntimeError):
        batcher.submit_bulk(["x"])


# -- over HTTP ---------------------------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def run_concurrently(client, n_threads: int, per_thread: int, bulk_docs: list[dict] | None) -> list:
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads + (1 if bulk_docs else 0))

    def searcher(t: int) -> None:
        start.wait()
        for j in range(per_thread):
            r = client.post("/collections/docs/search", json={"query": f"thread {t} query {j} cats", "top_k": 3})
            with lock:
                results.append(r)

    def writer() -> None:
        start.wait()
        r = client.put("/collections/docs/documents", json={"documents": bulk_docs})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=searcher, args=(t,)) for t in range(n_threads)]
    if bulk_docs:
        threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def setup_collection(client) -> None:
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"document {i} about cats and dogs number {i}"} for i in range(50)]
    assert client.put("/collections/docs/documents", json={"documents": docs}).status_code == 200


def test_http_load_forms_batches(make_client) -> None:
    client = make_client()
    setup_collection(client)
    bulk = [{"id": f"bulk{i}", "text": t} for i, t in enumerate(long_texts(384))]
    results = run_concurrently(client, n_threads=8, per_thread=12, bulk_docs=bulk)
    assert [r.status_code for r in results if r.status_code != 200] == []
    text = client.get("/metrics").text
    total = metric(text, "strop_encode_batch_size_count")
    singles = metric(text, 'strop_encode_batch_size_bucket{le="1.0"}')
    assert total >= 1 and singles < total, "no micro-batch held more than one query"
    assert metric(text, "strop_encode_batch_size_sum") >= 8 * 12
    assert client.get("/collections/docs").json()["count"] == 50 + 384


def test_full_queue_answers_429_with_retry_after(make_client) -> None:
    client = make_client(queue_size=1)
    setup_collection(client)
    bulk = [{"id": f"bulk{i}", "text": t} for i, t in enumerate(long_texts(384))]
    results = run_concurrently(client, n_threads=8, per_thread=10, bulk_docs=bulk)
    statuses = [r.status_code for r in results]
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 429}, statuses
    rejected = [r for r in results if r.status_code == 429]
    assert rejected, "a queue of one never overflowed under 8 concurrent clients"
    assert 200 in statuses
    for r in rejected:
        assert r.json()["error"]["code"] == "overloaded" and r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
    # the bulk write waited its turn (never 429) and landed whole; the service recovers
    assert client.get("/collections/docs").json()["count"] == 50 + 384
    r = client.post("/collections/docs/search", json={"query": "cats", "top_k": 3})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3
    text = client.get("/metrics").text
    assert metric(text, "strop_overloaded_total") == len(rejected)
    assert f'status="429"}} {float(len(rejected))}' in text

