"""Training jobs: submit, follow (JSON or a Server-Sent Events stream), list, cancel."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Depends, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from strop.service.deps import Admin, CollectionDep, ManagerDep, Read
from strop.service.errors import ApiError, error_responses
from strop.service.routes.validation import check_job
from strop.service.strictjson import StrictJSONRoute
from strop.trainer.contract import TERMINAL, JobSpec

EVENTS_POLL_S = 0.5  # how often a stream reads the job record
EVENTS_PER_CALLER = 8  # open streams per API key (per client address when no keys are configured)
EVENTS_TOTAL = 256  # open streams per API process

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


class StreamSlots:
    """Counts open event streams per caller and in all, so streams cannot pile up without bound."""

    def __init__(self, per_caller: int, total: int):
        self.per_caller, self.total = per_caller, total
        self.open: Counter[str] = Counter()

    def take(self, caller: str) -> None:
        if self.open[caller] >= self.per_caller:
            raise ApiError(429, "too_many_streams", f"{self.per_caller} event streams are already open for this "
                           "caller: close one (or poll GET /jobs/{job_id})", headers={"Retry-After": "5"})
        if sum(self.open.values()) >= self.total:
            raise ApiError(429, "too_many_streams", f"this server has {self.total} event streams open; retry "
                           "later or poll GET /jobs/{job_id}", headers={"Retry-After": "5"})
        self.open[caller] += 1

    def give(self, caller: str) -> None:
        self.open[caller] -= 1
        if self.open[caller] <= 0:
            del self.open[caller]


def _caller(request: Request) -> str:
    """The API key (hashed) when keys are configured, else the client's address."""
    auth = request.headers.get("authorization", "")
    if request.app.state.settings.keys() and auth:
        return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "?")


async def _stream_slot(job_id: str, request: Request) -> AsyncIterator[dict[str, Any]]:
    """The job's record (404 before any stream starts when it is unknown) while holding a stream slot,
    released when the stream ends, however it ends."""
    queue = _queue(request)
    rec = job_view(await to_thread.run_sync(queue.get, job_id))
    slots = getattr(request.app.state, "job_streams", None)
    if slots is None:
        slots = request.app.state.job_streams = StreamSlots(EVENTS_PER_CALLER, EVENTS_TOTAL)
    caller = _caller(request)
    slots.take(caller)
    try:
        yield rec
    finally:
        slots.give(caller)


def _json_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error responses of a streaming route: JSON, whatever the stream's own media type."""
    return {s: {"description": r["description"],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            for s, r in error_responses(*statuses).items()}


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, dependencies=[Read],
            responses={200: {"description": "`event: job` with the job as on GET /jobs/{job_id}, sent at once and "
                                            "on every change; `event: end` after a terminal state, then the "
                                            "stream closes. A `: ping` comment every 15 s keeps proxies open."},
                       **_json_errors(400, 401, 403, 404, 413, 422, 503),
                       429: {**_json_errors(429)[429], "description": "too many open event streams for this "
                             "caller or this server: retry after Retry-After seconds"}})
async def job_events(request: Request,
                     first: Annotated[dict[str, Any], Depends(_stream_slot)]) -> AsyncIterator[ServerSentEvent]:
    """Follow a job as Server-Sent Events: its state, stage and progress whenever they change, until it ends.

    At most 8 streams per API key (per client address without keys); a 429 beyond that."""
    queue = _queue(request)
    rec, n = first, 0
    while True:
        n += 1
        yield ServerSentEvent(event="job", id=str(n), data=rec)
        if rec["state"] in TERMINAL:
            yield ServerSentEvent(event="end", data={"job_id": rec["job_id"], "state": rec["state"]})
            return
        while True:
            await anyio.sleep(EVENTS_POLL_S)
            if await request.is_disconnected():
                return
            now = job_view(await to_thread.run_sync(queue.get, rec["job_id"]))
            if now != rec:
                rec = now
                break
