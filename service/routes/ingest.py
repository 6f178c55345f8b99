"""Listing documents, and ingesting a Python source archive (zip or tarball) into a code collection."""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from anyio import to_thread
from fastapi import APIRouter, Query, Request

from strop.index.code.parse import parse_tree
from strop.index.code.sync import plan_sync
from strop.service.deps import CollectionDep, ManagerDep, Read, Write
from strop.service.errors import ApiError, error_responses
from strop.service.manager import CollectionManager
from strop.service.strictjson import StrictJSONRoute
from strop.service.writes import make_documents

router = APIRouter(route_class=StrictJSONRoute, tags=["documents"], responses=error_responses(400, 401, 403, 404, 413, 422))

MAX_ARCHIVE_FILES = 50_000
MAX_UNPACKED_BYTES = 512 * 1024 * 1024


@router.get("/collections/{name}/documents", dependencies=[Read])
async def list_documents(st: CollectionDep, manager: ManagerDep, after: str = "",
                         limit: int = Query(1000, ge=1, le=10_000)) -> dict:
    """Document ids and metadata in id order; pass `next` back as `after` for the following page."""
    rows = await to_thread.run_sync(manager.store.list_documents, st.record.name, after, limit)
    docs = [{"id": i, "metadata": m} for i, m in rows]
    return {"documents": docs, "next": docs[-1]["id"] if len(docs) == limit else None}


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and not name.startswith("/")


def _unpack(data: bytes, dest: Path) -> None:
    total = 0
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ARCHIVE_FILES:
                raise ApiError(413, "archive_too_large", f"archive has more than {MAX_ARCHIVE_FILES} files")
            for info in infos:
                if not _safe_member(info.filename):
                    raise ApiError(422, "unsafe_archive", f"archive member {info.filename!r} escapes the archive root")
                total += info.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise ApiError(413, "archive_too_large", f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
                target = dest / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        return
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        raise ApiError(422, "bad_archive", "body is neither a zip file nor a (compressed) tarball") from None
    with tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        if len(members) > MAX_ARCHIVE_FILES:
            raise ApiError(413, "archive_too_large", f"archive has more than {MAX_ARCHIVE_FILES} files")
        for m in members:
            if not _safe_member(m.name):
                raise ApiError(422, "unsafe_archive", f"archive member {m.name!r} escapes the archive root")
            total += m.size
            if total > MAX_UNPACKED_BYTES:
                raise ApiError(413, "archive_too_large", f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        tf.extractall(dest, members=members, filter="data")


def ingest_archive(manager: CollectionManager, name: str, data: bytes, batch: int = 500) -> dict:
    with tempfile.TemporaryDirectory(prefix="strop-ingest-") as tmp:
        root = Path(tmp)
        _unpack(data, root)
        entries = [p for p in root.iterdir()]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]  # a tarball of one top-level folder: ids start below it
        result = parse_tree(root)
    existing: dict[str, dict] = {}
    after = ""
    while True:
        rows = manager.store.list_documents(name, after, 5000)
        existing.update(rows)
        if len(rows) < 5000:
            break
        after = rows[-1][0]
    plan = plan_sync(existing, result.docs)
    for i in range(0, len(plan.upsert), batch):
        manager.upsert(name, make_documents(plan.upsert[i : i + batch]))
    for doc_id in plan.delete:
        manager.delete_document(name, doc_id)
    return {"files": result.files, "documents": len(result.docs), "upserted": len(plan.upsert),
            "unchanged": plan.unchanged, "deleted": len(plan.delete),
            "skipped_files": [{"path": p, "reason": r} for p, r in result.skipped]}


_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}


@router.post("/collections/{name}/ingest/code", dependencies=[Write], openapi_extra={"requestBody": {
    "required": True, "description": "a zip, tar, tar.gz or tar.xz of the source tree (its .gitignore files apply)",
    "content": {"application/zip": _ARCHIVE, "application/x-tar": _ARCHIVE, "application/gzip": _ARCHIVE,
                "application/octet-stream": _ARCHIVE}}})
async def ingest_code(st: CollectionDep, request: Request, manager: ManagerDep) -> dict:
    """Upload a zip or tar(.gz) of a Python tree; the collection is synced to it (upsert changed, delete vanished)."""
    if st.record.modality != "code":
        raise ApiError(422, "wrong_modality", f"collection {st.record.name!r} holds {st.record.modality}, not code")
    data = await request.body()
    if not data:
        raise ApiError(422, "empty_body", "send the archive bytes as the request body")
    return await to_thread.run_sync(ingest_archive, manager, st.record.name, data)
