"""Collections and their versions."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, status

from strop.index.image.encoder import DEFAULT_IMAGE_ENCODER, is_image_spec
from strop.index.retention import version_sizes
from strop.index.store import DocumentStore
from strop.index.versions import VersionStore
from strop.service.deps import Admin, CollectionDep, ManagerDep, Read, SettingsDep
from strop.service.errors import ApiError, error_responses
from strop.service.manager import BadEncoder, CollectionManager, check_name
from strop.service.schemas import (
    CollectionCreate,
    CollectionInfo,
    StorageInfo,
    TeacherSet,
    VersionBytes,
    VersionInfo,
    VersionList,
)
from strop.service.state import CollectionState
from strop.service.strictjson import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, tags=["collections"], responses=error_responses(400, 401, 403, 404, 409, 413, 422))


def info(st: CollectionState, count: int, storage: StorageInfo | None = None) -> CollectionInfo:
    m = st.served.version.manifest
    return CollectionInfo(
        name=st.record.name,
        modality=st.record.modality,
        count=count,
        encoder=st.record.encoder,
        teacher=st.record.teacher,
        version=VersionInfo(id=st.served.id, created_at=m.get("created_at"), metrics=m.get("metrics", {})),
        storage=storage,
    )


_sizes: weakref.WeakKeyDictionary[DocumentStore, dict[str, tuple[Any, dict]]] = weakref.WeakKeyDictionary()
_sizes_lock = threading.Lock()


def cached_version_sizes(store: DocumentStore, vstore: VersionStore) -> dict[str, dict[str, Any]]:
    """``version_sizes``, reused while nothing it counts can have changed: no write since (the store's
    sequence watermark, all processes) and the same kept versions and active pointer. Counting a
    version's vector rows reads every document of the collection (~150 ms at 100,000), too slow to
    repeat on every page of the console."""
    key = (store.watermark(), tuple((m["id"], m.get("created_at")) for m in vstore.list()), vstore.active())
    with _sizes_lock:
        hit = _sizes.setdefault(store, {}).get(vstore.collection)
    if hit is not None and hit[0] == key:
        return hit[1]
    sizes = version_sizes(store, vstore)
    with _sizes_lock:
        _sizes[store][vstore.collection] = (key, sizes)
    return sizes


def storage(manager: CollectionManager, st: CollectionState) -> StorageInfo:
    """The bytes each kept version holds (files on disk and vector rows in the store)."""
    sizes = cached_version_sizes(manager.store, st.vstore)
    versions = [VersionBytes(id=vid, active=vid == st.served.id, **s) for vid, s in sizes.items()]
    return StorageInfo(bytes=sum(v.bytes for v in versions), retention=manager.retention, versions=versions)


@router.post("/collections", status_code=status.HTTP_201_CREATED, response_model=CollectionInfo, dependencies=[Admin])
async def create_collection(body: CollectionCreate, manager: ManagerDep, settings: SettingsDep) -> CollectionInfo:
    """Create a collection; its first version is the base encoder plus an empty index."""
    try:
        check_name(body.name)
    except ValueError as e:
        raise ApiError(422, "invalid_name", str(e)) from None
    if body.modality == "image":
        encoder = body.encoder or DEFAULT_IMAGE_ENCODER
        if not is_image_spec(encoder):
            raise ApiError(422, "bad_encoder", f"image collections need an image encoder: {DEFAULT_IMAGE_ENCODER!r} "
                           f"(the default) or a directory holding a saved logo model; got {encoder!r}")
    else:
        encoder = body.encoder or settings.default_encoder
        if is_image_spec(encoder):
            raise ApiError(422, "bad_encoder", f"{encoder!r} is an image encoder; {body.modality} collections need "
                           "a text encoder")
    if body.name in manager.names():
        raise ApiError(409, "conflict", f"collection {body.name!r} already exists")
    try:
        st = await to_thread.run_sync(manager.create, body.name, body.modality, encoder, body.index.as_spec())
    except BadEncoder as e:
        raise ApiError(422, "bad_encoder", f"{e}: name a sentence-transformers model directory or hub name") from None
    return info(st, 0)


@router.get("/collections", dependencies=[Read])
async def list_collections(manager: ManagerDep) -> dict:
    """All collections with their active versions."""
    out = []
    for name in manager.names():
        try:
            st = manager.state(name)
        except Exception:  # deleted meanwhile
            continue
        count = await to_thread.run_sync(manager.store.count, name)
        out.append(info(st, count))
    return {"collections": out}


@router.get("/collections/{name}", response_model=CollectionInfo, dependencies=[Read])
async def get_collection(st: CollectionDep, manager: ManagerDep) -> CollectionInfo:
    """One collection: modality, live document count, encoder, teacher, the active version and the bytes
    each kept version holds."""
    count = await to_thread.run_sync(manager.store.count, st.record.name)
    return info(st, count, await to_thread.run_sync(storage, manager, st))


@router.put("/collections/{name}/teacher", response_model=CollectionInfo, dependencies=[Admin])
async def set_teacher(body: TeacherSet, st: CollectionDep, manager: ManagerDep) -> CollectionInfo:
    """Name the teacher that reranks this collection's searches and assists its encoder jobs (a teacher
    job sets its own). The model is loaded before the answer, so a bad one is a 422 and changes nothing."""
    if st.record.modality == "image":
        raise ApiError(422, "teacher_unsupported", "teachers score text pairs: they are for text and code collections")
    if body.teacher is not None and not body.teacher.strip():
        raise ApiError(422, "bad_teacher", "teacher is empty: name a path or model, or send null to remove it")
    teacher = body.teacher.strip() if body.teacher else None
    if teacher and Path(teacher).expanduser().exists():
        teacher = str(Path(teacher).expanduser().resolve())  # the worker and other replicas resolve it alike
    elif teacher and teacher.startswith(("/", ".", "~")):
        raise ApiError(422, "bad_teacher", f"teacher path {body.teacher!r} does not exist")
    try:
        await to_thread.run_sync(manager.set_teacher, st.record.name, teacher)
    except (OSError, ValueError, RuntimeError) as e:  # no model there, or not one strop can score with
        raise ApiError(422, "bad_teacher", f"could not load teacher {body.teacher!r}: {e}") from e
    count = await to_thread.run_sync(manager.store.count, st.record.name)
    return info(st, count)


@router.delete("/collections/{name}", dependencies=[Admin])
async def delete_collection(st: CollectionDep, manager: ManagerDep) -> dict:
    """Delete a collection, its documents and all its versions."""
    await to_thread.run_sync(manager.delete, st.record.name)
    return {"deleted": st.record.name}


@router.get("/collections/{name}/versions", response_model=VersionList, dependencies=[Read])
async def list_versions(st: CollectionDep, manager: ManagerDep) -> dict:
    """Every kept version, oldest first, with the bytes it holds; `active` marks the one being served."""
    versions = await to_thread.run_sync(manager.versions, st.record.name)
    sizes = await to_thread.run_sync(cached_version_sizes, manager.store, st.vstore)
    for v in versions:
        s = sizes.get(v["id"], {})
        v.update({k: s.get(k) for k in ("bytes", "disk_bytes", "vector_bytes")})
    return {"versions": versions, "active": st.served.id}


@router.post("/collections/{name}/versions/{vid}/activate", dependencies=[Admin])
async def activate_version(st: CollectionDep, vid: str, manager: ManagerDep) -> dict:
    """Serve version `vid` (rollback or roll forward). Searches keep answering during the swap."""
    previous = st.served.id
    served = await to_thread.run_sync(manager.activate, st.record.name, vid)
    return {"active": served.id, "previous": previous}
