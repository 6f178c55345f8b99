"""What every client method does, written once for both transports (sans-IO).

Each operation is a generator that yields *steps*, a :class:`Call` (an HTTP request), a
:class:`Sleep` or a :class:`Blocking` local function, and receives each step's result: the decoded
JSON answer of a call. A failed step is thrown back into the generator, so an operation can
handle, say, a 404. :class:`strop.client.Client` runs the steps with httpx's blocking client and
:class:`strop.client.AsyncClient` with its async one; neither holds any request logic.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

from strop.client.errors import StropError
from strop.client.types import (
    TERMINAL_STATES,
    Activated,
    Autopilot,
    CollectionInfo,
    Deleted,
    Document,
    DocumentPage,
    EmbeddingsResponse,
    FeedbackResult,
    IngestSummary,
    Job,
    JobSubmitted,
    Metrics,
    Modality,
    SearchResult,
    VersionList,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request; its result is the decoded JSON of a 2xx answer."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Blocking:
    """Local work that must not block an event loop (the async client runs it in a thread)."""

    fn: Callable[[], Any]


Step = Call | Sleep | Blocking
Flow = Generator[Step, Any, T]

ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str]
UpsertProgress = Callable[[int, int | None], None]
IngestProgress = Callable[[str, int, int | None], None]


def _seg(value: str) -> str:
    """One path segment: document ids may hold '/', '?', '#', '%' or spaces."""
    q = quote(value, safe="")
    return {".": "%2E", "..": "%2E%2E"}.get(q, q)


def _coll(name: str) -> str:
    return f"/collections/{_seg(name)}"


def _b64(image: ImageInput) -> str:
    """Image bytes, or the path of an image file, as base64 text."""
    data = bytes(image) if isinstance(image, bytes | bytearray | memoryview) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _document(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    if isinstance(out.get("image"), bytes | bytearray | memoryview):
        out["image"] = _b64(out["image"])
    return out


def _given(**fields: Any) -> dict[str, Any]:
    """The optional fields the caller set (None = leave it to the server's default)."""
    return {k: v for k, v in fields.items() if v is not None}


# -- collections ---------------------------------------------------------------------------------
def create_collection(name: str, modality: Modality = "text", encoder: str | None = None,
                      index: str | Mapping[str, Any] | None = None) -> Flow[CollectionInfo]:
    """Create a collection; ``index`` is a kind ("auto", "flat", "hnsw", "ivf") or the full index options."""
    body: dict[str, Any] = {"name": name, "modality": modality, **_given(encoder=encoder)}
    if index is not None:
        body["index"] = {"kind": index} if isinstance(index, str) else dict(index)
    return (yield Call("POST", "/collections", json=body))


def list_collections() -> Flow[list[CollectionInfo]]:
    """Every collection with its active version."""
    return (yield Call("GET", "/collections"))["collections"]


def get_collection(name: str) -> Flow[CollectionInfo]:
    """Modality, live document count, encoder, teacher and active version of one collection."""
    return (yield Call("GET", _coll(name)))


def delete_collection(name: str) -> Flow[Deleted]:
    """Delete a collection, its documents and all its versions."""
    return (yield Call("DELETE", _coll(name)))


def set_teacher(name: str, teacher: str | None) -> Flow[CollectionInfo]:
    """Name the model that reranks this collection (a path or hub name; None removes it).

    The server loads it before answering: a bad one is a 422 and changes nothing.
    """
    return (yield Call("PUT", f"{_coll(name)}/teacher", json={"teacher": teacher}))


# -- documents -----------------------------------------------------------------------------------
def upsert(collection: str, documents: Iterable[Mapping[str, Any]], batch_size: int = 500,
           progress: UpsertProgress | None = None) -> Flow[int]:
    """Insert or replace ``documents`` ({"id", "text"?, "image"?, "metadata"?}; image as bytes or base64)
    in batches of ``batch_size``; returns how many were upserted.

    ``progress(done, total)`` is called after each batch (total is None when ``documents`` has no
    length). Each batch is all or nothing; when one is refused, the batches before it stay stored
    and the error message says which documents those were.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = len(documents) if isinstance(documents, Sized) else None
    it = iter(documents)
    done = upserted = 0
    while batch := [_document(d) for d in islice(it, batch_size)]:
        try:
            answer = yield Call("PUT", f"{_coll(collection)}/documents", json={"documents": batch})
        except StropError as e:
            if done:
                e.message += (f" (in the batch of documents {done + 1}-{done + len(batch)}: its documents[0] is "
                              f"document {done + 1}; documents 1-{done} were stored)")
            raise
        upserted += answer["upserted"]
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return upserted


def get_document(collection: str, id: str) -> Flow[Document]:
    """One stored document, text verbatim (image as base64)."""
    return (yield Call("GET", f"{_coll(collection)}/documents/{_seg(id)}"))


def delete_document(collection: str, id: str) -> Flow[Deleted]:
    """Delete a document; it has left search results when this returns."""
    return (yield Call("DELETE", f"{_coll(collection)}/documents/{_seg(id)}"))


def list_documents(collection: str, after: str = "", limit: int = 1000) -> Flow[DocumentPage]:
    """One page of document ids and metadata in id order; pass ``next`` back as ``after``."""
    return (yield Call("GET", f"{_coll(collection)}/documents", params={"after": after, "limit": limit}))


# -- search ---------------------------------------------------------------------------------------
def search(collection: str, query: str | None = None, *, image: ImageInput | None = None, top_k: int = 10,
           filter: Mapping[str, Any] | None = None, rerank: bool | None = None, lexical: float | None = None,
           teacher_weight: float | None = None) -> Flow[SearchResult]:
    """Nearest documents to ``query`` (text and code) or ``image`` (bytes or a file path; image collections).

    ``filter``: metadata equality, several keys = AND; ``rerank``: with the collection's teacher;
    ``lexical``: add that weight x BM25; ``teacher_weight``: with ``rerank``, fuse instead of replace.
    """
    body: dict[str, Any] = {"top_k": top_k, **_given(query=query, rerank=rerank, lexical=lexical,
                                                     teacher_weight=teacher_weight)}
    if image is not None:
        body["image"] = _b64(image)
    if filter:
        body["filter"] = dict(filter)
    return (yield Call("POST", f"{_coll(collection)}/search", json=body))


def evaluate(collection: str, pairs: Iterable[Mapping[str, Any]], k: int = 10, rerank: bool = False,
             lexical: float | None = None, teacher_weight: float | None = None) -> Flow[Metrics]:
    """MRR@10, recall@1, recall@k, nDCG@10 of the active version on ``pairs`` ({"query", "positive_ids"})."""
    body = {"pairs": [dict(p) for p in pairs], "k": k, "rerank": rerank,
            **_given(lexical=lexical, teacher_weight=teacher_weight)}
    return (yield Call("POST", f"{_coll(collection)}/evaluate", json=body))


def feedback(collection: str, query: str | None, positive_ids: Sequence[str],
             negative_ids: Sequence[str] | None = None, *, search_id: str | None = None) -> Flow[FeedbackResult]:
    """Record which documents answered ``query`` (and which did not); feedback jobs and the autopilot learn
    from it. A click on a hit: ``feedback(c, None, [hit_id], search_id=result["search_id"])``."""
    body = {"positive_ids": list(positive_ids), "negative_ids": list(negative_ids or []),
            **_given(query=query, search_id=search_id)}
    return (yield Call("POST", f"{_coll(collection)}/feedback", json=body))


# -- autopilot ------------------------------------------------------------------------------------
def set_autopilot(collection: str, policy: Mapping[str, Any]) -> Flow[Autopilot]:
    """Set the collection's autopilot policy (triggers, job template, yardstick, replay: docs/autopilot.md)."""
    return (yield Call("PUT", f"{_coll(collection)}/autopilot", json=dict(policy)))


def get_autopilot(collection: str) -> Flow[Autopilot]:
    """The policy, what each trigger counts now, and the rounds, newest first."""
    return (yield Call("GET", f"{_coll(collection)}/autopilot"))


def disable_autopilot(collection: str) -> Flow[Autopilot]:
    """Turn the autopilot off (policy and history kept)."""
    return (yield Call("DELETE", f"{_coll(collection)}/autopilot"))


def embeddings_response(input: str | Sequence[str], model: str,
                        encoding_format: str = "float") -> Flow[EmbeddingsResponse]:
    """The OpenAI-shaped answer of ``POST /v1/embeddings`` (``model``: a collection or an allowed encoder)."""
    body = {"model": model, "input": input if isinstance(input, str) else list(input),
            "encoding_format": encoding_format}
    return (yield Call("POST", "/v1/embeddings", json=body))


def embeddings(input: str | Sequence[str], model: str) -> Flow[list[list[float]]]:
    """One vector per input (a single string gives a list of one); ``model``: a collection or an encoder."""
    answer = yield from embeddings_response(input, model)
    return [cast(list[float], d["embedding"]) for d in sorted(answer["data"], key=lambda d: d["index"])]


# -- jobs -----------------------------------------------------------------------------------------
def submit_job(collection: str, spec: Mapping[str, Any]) -> Flow[JobSubmitted]:
    """Queue a training job (fields: docs/training.md); an impossible one is a 422 now, not a failure later."""
    return (yield Call("POST", f"{_coll(collection)}/jobs", json=dict(spec)))


def get_job(job_id: str) -> Flow[Job]:
    """State, stage, progress, metrics before/after and the version the job made."""
    return (yield Call("GET", f"/jobs/{_seg(job_id)}"))


def list_jobs(collection: str | None = None) -> Flow[list[Job]]:
    """Recent jobs, newest first, of one collection or all."""
    return (yield Call("GET", "/jobs", params=_given(collection=collection)))["jobs"]


def cancel_job(job_id: str) -> Flow[Job]:
    """Cancel a queued or running job (a finished one is returned as it is); the active version stays."""
    return (yield Call("DELETE", f"/jobs/{_seg(job_id)}"))


def follow_job(job_id: str, on_progress: Callable[[Job], None] | None = None, poll_s: float = 1.0,
               timeout: float | None = None) -> Flow[Job]:
    """Poll the job every ``poll_s`` seconds until it succeeds, is rejected, fails or is cancelled, and
    return that final record; ``on_progress(job)`` gets every record read, the final one included.

    Raises TimeoutError when ``timeout`` seconds pass first (the job keeps running).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = yield from get_job(job_id)
        if on_progress is not None:
            on_progress(job)
        if job["state"] in TERMINAL_STATES:
            if job["state"] == "succeeded" and job.get("version") and (job.get("details") or {}).get("activated"):
                yield from _until_served(job["collection"], job["version"])
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout}s; it keeps running "
                               f"(follow it again, or cancel it)")
        yield Sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


def _until_served(collection: str, version: str, wait_s: float = 30.0) -> Flow[None]:
    """The worker activates a job's version and the API process swaps to it on the announcement (or
    its next poll), a moment later: wait for that, so a search right after ``follow_job`` sees the
    new version. Gives up quietly after ``wait_s`` (another activation may have come first)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        info = yield from get_collection(collection)
        if info["version"]["id"] == version:
            return
        yield Sleep(0.2)


