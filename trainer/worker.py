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

import redis
from rq import Worker

from strop.index.cancel import Cancelled
from strop.index.settings import Settings
from strop.index.store import DocumentStore
from strop.trainer.contract import TERMINAL, JobSpec, announce, cancel_key, lock_key
from strop.trainer.pipeline import JobContext, Reporter, run_encoder_job
from strop.trainer.teacher.job import run_teacher_job

log = logging.getLogger("strop.worker")

LOCK_TTL_S = 30
HEARTBEAT_S = 1.0


_settings: Settings | None = None


class QueueWorker(Worker):
    """rq's worker, stopping its command listener with a deadline.

    rq's listener thread waits for commands in ``get_message(timeout=60)``, and rq stops it with
    redis-py's ``stop()``, which joins the thread without a timeout. On a busy machine the wake-up
    the unsubscribe should cause can be missed, and the worker then takes a full minute to exit
    after its last job (cancel drills on a loaded machine measured 60-62 s instead of 2). The
    thread is a daemon: a second of grace is enough, and the process exits without it."""

    def unsubscribe(self) -> None:
        if self.pubsub_thread:
            self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
            try:
                self.pubsub.unsubscribe()
            except redis.RedisError:
                pass
            self.pubsub_thread.stop(timeout=1.0)
            self.pubsub.close()


def configure(settings: Settings) -> None:
    """Hand the worker process its settings before it starts taking jobs; rq's work horse is a fork
    of that process, so every job it runs sees them."""
    global _settings
    _settings = settings


def configured() -> Settings:
    """This worker process's settings (for the queue's other entry points, e.g. shard tasks)."""
    if _settings is None:
        raise RuntimeError("strop.trainer.worker.configure(settings) was not called in this worker process")
    return _settings


def worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getppid()}"


def run_job(job_id: str) -> str:
    """The rq entry point (``JOB_FUNCTION``): run one job to a terminal state and return that state."""
    if _settings is None:
        raise RuntimeError("strop.trainer.worker.configure(settings) was not called in this worker process")
    settings = _settings
    prefix = settings.redis_prefix
    store = DocumentStore(settings.store_location())
    r = redis.Redis.from_url(settings.redis_url or "")
    rec = store.get_job(job_id)
    if rec["state"] in TERMINAL:
        return rec["state"]
    spec = JobSpec.model_validate(rec["spec"])
    collection = rec["collection"]
    cancelled = threading.Event()
    stop_beat = threading.Event()
    reporter = Reporter(should_stop=cancelled.is_set, fault_pause=settings.fault_pause,
                        fault_fail=settings.fault_fail)
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
        result = run(JobContext(job_id, collection, spec, store, settings, reporter,
                                announce=lambda c, v: announce(r, prefix, c, v), redis=r))
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

