"""The web console at /console: pages to search, train, compare versions, roll back and evaluate.

The pages are Jinja2 shells that hold no data, so a browser can load them before it has a key; a
small script (static/console.js) calls the REST API with the key the user typed, kept in the
browser tab's sessionStorage, exactly as any other client does. Everything is served from the
installed package (templates/, static/, and static/vendor/ for uPlot and highlight.js, committed
from their npm packages with their licences): no CDN, no build step, it works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from strop.trainer.contract import JobSpec, MiningSpec

HERE = Path(__file__).resolve().parent
STATIC = "/console/static"

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)


def _job_defaults() -> dict[str, Any]:
    """The job form's defaults, read from the job contract so the form never drifts from it."""
    fields, mining = JobSpec.model_fields, MiningSpec.model_fields
    return {"epochs": fields["epochs"].default, "batch_size": fields["batch_size"].default,
            "negatives_per_query": mining["negatives_per_query"].default, "holdout": 0.2}


def _page(request: Request, template: str, page: str, **context: Any) -> HTMLResponse:
    auth_required = bool(request.app.state.settings.keys())  # the script asks for a key before any call
    return templates.TemplateResponse(request, template, {"page": page, "static": STATIC,
                                                          "auth_required": auth_required, **context},
                                      headers={"Cache-Control": "no-cache"})


@router.get("", response_class=HTMLResponse)
async def collections_page(request: Request) -> HTMLResponse:
    return _page(request, "collections.html", "collections")


@router.get("/", response_class=RedirectResponse)
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/console")


@router.get("/collections/{name}", response_class=HTMLResponse)
async def search_page(request: Request, name: str) -> HTMLResponse:
    return _page(request, "search.html", "search", collection=name)


@router.get("/collections/{name}/versions", response_class=HTMLResponse)
async def versions_page(request: Request, name: str) -> HTMLResponse:
    return _page(request, "versions.html", "versions", collection=name)


@router.get("/collections/{name}/evaluate", response_class=HTMLResponse)
async def evaluate_page(request: Request, name: str) -> HTMLResponse:
    return _page(request, "evaluate.html", "evaluate", collection=name)


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, collection: str | None = None, job: str | None = None) -> HTMLResponse:
    return _page(request, "jobs.html", "jobs", collection=collection or "", job=job or "",
                 defaults=_job_defaults())


def install(app: FastAPI) -> None:
    """Serve the console pages and their static files."""
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
