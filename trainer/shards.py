"""A large collection's corpus re-encode, shared by every worker on the queue.

When a job's snapshot holds more than ``STROP_SHARD_DOCUMENTS`` documents, the job stages its
trained encoder (in object storage with ``STROP_ARTIFACTS_URL``, else under the data dir), splits
the snapshot into ranges of row ids, and puts one shard task per range on the job queue. Idle
workers take them; the job itself encodes shards too, so it never waits on a queue nobody serves.
Each shard is claimed in Redis (a key renewed while it encodes, so a worker that dies lets its
shard go after a minute), encoded with the staged encoder and written to the store's vector table
under a staging key; the job then assembles the shards in snapshot order, builds the index and
publishes as before, and drops the staged encoder and vectors.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from strop.index.collection import doc_text
from strop.index.encoder import Encoder
from strop.index.store import DocumentStore

log = logging.getLogger("strop.shards")

SHARD_FUNCTION = "strop.trainer.shards.run_shard"
CLAIM_TTL_S = 60
BATCH = 128


def stage_key(job_id: str) -> str:
    """The vector table's version key for a job's shards."""
    return f"stage-{job_id}"


def plan(rids: np.ndarray, per_shard: int) -> list[tuple[int, int]]:
    """Inclusive (first rid, last rid) ranges of at most ``per_shard`` snapshot rows each."""
    ordered = np.sort(np.asarray(rids, np.int64))
    return [(int(ordered[i]), int(ordered[min(i + per_shard, len(ordered)) - 1]))
            for i in range(0, len(ordered), per_shard)]


class Shards:
    """The Redis side of one job's shards: claims, completion, the staged encoder's location."""

    def __init__(self, conn: Any, prefix: str, job_id: str):
        self.r = conn
        self.job_id = job_id
        self.done_key = f"{prefix}:shards:{job_id}:done"
        self.claim_prefix = f"{prefix}:shards:{job_id}:claim:"

    def claim(self, i: int, owner: str) -> bool:
        return bool(self.r.set(self.claim_prefix + str(i), owner, nx=True, ex=CLAIM_TTL_S))

    def renew(self, i: int) -> None:
        self.r.expire(self.claim_prefix + str(i), CLAIM_TTL_S)

    def finish(self, i: int, owner: str) -> None:
        self.r.hset(self.done_key, str(i), owner)
        self.r.expire(self.done_key, 86400)

    def done(self) -> dict[int, str]:
        return {int(k): v.decode() if isinstance(v, bytes) else v for k, v in self.r.hgetall(self.done_key).items()}

    def claimed(self, i: int) -> bool:
        return bool(self.r.exists(self.claim_prefix + str(i)))

    def clear(self, n: int) -> None:
        self.r.delete(self.done_key, *[self.claim_prefix + str(i) for i in range(n)])


class Staging:
    """Where a job's trained encoder waits for shard workers: object storage, or a folder of the data dir."""

    def __init__(self, data_dir: str | Path, artifacts: Any, collection: str, job_id: str):
        self.artifacts = artifacts
        self.prefix = f"staging/{collection}/{job_id}/encoder"
        self.local = Path(data_dir) / "staging" / collection / job_id / "encoder"

    def put(self, save: Callable[[Path], None]) -> None:
        if self.artifacts is None:
            save(self.local)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp) / "encoder")
            self.artifacts.put_tree(self.prefix, Path(tmp) / "encoder")

    def fetch(self, scratch: Path) -> Path:
        if self.artifacts is None:
            return self.local
        dest = scratch / "encoder"
        self.artifacts.get_tree(self.prefix, dest)
        return dest

    def delete(self) -> None:
        if self.artifacts is not None:
            self.artifacts.delete_tree(self.prefix)
        shutil.rmtree(self.local.parent, ignore_errors=True)


