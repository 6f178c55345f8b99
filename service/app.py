"""App factory: ``create_app(settings)``; models, indexes and the queue live on ``app.state``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from strop.index.settings import Settings
from strop.index.store import DocumentStore
from strop.service import console, errors
from strop.service.batching import Overloaded
from strop.service.errors import error_response
from strop.service.manager import CollectionManager
from strop.service.models import ModelRegistry
from strop.service.routes import autopilot, collections, documents, embeddings, health, ingest, jobs, search
from strop.service.routes import docs as api_docs
from strop.service.security import AuthenticateFirst
from strop.service.telemetry import Telemetry, Timer

log = logging.getLogger("strop.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        # One OpenMP thread per FAISS search: searches already run two at a time in the search pool,
        # and on a busy 2-core machine a 2-thread batch-1 search spin-waits for ~12 ms
        # (bench/index_kinds.py: 0.23 ms with 1 thread vs 12 ms with 2 on HNSW at 50k).
        from strop.index.faiss_index import set_threads

        set_threads(1)
        telemetry: Telemetry = app.state.telemetry
        store = DocumentStore(settings.store_location())
        models = ModelRegistry(settings.precision, settings.resolved_device(), settings.batch_size,
                               settings.queue_size, observe=telemetry.observe_batch,
                               teacher_disk_cache=settings.teacher_disk_cache(),
                               bulk_tokens=settings.bulk_chunk_tokens, backend=settings.encoder_backend,
                               backend_cache=str(settings.data_dir / "backends"),
                               query_cache=settings.query_cache_entries, on_cache=telemetry.observe_cache)
        # Import the encoder stack before reporting ready: a replica that opens its first collection
        # later (one created through another replica) must not pay a multi-second import then.
        await to_thread.run_sync(importlib.import_module, "sentence_transformers")
        pinned = None
        if settings.preload_default_encoder:
            try:
                pinned = await to_thread.run_sync(models.acquire, settings.default_encoder)
            except Exception:  # a missing default is reported when a collection asks for it
                log.exception("could not preload the default encoder %s", settings.default_encoder)
        queue = None
        if settings.redis_url:
            from strop.service.queue import JobQueue

            queue = JobQueue(settings.redis_url, settings.redis_prefix, store)
        from strop.index.artifacts import open_remote

        manager = CollectionManager(store, models, settings.data_dir, settings.index_auto_threshold,
                                    settings.version_retention,
                                    on_activate=queue.announce if queue is not None else None,
                                    remote=open_remote(settings, store))
        app.state.store, app.state.models, app.state.manager, app.state.queue = store, models, manager, queue
        app.state.embedding_models = {}
        from strop.service.searchlog import SearchLog

        app.state.searchlog = SearchLog(queue.redis if queue is not None else None, settings.redis_prefix)
        app.state.ready = False
        await to_thread.run_sync(manager.open_all)
        app.state.ready = True
        stop = threading.Event()
        tasks = [asyncio.create_task(_poll_loop(manager, settings.poll_interval_s))]
        listener = None
        if queue is not None:
            listener = threading.Thread(target=queue.listen, args=(manager, stop), name="events", daemon=True)
            listener.start()
        try:
            yield
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if listener is not None:
                await to_thread.run_sync(listener.join, 3.0)
            app.state.searchlog.close()
            manager.close()
            if pinned is not None:
                models.release(pinned)
            models.close()
            if queue is not None:
                queue.close()

    app = FastAPI(
        title="strop",
        version="0.1.0",
        description="Self-improving embedding search: collections, FAISS search, training jobs and hot-swapped versions.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets below, so it works offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.telemetry = Telemetry()
    errors.install(app)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        app.state.telemetry.rejected.inc()
        return error_response(429, "overloaded", "encode queue is full; retry later",
                              headers={"Retry-After": str(int(exc.retry_after + 0.999))})

    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthenticateFirst, keys=settings.keys())  # outermost of the two: 401 before any body

    app.add_middleware(_Observe, telemetry=app.state.telemetry)

    for module in (health, embeddings, collections, ingest, documents, search, jobs, autopilot):
        app.include_router(module.router)
    api_docs.install(app)
    console.install(app)
    return app


async def _poll_loop(manager: CollectionManager, interval: float) -> None:
    """Fallback sync with other processes: active pointers and the store's change feed."""
    while True:
        await asyncio.sleep(interval)
        try:
            await to_thread.run_sync(manager.poll)
        except Exception:
            log.exception("poll failed")


class _Observe:
    """Request count and latency per route template, as a plain ASGI middleware.

    (``@app.middleware("http")`` wraps every request in an extra task and stream pair; at
    hundreds of requests per second on 2 cores that overhead shows in the p50.)
    """

    def __init__(self, app: Any, telemetry: Telemetry):
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timer = Timer()
        status = 500

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.telemetry.requests.labels(scope.get("method", ""), path, str(status)).inc()
            self.telemetry.latency.labels(path).observe(timer.ms / 1000.0)


class _BodyLimit:
    """Reject bodies over ``max_bytes`` with 413 (by Content-Length, or while streaming)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = json.dumps({"error": {"code": "body_too_large",
                                        "message": f"request body exceeds max_body_bytes={self.max_bytes}"}}).encode()
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_json(send, 413, message)
                    return
        seen = 0
        sent_error = False

        async def limited() -> dict:
            nonlocal seen, sent_error
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    sent_error = True
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_json(send, 413, message)


class _TooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
