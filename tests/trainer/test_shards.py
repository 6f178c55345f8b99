"""A large re-encode shared with other workers (strop.trainer.shards): real Redis, a real store, the tiny
real encoder; the protocol in process, then a job end to end with two workers."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
import test_jobs
from test_jobs import REDIS_URL, active, load, wait

import strop.trainer.shards as shards_mod
from strop.index.store import Document, DocumentStore
from strop.trainer.shards import Shards, Staging, encode_shard, plan, reencode

pytestmark = [pytest.mark.redis]

corpus, env, client, workers = test_jobs.corpus, test_jobs.env, test_jobs.client, test_jobs.workers


class FakeQueue:
    """Collects the shard tasks a job would put on the rq queue (the protocol test runs no worker)."""

    def __init__(self) -> None:
        self.tasks: list[tuple] = []

    def enqueue(self, fn: str, *args, **kw) -> None:
        self.tasks.append(args)


def test_plan_covers_every_row_once() -> None:
    rids = np.array([9, 3, 5, 1, 7, 2, 8], np.int64)
    assert plan(rids, 3) == [(1, 3), (5, 8), (9, 9)]
    assert plan(rids, 100) == [(1, 9)]


@pytest.fixture()
def setup(tmp_path: Path, tiny_encoder_path: str):
    from strop.trainer.train import inference_encoder, load_model

    store = DocumentStore(tmp_path / "strop.db")
    store.create_collection("c", "text", tiny_encoder_path, {"kind": "flat"})
    docs = store.upsert("c", [Document(id=f"d{i}", text=f"document {i} about {['rivers', 'stars', 'bread'][i % 3]}")
                              for i in range(50)])
    model = load_model(tiny_encoder_path, "cpu")
    enc = inference_encoder(model, "student", "cpu")
    conn = redis.Redis.from_url(REDIS_URL)
    return store, docs, model, enc, conn, tmp_path


def test_the_job_waits_for_a_helper_and_assembles_in_snapshot_order(setup, monkeypatch) -> None:
    from strop.trainer.pipeline import save_model

    store, docs, model, enc, conn, tmp = setup
    prefix, job = "test-" + uuid.uuid4().hex[:8], "job-" + uuid.uuid4().hex[:6]
    rids = np.array([d.rid for d in docs][::-1], np.int64)  # snapshot order differs from rid order
    texts = [d.text for d in docs][::-1]
    watermark = store.watermark()
    s = Shards(conn, prefix, job)
    assert s.claim(1, "helper")  # a helper holds shard 1 before the job looks
    queue = FakeQueue()
    out: dict = {}

    def run() -> None:
        out["vecs"], out["info"] = reencode(store, conn, prefix, queue, Staging(tmp, None, "c", job), enc, "c", job,
                                            rids, texts, watermark, 20, lambda p: save_model(model, p),
                                            lambda d, t: None, lambda: None)

    t = threading.Thread(target=run)
    t.start()
    end = time.time() + 30
    while not ({0, 2} <= set(s.done())) and time.time() < end:
        time.sleep(0.05)
    assert set(s.done()) == {0, 2} and t.is_alive()  # the job did the rest and waits for shard 1
    assert len(queue.tasks) == 3 and (tmp / "staging" / "c" / job / "encoder").is_dir()
    lo, hi = queue.tasks[1][3:5]
    encode_shard(store, enc, "c", job, lo, hi, watermark, lambda: s.renew(1))
    s.finish(1, "helper")
    t.join(30)
    expected = enc.encode(texts).vectors
    assert np.allclose(out["vecs"], expected, atol=1e-5)
    assert out["info"] == {"shards": 3, "per_shard": 20, "by_helpers": 1, "encoded_here": 0}
    assert store.get_vectors(shards_mod.stage_key(job), [int(r) for r in rids], enc.dim) == {}  # dropped
    assert not (tmp / "staging" / "c" / job).exists() and not s.done()


def test_a_dead_helpers_shard_is_taken_back(setup, monkeypatch) -> None:
    from strop.trainer.pipeline import save_model

    store, docs, model, enc, conn, tmp = setup
    monkeypatch.setattr(shards_mod, "CLAIM_TTL_S", 1)
    prefix, job = "test-" + uuid.uuid4().hex[:8], "job-" + uuid.uuid4().hex[:6]
    rids = np.array([d.rid for d in docs], np.int64)
    s = Shards(conn, prefix, job)
    assert s.claim(0, "helper that dies")
    t0 = time.time()
    vecs, info = reencode(store, conn, prefix, FakeQueue(), Staging(tmp, None, "c", job), enc, "c", job, rids,
                          [d.text for d in docs], store.watermark(), 25, lambda p: save_model(model, p),
                          lambda d, t: None, lambda: None)
    assert info["by_helpers"] == 0 and time.time() - t0 >= 0.5
    assert np.allclose(vecs, enc.encode([d.text for d in docs]).vectors, atol=1e-5)


def test_a_job_shares_its_reencode_with_another_worker(client, corpus, workers) -> None:
    evals = load(client, corpus)
    body = test_jobs.job_body(corpus, evals, max_steps=4)
    job_id = client.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start(burst=False, STROP_SHARD_DOCUMENTS="40")
    workers.start(burst=False, STROP_SHARD_DOCUMENTS="40")
    job = wait(client, job_id)
    assert job["state"] == "succeeded", job
    info = job["details"]["reencode"]
    assert info["shards"] == -(-len(corpus["docs"]) // 40) and info["per_shard"] == 40
    # what was published is what one worker would have computed: same ranking on the evaluation pairs
    deadline = time.time() + 10
    while active(client) != job["version"] and time.time() < deadline:
        time.sleep(0.1)
    after = client.post("/collections/code/evaluate", json=evals).json()
    assert after["mrr@10"] == pytest.approx(job["metrics"]["after"]["mrr@10"], abs=0.02)
