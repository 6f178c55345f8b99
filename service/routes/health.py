"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from strop.service.errors import error_response
from strop.service.security import metrics_access
from strop.service.strictjson import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: collections (encoders + indexes) loaded, every active version loadable, and Redis reachable
    (when configured)."""
    state = request.app.state
    checks: dict[str, str] = {}
    checks["collections"] = "ok" if getattr(state, "ready", False) else "loading"
    queue = getattr(state, "queue", None)
    if queue is None:
        checks["redis"] = "not configured"
    else:
        try:
            await to_thread.run_sync(queue.ping)
            checks["redis"] = "ok"
        except Exception as e:  # noqa: BLE001
            checks["redis"] = f"unreachable: {type(e).__name__}"
    manager = getattr(state, "manager", None)
    failures = dict(manager.failures) if manager is not None else {}
    if failures:  # an active version this replica cannot load: it would answer with an older one, or not at all
        checks["versions"] = "; ".join(f"{name}: {why}" for name, (_, why, _) in sorted(failures.items()))
    worker_status = getattr(state, "worker_status", None)  # the worker `strop serve` started, if any
    if worker_status is not None:
        checks["worker"] = worker_status()
    ok = checks["collections"] == "ok" and checks["redis"] in ("ok", "not configured") and not failures
    if not ok:
        return error_response(503, "not_ready", "; ".join(f"{k}: {v}" for k, v in checks.items()))
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = request.app.state.telemetry.render(request.app.state)
    return Response(body, media_type="text/plain; version=0.0.4")