# -- versions -------------------------------------------------------------------------------------
def list_versions(collection: str) -> Flow[VersionList]:
    """Every kept version, oldest first, and the id of the active one."""
    return (yield Call("GET", f"{_coll(collection)}/versions"))


def activate_version(collection: str, version_id: str) -> Flow[Activated]:
    """Serve ``version_id`` (roll back or forward); searches keep answering during the swap."""
    return (yield Call("POST", f"{_coll(collection)}/versions/{_seg(version_id)}/activate"))


# -- code ------------------------------------------------------------------------------------------
def ingest_code(collection: str, path: str | os.PathLike[str], exclude: Sequence[str] = (),
                progress: IngestProgress | None = None, batch_size: int = 200,
                include_generated: bool = False) -> Flow[IngestSummary]:
    """Make ``collection`` (created as a code collection if missing) hold the definitions of the source
    tree at ``path`` (Python, Go, Java, JavaScript, TypeScript and Rust, by file extension): new and
    changed ones are upserted, vanished ones deleted, the rest left alone.

    It parses here and syncs through the document routes rather than uploading an archive to
    ``POST /collections/{c}/ingest/code``: that works with any strop server, sends only what changed,
    reports progress per batch and is not bound by the server's body size limit.
    ``exclude``: gitignore-style patterns on top of the tree's .gitignore files.
    ``include_generated``: also read generated and minified files and vendored folders (skipped and
    counted by default). ``progress(stage, done, total)`` with stage "parse", "upsert" or "delete".
    """
    from strop.index.code.parse import parse_tree
    from strop.index.code.sync import plan_sync

    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory: give the root folder of a source tree")
    on_parse = (lambda d, t: progress("parse", d, t)) if progress is not None else None
    result = yield Blocking(lambda: parse_tree(root, progress=on_parse, extra_ignore=tuple(exclude),
                                               include_generated=include_generated))
    try:
        info = yield from get_collection(collection)
    except StropError as e:
        if e.status != 404:
            raise
        info = yield from create_collection(collection, "code")
    if info["modality"] != "code":
        raise StropError(422, "wrong_modality", f"collection {collection!r} holds {info['modality']}, not code: "
                         "ingest into a code collection (a new name creates one)")
    existing: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        page = yield from list_documents(collection, after, 1000)
        existing.update((d["id"], d.get("metadata") or {}) for d in page["documents"])
        if not page["next"]:
            break
        after = page["next"]
    plan = plan_sync(existing, result.docs)
    on_upsert = (lambda d, t: progress("upsert", d, t)) if progress is not None else None
    upserted = yield from upsert(collection, plan.upsert, batch_size, on_upsert)
    for n, doc_id in enumerate(plan.delete, 1):
        yield from delete_document(collection, doc_id)
        if progress is not None:
            progress("delete", n, len(plan.delete))
    return {"files": result.files, "documents": len(result.docs), "upserted": upserted,
            "unchanged": plan.unchanged, "deleted": len(plan.delete),
            "skipped_files": [{"path": p, "reason": r} for p, r in result.skipped],
            "languages": result.summary(), "vendored_dirs": list(result.vendored)}


# -- health ---------------------------------------------------------------------------------------
def health() -> Flow[dict[str, Any]]:
    """Liveness: ``{"status": "ok"}`` when the process answers."""
    return (yield Call("GET", "/healthz"))


def ready() -> Flow[dict[str, Any]]:
    """Readiness: models, indexes and Redis ready; a 503 ``not_ready`` StropError while loading."""
    return (yield Call("GET", "/readyz"))


# -- running steps --------------------------------------------------------------------------------
def decode(status: int, content: bytes, json: Callable[[], Any]) -> Any:
    """The JSON of a 2xx answer; any other answer raises StropError, read from the error body when it has one."""
    if 200 <= status < 300:
        return json() if content else None
    try:
        err = json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except Exception:  # noqa: BLE001 - not strop's error shape (a proxy, another server)
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 502: "bad_gateway",
                503: "unavailable"}.get(status, "http_error")
        text = content.decode("utf-8", "replace").strip().replace("\n", " ")
        message = text[:300] or "no error body"
    raise StropError(status, code, message)
