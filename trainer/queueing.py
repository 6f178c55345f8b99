"""Putting a job on the queue and telling a live job from a lost one: shared by the API and the autopilot.

No torch here: the service imports this module alongside the job contract.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from strop.index.store import DocumentStore
from strop.trainer.contract import JOB_FUNCTION

JOB_TIMEOUT_S = 6 * 3600
HEARTBEAT_STALE_S = 60.0


def submit_job(store: DocumentStore, queue: Queue, prefix: str, collection: str, kind: str, spec: dict[str, Any],
               job_id: str | None = None) -> str:
    """Record the job (queued), then enqueue it; a queue that refuses it leaves a failed record saying why."""
    job_id = job_id or uuid.uuid4().hex
    store.create_job(job_id, collection, kind, spec)
    try:
        queue.enqueue(JOB_FUNCTION, job_id, job_id=job_id, job_timeout=JOB_TIMEOUT_S,
                      result_ttl=86400, failure_ttl=7 * 86400, meta={"collection": collection, "prefix": prefix})
    except redis.RedisError as e:
        store.update_job(job_id, state="failed", error=f"could not enqueue: {e}", finished_at=time.time())
        raise
    return job_id


def reconcile_job(store: DocumentStore, conn: redis.Redis, rec: dict[str, Any]) -> dict[str, Any]:
    """A running job whose worker vanished (kill -9, lost machine) is failed, not running forever; so is a
    queued one the queue lost."""
    if rec["state"] not in ("queued", "running"):
        return rec
    now = time.time()
    beat = rec.get("heartbeat_at") or rec.get("started_at")
    if rec["state"] == "running" and beat and now - beat > HEARTBEAT_STALE_S:
        msg = f"worker lost (no heartbeat for {int(now - beat)}s); the active version is unchanged: resubmit the job"
        if store.finish_job_if(rec["id"], ("running",), state="failed", error=msg, finished_at=now):
            return store.get_job(rec["id"])
    if rec["state"] == "queued":
        try:
            status = Job.fetch(rec["id"], connection=conn).get_status(refresh=True)
        except NoSuchJobError:
            status = None
        except redis.RedisError:
            return rec
        if status is None or str(status) in ("JobStatus.FAILED", "failed", "JobStatus.STOPPED", "stopped"):
            if now - rec["created_at"] > HEARTBEAT_STALE_S:
                store.finish_job_if(rec["id"], ("queued",), state="failed",
                                    error="the queue lost this job before a worker ran it; resubmit",
                                    finished_at=now)
                return store.get_job(rec["id"])
    return rec