def encode_shard(store: DocumentStore, encoder: Encoder, collection: str, job_id: str, lo: int, hi: int,
                 watermark: int, renew: Callable[[], None], check: Callable[[], None] = lambda: None) -> int:
    """Encode the snapshot rows with ``lo <= rid <= hi`` into the staging vectors; returns how many."""
    docs = store.documents_in_rids(collection, lo, hi, watermark)
    for s in range(0, len(docs), BATCH):
        check()
        part = docs[s:s + BATCH]
        vecs = encoder.encode([doc_text(d) for d in part]).vectors
        store.put_vectors(stage_key(job_id), [d.rid for d in part], vecs)
        renew()
    return len(docs)


def run_shard(job_id: str, collection: str, index: int, lo: int, hi: int, watermark: int) -> str:
    """The rq entry point of a shard task (another worker helping a job re-encode its corpus)."""
    import redis

    from strop.index.artifacts import open_artifacts
    from strop.trainer import worker
    from strop.trainer.contract import TERMINAL
    from strop.trainer.train import inference_encoder, load_model

    settings = worker.configured()
    store = DocumentStore(settings.store_location())
    conn = redis.Redis.from_url(settings.redis_url or "")
    shards = Shards(conn, settings.redis_prefix, job_id)
    if store.get_job(job_id)["state"] in TERMINAL or index in shards.done():
        return "skipped"
    owner = f"shard-worker-{worker.worker_name()}"
    if not shards.claim(index, owner):
        return "taken"
    staging = Staging(settings.data_dir, open_artifacts(settings.artifacts_url, settings.artifacts_endpoint),
                      collection, job_id)
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as scratch:
        model = load_model(str(staging.fetch(Path(scratch))), settings.resolved_device())
        encoder = inference_encoder(model, "student", settings.resolved_device())
        t = time.perf_counter()
        n = encode_shard(store, encoder, collection, job_id, lo, hi, watermark, lambda: shards.renew(index))
    shards.finish(index, owner)
    log.info("job %s: shard %d (%d documents) encoded in %.1fs", job_id, index, n, time.perf_counter() - t)
    return "done"


def reencode(store: DocumentStore, conn: Any, prefix: str, queue: Any, staging: Staging, encoder: Encoder,
             collection: str, job_id: str, rids: np.ndarray, texts: list[str], watermark: int, per_shard: int,
             save: Callable[[Path], None], progress: Callable[[int, int], None],
             check: Callable[[], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """The job's side: stage, queue the shards, encode alongside the helpers, assemble in snapshot order."""
    ranges = plan(rids, per_shard)
    shards = Shards(conn, prefix, job_id)
    staging.put(save)
    for i, (lo, hi) in enumerate(ranges):
        queue.enqueue(SHARD_FUNCTION, job_id, collection, i, lo, hi, watermark, job_timeout=6 * 3600,
                      result_ttl=3600, failure_ttl=86400)
    owner = "job"
    try:
        while True:
            check()
            done = shards.done()
            if len(done) == len(ranges):
                break
            mine = next((i for i in range(len(ranges)) if i not in done and shards.claim(i, owner)), None)
            if mine is None:  # every open shard is being encoded elsewhere: wait for them
                progress(len(done), len(ranges))
                time.sleep(0.2)
                continue
            lo, hi = ranges[mine]
            encode_shard(store, encoder, collection, job_id, lo, hi, watermark, lambda m=mine: shards.renew(m), check)
            shards.finish(mine, owner)
            progress(len(shards.done()), len(ranges))
        got = store.get_vectors(stage_key(job_id), [int(r) for r in rids], encoder.dim)
        out = np.empty((len(rids), encoder.dim), np.float32)
        missing = []
        for row, rid in enumerate(rids):
            v = got.get(int(rid))
            if v is None:
                missing.append(row)  # deleted since the snapshot: its shard no longer read it
            else:
                out[row] = v
        if missing:
            out[missing] = encoder.encode([texts[r] for r in missing]).vectors
        by = shards.done()
        return out, {"shards": len(ranges), "per_shard": per_shard,
                     "by_helpers": sum(1 for o in by.values() if o != owner), "encoded_here": len(missing)}
    finally:
        store.drop_vectors(stage_key(job_id), collection)
        staging.delete()
        shards.clear(len(ranges))
