"""Listing documents, and ingesting a source archive (zip or tarball) into a code collection: Python, Go,
Java, JavaScript, TypeScript and Rust files, each by its extension."""

from __future__ import annotations

import io
import lzma
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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


MAX_ARCHIVE_DEPTH = 64  # directories a member's path may go down
MAX_INGEST_DOCUMENTS = 20_000  # definitions one upload may create or update
_CHUNK = 1 << 16


class _Budget:
    """Counts what an archive really unpacks to (entries and bytes), whatever its headers claim."""

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > MAX_ARCHIVE_FILES:
            raise ApiError(413, "archive_too_large", f"archive has more than {MAX_ARCHIVE_FILES} entries")

    def copy(self, src: BinaryIO, target: Path) -> None:
        with open(target, "wb") as out:
            while block := src.read(_CHUNK):
                self.bytes += len(block)
                if self.bytes > MAX_UNPACKED_BYTES:
                    raise ApiError(413, "archive_too_large",
                                   f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
                out.write(block)


def _target(dest: Path, name: str) -> Path | None:
    """Where a member goes under ``dest``; None for entries that name no file (``.``, ``./``)."""
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [s for s in p.parts if s not in ("", ".")]
    if p.is_absolute() or ".." in parts or any("\0" in s for s in parts):
        raise ApiError(422, "unsafe_archive", f"archive member {name[:200]!r} escapes the archive root")
    if len(parts) > MAX_ARCHIVE_DEPTH:
        raise ApiError(422, "archive_too_deep", f"archive member {name[:200]!r} is more than "
                       f"{MAX_ARCHIVE_DEPTH} directories deep")
    return dest.joinpath(*parts) if parts else None


def _write(budget: _Budget, dest: Path, name: str, open_member: Callable[[], BinaryIO]) -> None:
    target = _target(dest, name)
    if target is None:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src:
            budget.copy(src, target)
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        raise ApiError(422, "bad_archive", f"archive member {name[:200]!r} collides with another entry "
                       "(a file and a directory of the same name)") from None
    except OSError as e:
        raise ApiError(422, "bad_archive", f"archive member {name[:200]!r} cannot be unpacked: "
                       f"{e.strerror or e}") from None


def _unpack(data: bytes, dest: Path) -> None:
    """Unpack a zip or a (compressed) tarball under ``dest``, counting entries as they are read and
    bytes as they are written; only regular files are written (links and devices are skipped)."""
    budget = _Budget()
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    budget.entry()
                    if not info.is_dir():
                        _write(budget, dest, info.filename, lambda info=info: zf.open(info))
            return
        try:
            tf = tarfile.open(fileobj=io.BytesIO(data), mode="r|*")  # a stream: members are read one by one
        except tarfile.TarError:
            raise ApiError(422, "bad_archive", "body is neither a zip file nor a (compressed) tarball") from None
        with tf:
            for m in tf:
                budget.entry()
                if m.isfile():
                    _write(budget, dest, m.name, lambda m=m: tf.extractfile(m))  # type: ignore[arg-type,return-value]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
            OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise ApiError(422, "bad_archive", f"the archive is damaged or uses an unsupported feature: "
                       f"{type(e).__name__}: {str(e)[:200]}") from None


def ingest_archive(manager: CollectionManager, name: str, data: bytes, batch: int = 500,
                   include_generated: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="strop-ingest-") as tmp:
        root = Path(tmp)
        _unpack(data, root)
        entries = [p for p in root.iterdir()]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]  # a tarball of one top-level folder: ids start below it
        result = parse_tree(root, include_generated=include_generated)
    if len(result.docs) > MAX_INGEST_DOCUMENTS:
        raise ApiError(413, "too_many_definitions", f"the archive holds {len(result.docs)} definitions; one "
                       f"upload may hold {MAX_INGEST_DOCUMENTS}: split the tree, or use `strop ingest code`, "
                       "which sends batches")
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
            "skipped_files": [{"path": p, "reason": r} for p, r in result.skipped],
            "languages": result.summary(), "vendored_dirs": result.vendored}


_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}


@router.post("/collections/{name}/ingest/code", dependencies=[Write], openapi_extra={"requestBody": {
    "required": True, "description": "a zip, tar, tar.gz or tar.xz of the source tree (its .gitignore files apply)",
    "content": {"application/zip": _ARCHIVE, "application/x-tar": _ARCHIVE, "application/gzip": _ARCHIVE,
                "application/octet-stream": _ARCHIVE}}})
async def ingest_code(st: CollectionDep, request: Request, manager: ManagerDep,
                      include_generated: bool = Query(False, description="also read generated and minified files "
                                                      "and vendored folders (node_modules, vendor...)")) -> dict:
    """Upload a zip or tar(.gz) of a source tree (Python, Go, Java, JavaScript, TypeScript, Rust); the collection
    is synced to it (upsert changed, delete vanished). Skips are counted per language in `languages`."""
    if st.record.modality != "code":
        raise ApiError(422, "wrong_modality", f"collection {st.record.name!r} holds {st.record.modality}, not code")
    data = await request.body()
    if not data:
        raise ApiError(422, "empty_body", "send the archive bytes as the request body")
    return await to_thread.run_sync(lambda: ingest_archive(manager, st.record.name, data,
                                                           include_generated=include_generated))
