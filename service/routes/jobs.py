"""Training jobs: submit, follow, list, cancel."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, status

from strop.service.deps import Admin, CollectionDep, ManagerDep, Read
from strop.service.errors import ApiError, error_responses
from strop.service.routes.validation import check_job
from strop.service.strictjson import StrictJSONRoute
from strop.trainer.contract import JobSpec

router = APIRouter(route_class=StrictJSONRoute, tags=["jobs"], responses=error_responses(400, 401, 403, 404, 413, 422, 503))


def _queue(request: Request) -> Any:
    queue = request.app.state.queue
    if queue is None:
        raise ApiError(503, "no_queue", "this server has no job queue: start it with `strop serve` "
                       "(embedded Redis) or --redis-url")
    return queue


def job_view(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": rec["id"], "collection": rec["collection"], "kind": rec["kind"], "state": rec["state"],
        "stage": rec["stage"], "progress": rec["progress"], "metrics": rec["metrics"],
        "details": rec["details"], "version": rec["version"], "error": rec["error"],
        "created_at": rec["created_at"], "started_at": rec["started_at"], "finished_at": rec["finished_at"],
    }


@router.post("/collections/{name}/jobs", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin])
async def submit_job(spec: JobSpec, st: CollectionDep, request: Request, manager: ManagerDep) -> dict:
    """Queue a training job. Impossible jobs (unknown fields, missing documents, bad values) are a 422 here,
    not a failed job later."""
    queue = _queue(request)
    await to_thread.run_sync(check_job, spec, st.record, manager.store)
    job_id = await to_thread.run_sync(queue.submit, st.record.name, spec.kind, spec.model_dump(mode="json"))
    return {"job_id": job_id, "state": "queued"}


@router.get("/jobs/{job_id}", dependencies=[Read])
async def get_job(job_id: str, request: Request) -> dict:
    """State, stage, progress (step, total_steps, loss, eta_s), metrics before/after and the version made."""
    queue = _queue(request)
    return job_view(await to_thread.run_sync(queue.get, job_id))


@router.get("/jobs", dependencies=[Read])
async def list_jobs(request: Request, collection: str | None = None) -> dict:
    """Recent jobs, newest first, optionally for one collection."""
    queue = _queue(request)
    recs = await to_thread.run_sync(lambda: [queue.reconcile(r) for r in queue.store.list_jobs(collection)])
    return {"jobs": [job_view(r) for r in recs]}


@router.delete("/jobs/{job_id}", dependencies=[Admin])
async def cancel_job(job_id: str, request: Request) -> dict:
    """Cancel a queued or running job; the active version stays as it was."""
    queue = _queue(request)
    return job_view(await to_thread.run_sync(queue.cancel, job_id))
