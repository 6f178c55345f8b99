"""Error shape ``{"error": {"code", "message"}}`` for every failure, 4xx for caller mistakes."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from strop.index.artifacts import ArtifactsUnavailable
from strop.index.sqlbackend import StoreUnavailable
from strop.index.store import Conflict, NotFound
from strop.index.versions import VersionError

log = logging.getLogger("strop.api")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="a stable machine-readable code, e.g. not_found, invalid_request, "
                      "overloaded", examples=["not_found"])
    message: str = Field(..., description="what went wrong and what to do about it")


class ErrorBody(BaseModel):
    """Every error strop answers: 4xx for what the caller got wrong, 5xx only for a server fault."""

    error: ErrorDetail = Field(..., description="the error's code and message")


_MEANING = {
    400: "malformed JSON",
    401: "missing or unknown API key",
    403: "the API key's scope does not allow this",
    404: "no such collection, document, version or job",
    409: "conflicts with the current state (an existing name, no teacher to rerank with)",
    413: "body, batch, document or query over its limit",
    422: "invalid request: the message names the field and the fix",
    429: "the encode queue is full: retry after Retry-After seconds",
    503: "a service this needs (the job queue) is unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all in strop's error shape."""
    return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in statuses}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


_IMAGE_STATUS = {"image_too_large": 413, "image_too_many_pixels": 413}


def image_error(e: Exception, where: str) -> ApiError:
    """An ``strop.index.image.decode.ImageError`` as a 4xx: 413 for size limits, 422 for everything else."""
    code = getattr(e, "code", "invalid_image")
    message = getattr(e, "message", str(e))
    return ApiError(_IMAGE_STATUS.get(code, 422), code, f"{where}: {message}")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe(errors: list[dict[str, Any]]) -> tuple[int, str, str]:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return 400, "malformed_json", f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return 422, "invalid_request", "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _describe(list(exc.errors()))
        if code == "invalid_request" and request.url.path.endswith("/jobs"):
            code = "invalid_job"
        return error_response(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if type(exc.__cause__).__name__ == "_TooLarge":
            # A streamed (chunked) body ran past max_body_bytes: app._BodyLimit raises from receive(),
            # and FastAPI wraps any body-reading error in a generic 400. It is a 413.
            limit = request.app.state.settings.max_body_bytes
            return error_response(413, "body_too_large", f"request body exceeds max_body_bytes={limit}")
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                            "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(VersionError)
    async def _version(_: Request, exc: VersionError) -> JSONResponse:
        return error_response(404, "version_not_found", str(exc))

    @app.exception_handler(redis.RedisError)
    async def _queue_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("job queue unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(503, "queue_unavailable", "the job queue (Redis) is not answering; searches and "
                              "writes still work: retry the job request later", headers={"Retry-After": "5"})

    async def _store_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("document store unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(503, "store_unavailable", "the document store (PostgreSQL) is not answering: "
                              "retry later", headers={"Retry-After": "5"})

    @app.exception_handler(ArtifactsUnavailable)
    async def _artifacts_down(_: Request, exc: ArtifactsUnavailable) -> JSONResponse:
        log.warning("object store unavailable: %s", exc)
        return error_response(503, "artifacts_unavailable", "the object store holding versions is not answering: "
                              "retry later (the versions already loaded keep serving)", headers={"Retry-After": "5"})

    import psycopg

    for exc_type in (StoreUnavailable, psycopg.OperationalError, psycopg.InterfaceError):
        app.add_exception_handler(exc_type, _store_down)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal server error: {type(exc).__name__}")
