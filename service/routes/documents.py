"""Document writes and reads. A write is durable (SQLite, fsync) and searchable before its 200."""

from __future__ import annotations

import base64
import binascii
import json

from anyio import to_thread
from fastapi import APIRouter

from strop.index.image.decode import ImageError, decode_image
from strop.index.settings import Settings
from strop.service.deps import CollectionDep, ManagerDep, Read, SettingsDep, Write
from strop.service.errors import ApiError, error_responses, image_error
from strop.service.schemas import DocumentOut, DocumentsPut, UpsertResult
from strop.service.strictjson import StrictJSONRoute
from strop.service.writes import make_documents

router = APIRouter(route_class=StrictJSONRoute, tags=["documents"], responses=error_responses(400, 401, 403, 404, 413, 422, 429))


def validate_documents(body: DocumentsPut, modality: str, settings: Settings) -> list[dict]:
    docs = body.documents
    if not docs:
        raise ApiError(422, "empty_request", "documents must hold at least one document")
    if len(docs) > settings.max_documents_per_request:
        raise ApiError(413, "too_many_documents",
                       f"{len(docs)} documents in one request; the limit is max_documents_per_request="
                       f"{settings.max_documents_per_request}: split the batch")
    seen: set[str] = set()
    dupes = sorted({d.id for d in docs if d.id in seen or seen.add(d.id)})  # type: ignore[func-returns-value]
    if dupes:
        raise ApiError(422, "duplicate_ids", f"duplicate document ids in one request: {dupes[:10]}")
    out = []
    for i, d in enumerate(docs):
        if any(ord(c) < 32 for c in d.id):
            raise ApiError(422, "invalid_id", f"documents[{i}].id contains control characters")
        meta = d.metadata or {}
        if len(json.dumps(meta)) > settings.max_metadata_bytes:
            raise ApiError(413, "metadata_too_large",
                           f"documents[{i}].metadata exceeds max_metadata_bytes={settings.max_metadata_bytes}")
        image = None
        if modality in ("text", "code"):
            if d.image is not None:
                raise ApiError(422, "wrong_modality",
                               f"documents[{i}] has an image but collection modality is {modality!r}: send text")
            if d.text is None or not d.text.strip():
                raise ApiError(422, "empty_text", f"documents[{i}].text must be a non-empty string")
        else:
            if d.image is None:
                raise ApiError(422, "missing_image", f"documents[{i}].image (base64) is required in image collections")
            try:
                image = base64.b64decode(d.image, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, "bad_base64", f"documents[{i}].image is not valid base64") from None
        if d.text is not None and len(d.text) > settings.max_document_chars:
            raise ApiError(413, "document_too_large",
                           f"documents[{i}].text has {len(d.text)} characters; max_document_chars="
                           f"{settings.max_document_chars}")
        out.append({"id": d.id, "text": d.text, "image": image, "metadata": meta})
    return out


def check_images(items: list[dict]) -> None:
    """Decode every image once before anything is stored: a broken one rejects the request (4xx)."""
    for i, item in enumerate(items):
        try:
            decode_image(item["image"])
        except ImageError as e:
            raise image_error(e, f"documents[{i}].image") from None


@router.put("/collections/{name}/documents", response_model=UpsertResult, dependencies=[Write])
async def put_documents(body: DocumentsPut, st: CollectionDep, manager: ManagerDep,
                        settings: SettingsDep) -> UpsertResult:
    """Insert or replace documents by id. All or nothing: a bad document rejects the whole request."""
    items = validate_documents(body, st.record.modality, settings)
    if st.record.modality == "image":
        await to_thread.run_sync(check_images, items)
    n, truncated = await to_thread.run_sync(manager.upsert, st.record.name, make_documents(items))
    return UpsertResult(upserted=n, truncated=truncated)


@router.get("/collections/{name}/documents/{doc_id:path}", response_model=DocumentOut, dependencies=[Read])
async def get_document(st: CollectionDep, doc_id: str, manager: ManagerDep) -> DocumentOut:
    """One stored document, text verbatim."""
    doc = await to_thread.run_sync(manager.store.get, st.record.name, doc_id)
    image = base64.b64encode(doc.image).decode() if doc.image else None
    return DocumentOut(id=doc.id, text=doc.text, image=image, metadata=doc.metadata)


@router.delete("/collections/{name}/documents/{doc_id:path}", dependencies=[Write])
async def delete_document(st: CollectionDep, doc_id: str, manager: ManagerDep) -> dict:
    """Delete a document; it leaves search results before the 200."""
    await to_thread.run_sync(manager.delete_document, st.record.name, doc_id)
    return {"deleted": doc_id}
