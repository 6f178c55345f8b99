"""Autopilot policies: the trainer starts rounds for a collection by itself (strop.trainer.autopilot)."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from strop.index.store import DocumentStore
from strop.service.deps import Admin, CollectionDep, ManagerDep, Read
from strop.service.errors import ApiError, error_responses
from strop.service.routes.jobs import _queue
from strop.service.strictjson import StrictJSONRoute
from strop.trainer.autopilot import status
from strop.trainer.policy import AutopilotPolicy

router = APIRouter(route_class=StrictJSONRoute, tags=["autopilot"],
                   responses=error_responses(400, 401, 403, 404, 413, 422, 503))


class AutopilotRound(BaseModel):
    round: int = Field(..., description="1, 2, ... per collection")
    job_id: str = Field(..., description="the round's job (GET /jobs/{id}; DELETE cancels it)")
    state: str = Field(..., description="queued, running, succeeded, rejected, failed or cancelled")
    triggers: dict[str, Any] = Field(..., description="the triggers that started it, with what they counted")
    feedback_from: int = Field(..., description="feedback after this id was new to the round")
    feedback_to: int = Field(..., description="the last feedback id the round saw")
    yardstick_pairs: int = Field(..., description="evaluation queries it was judged on")
    reference: float | None = Field(None, description="its yardstick's score once activated: later rounds may "
                                                      "lose at most gate.max_regression from it")
    outcome: dict[str, Any] = Field(..., description="version, activated, before/after on the yardstick, the gate "
                                                     "(with every earlier round's yardstick), reason when not "
                                                     "activated")
    created_at: float = Field(..., description="when it started (Unix seconds)")
    finished_at: float | None = Field(None, description="when its job ended")


class AutopilotStatus(BaseModel):
    collection: str = Field(..., description="the collection")
    enabled: bool = Field(..., description="false after DELETE (or a policy put with enabled false)")
    state: str = Field(..., description="watching, round_in_flight, backing_off or disabled")
    policy: dict[str, Any] = Field(..., description="the policy as given")
    counts: dict[str, Any] = Field(..., description="feedback events, document changes and seconds since the "
                                                    "last round started")
    due: dict[str, Any] = Field(..., description="triggers met now")
    waiting: str | None = Field(None, description="why a due round has not started")
    rounds_started: int = Field(..., description="rounds started since the policy was first set")
    failures_in_a_row: int = Field(..., description="failed rounds since the last that did not fail")
    backoff_until: float | None = Field(None, description="no round starts before this time after a failure")
    rounds: list[AutopilotRound] = Field(..., description="newest first (the last 50)")


def _check(policy: AutopilotPolicy, modality: str, name: str, store: DocumentStore) -> None:
    if modality == "image":
        raise ApiError(422, "invalid_policy", "autopilot trains text and code collections (from feedback or "
                       "docstrings); image collections train with views jobs")
    if policy.source() == "docstrings" and modality != "code":
        raise ApiError(422, "invalid_policy", "train.source 'docstrings' needs a code collection")
    ids = {i for p in policy.yardstick.pairs or [] for i in p.positive_ids}
    if ids:
        missing = sorted(ids - set(store.get_many(name, ids)))
        if missing:
            raise ApiError(422, "unknown_documents",
                           f"{len(missing)} yardstick ids are not in collection {name!r}: {missing[:10]}")


def _status(store: DocumentStore, name: str) -> dict[str, Any]:
    out = status(store, name)
    if out is None:
        raise ApiError(404, "no_autopilot", f"collection {name!r} has no autopilot policy: PUT one first")
    return out


@router.put("/collections/{name}/autopilot", response_model=AutopilotStatus, dependencies=[Admin])
async def put_autopilot(policy: AutopilotPolicy, st: CollectionDep, manager: ManagerDep,
                        request: Request) -> dict[str, Any]:
    """Set (or replace) the collection's autopilot policy: triggers, the round's job template, the yardstick
    and replay. A replaced policy keeps its history and counts; a new one counts from now."""
    _queue(request)  # rounds are jobs: without a queue nothing would ever run them
    name = st.record.name
    await to_thread.run_sync(_check, policy, st.record.modality, name, manager.store)
    body = policy.model_dump(mode="json", exclude_unset=True)
    await to_thread.run_sync(manager.store.put_autopilot, name, body, policy.enabled)
    return await to_thread.run_sync(_status, manager.store, name)


@router.get("/collections/{name}/autopilot", response_model=AutopilotStatus, dependencies=[Read])
async def get_autopilot(st: CollectionDep, manager: ManagerDep) -> dict[str, Any]:
    """The policy, what each trigger counts now, and the rounds (when, why, job, yardstick before/after,
    activated or why not)."""
    return await to_thread.run_sync(_status, manager.store, st.record.name)


@router.delete("/collections/{name}/autopilot", response_model=AutopilotStatus, dependencies=[Admin])
async def delete_autopilot(st: CollectionDep, manager: ManagerDep) -> dict[str, Any]:
    """Turn the autopilot off (the policy and history are kept; a round in flight runs to its end, or cancel
    its job)."""
    name = st.record.name
    if not await to_thread.run_sync(manager.store.disable_autopilot, name):
        raise ApiError(404, "no_autopilot", f"collection {name!r} has no autopilot policy")
    return await to_thread.run_sync(_status, manager.store, name)
