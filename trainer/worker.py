"""The queue side of a job: ``run_job`` is what rq's work horse (a child of ``strop worker``) executes.

It claims the job (queued -> running), waits for the collection's lock so two
jobs on one collection never interleave, runs the pipeline, and keeps the job
record fresh from a heartbeat thread: progress every second, the lock renewed,
the cancel flag checked. If the worker process dies (kill -9), the heartbeat
notices its parent is gone and fails the job; if the whole process group dies,
the API fails the job once its heartbeat is stale. Either way the active version
is untouched: only a completed, verified version is ever activated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from pathlib import Path

import redis

from strop.index.store import DocumentStore
from strop.trainer.contract import TERMINAL, JobSpec, cancel_key, events_channel, lock_key
from strop.trainer.pipeline import Reporter, run_encoder_job
from strop.trainer.teacher.job import run_teacher_job
from strop.trainer.train import Cancelled

log = logging.getLogger("strop.worker")

LOCK_TTL_S = 30
HEARTBEAT_S = 1.0


def _env() -> tuple[Path, str, str]:
    data_dir = Path(os.environ.get("STROP_DATA_DIR", "./strop-data"))
    url = os.environ.get("STROP_REDIS_URL") or ""
    prefix = os.environ.get("STROP_REDIS_PREFIX", "strop")
    return data_dir, url, prefix


def run_job(job_id: str) -> str:
    data_dir, url, prefix = _env()
    store = DocumentStore(data_dir / "strop.db")
    r = redis.Redis.from_url(url)
    rec = store.get_job(job_id)
    if rec["state"] in TERMINAL:
        return rec["state"]
    spec = JobSpec.model_validate(rec["spec"])
    collection = rec["collection"]
    cancelled = threading.Event()
    stop_beat = threading.Event()
    reporter = Reporter(should_stop=cancelled.is_set)
    lock = r.lock(lock_key(prefix, collection), timeout=LOCK_TTL_S, blocking=False, thread_local=False)
    parent = os.getppid()

    def orphaned() -> None:
        """The worker died (kill -9, or with its whole deployment): fail the job and exit. Redis may have
        died with it (the embedded one does), so the lock is released only if it still answers."""
        try:
            store.finish_job_if(job_id, ("running", "queued"), state="failed", finished_at=time.time(),
                                error="worker process died; the active version is unchanged: resubmit")
            if lock.owned():
                lock.release()
        except Exception:  # noqa: BLE001 - Redis (or the data dir) went too: the lock expires, the API fails
            log.exception("orphaned job %s: could not record the failure", job_id)  # the stale job
        finally:
            os._exit(1)

    def beat() -> None:
        while not stop_beat.wait(HEARTBEAT_S):
            if os.getppid() != parent:  # before any Redis call: Redis may be what died
                orphaned()
            try:
                if r.exists(cancel_key(prefix, job_id)):
                    cancelled.set()
                if lock.owned():
                    lock.reacquire()
                store.update_job(job_id, stage=reporter.stage, progress=reporter.progress,
                                 details=reporter.details, metrics=reporter.metrics, heartbeat_at=time.time())
                if store.get_job(job_id)["state"] != "running":
                    # the API failed the job while this process was starved of beats (its record says
                    # "the active version is unchanged"): stop before anything is published
                    cancelled.set()
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.exception("heartbeat failed")

    if not store.finish_job_if(job_id, ("queued",), state="running", stage="waiting",
                               started_at=time.time(), heartbeat_at=time.time()):
        return store.get_job(job_id)["state"]
    beater = threading.Thread(target=beat, name="heartbeat", daemon=True)
    beater.start()
    try:
        reporter.stage = "waiting"
        while not lock.acquire(blocking=False):
            if cancelled.is_set():
                raise Cancelled()
            time.sleep(0.5)
        reporter.details["lock_acquired_at"] = time.time()
        if spec.train.source == "views":
            from strop.trainer.image.job import run_views_job

            run = run_views_job
        else:
            run = run_teacher_job if spec.kind == "teacher" else run_encoder_job
        result = run(job_id, collection, spec, store, data_dir, reporter,
                     device=os.environ.get("STROP_DEVICE", "cpu"),
                     announce=lambda c, v: _announce(r, prefix, c, v))
        stop_beat.set()
        beater.join(5)
        reporter.details["lock_released_at"] = time.time()
        store.finish_job_if(job_id, ("running",), state=result.state, stage="done", version=result.version,
                            metrics=result.metrics, details=reporter.details, progress=reporter.progress,
                            finished_at=time.time())
        return result.state
    except Cancelled:
        stop_beat.set()
        store.finish_job_if(job_id, ("running", "queued"), state="cancelled", finished_at=time.time())
        store.update_job(job_id, details=reporter.details, stage=reporter.stage)
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - the job record says what went wrong
        stop_beat.set()
        log.error("job %s failed: %s", job_id, traceback.format_exc())
        store.finish_job_if(job_id, ("running",), state="failed", error=f"{type(e).__name__}: {e}",
                            details=reporter.details, finished_at=time.time())
        return "failed"
    finally:
        stop_beat.set()
        try:
            if lock.owned():
                lock.release()
        except Exception:  # noqa: BLE001
            pass


def _announce(r: redis.Redis, prefix: str, collection: str, version: str) -> None:
    import json

    try:
        r.publish(events_channel(prefix), json.dumps({"collection": collection, "version": version}))
    except redis.RedisError:
        log.warning("could not announce %s/%s", collection, version)
