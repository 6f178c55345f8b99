"""Building, loading and catching up collection versions.

These are the pieces both sides share: the trainer builds a version from a
store snapshot (``build_version``); the service loads one (``load_version``) and
reconciles it with every write the store acknowledged since (``catch_up``,
``apply_changes``). Reconciliation is idempotent, so it is safe to run on start,
on activation, and on every poll of the change feed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.index import faiss_index as fi
from strop.index.code.parse import context_header
from strop.index.faiss_index import IndexSpec
from strop.index.live import LiveIndex
from strop.index.store import Change, Document, DocumentStore
from strop.index.versions import ENCODER_DIR, INDEX_FILE, VersionStore

log = logging.getLogger("strop.collection")

EncodeFn = Callable[[Sequence[str]], np.ndarray]
Sidecar = Callable[[Path, np.ndarray], None]


def doc_text(doc: Document) -> Any:
    """What a document is embedded from: the stored text verbatim, after a location comment for code
    documents whose metadata names their ``qualname`` (:func:`strop.index.code.parse.context_header`), or
    ``(image bytes, text)`` for image documents (the image encoder reads both views)."""
    if doc.image is not None:
        return (doc.image, doc.text or "")
    header = context_header(doc.metadata)
    return f"{header}\n{doc.text or ''}" if header else doc.text or ""


@dataclass
class ServedVersion:
    """Everything a request needs, taken once per request: encoder and index always match."""

    collection: str
    id: str
    manifest: dict[str, Any]
    encoder_source: str
    live: LiveIndex
    spec: IndexSpec
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.live.dim


def encoder_source(vstore: VersionStore, manifest: dict[str, Any]) -> str:
    """Path or spec of a version's encoder: its own weights, else the base model it references."""
    enc = manifest.get("encoder", {})
    if enc.get("path"):
        return str(vstore.path(manifest["id"]) / enc["path"])
    return enc.get("ref") or "default"


def build_version(
    store: DocumentStore,
    vstore: VersionStore,
    vid: str,
    encode: EncodeFn,
    dim: int,
    spec: IndexSpec,
    *,
    encoder_ref: str | None = None,
    save_encoder: Callable[[Path], None] | None = None,
    parent: str | None = None,
    job: str | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    batch: int = 256,
    progress: Callable[[int, int], None] | None = None,
    text_of: Callable[[Document], str] = doc_text,
    sidecar: Sidecar | None = None,
) -> dict[str, Any]:
    """Encode every live document at the current watermark, build the index, write the version.

    Exactly one of ``encoder_ref`` (a base model spec) or ``save_encoder`` (writes
    fine-tuned weights into a directory) describes the encoder.
    """
    collection = vstore.collection
    watermark = store.watermark()
    total = store.count(collection)
    ids: list[int] = []
    chunks: list[np.ndarray] = []
    buf: list[Document] = []

    def flush() -> None:
        if buf:
            chunks.append(np.asarray(encode([text_of(d) for d in buf]), np.float32))
            ids.extend(d.rid for d in buf)
            buf.clear()
            if progress:
                progress(len(ids), total)

    for doc in store.iter_documents(collection, max_seq=watermark):
        buf.append(doc)
        if len(buf) >= batch:
            flush()
    flush()
    vecs = np.vstack(chunks) if chunks else np.empty((0, dim), np.float32)
    return write_version(vstore, vid, np.asarray(ids, np.int64), vecs, dim, spec, watermark,
                         encoder_ref=encoder_ref, save_encoder=save_encoder, parent=parent, job=job,
                         metrics=metrics, extra=extra, sidecar=sidecar)


def write_version(
    vstore: VersionStore,
    vid: str,
    rids: np.ndarray,
    vecs: np.ndarray,
    dim: int,
    spec: IndexSpec,
    watermark: int,
    *,
    encoder_ref: str | None = None,
    save_encoder: Callable[[Path], None] | None = None,
    parent: str | None = None,
    job: str | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    sidecar: Sidecar | None = None,
) -> dict[str, Any]:
    """Build the index over (rids, vecs) and write version ``vid`` atomically.

    ``sidecar(dir, rids)`` writes per-document artifacts other than vectors (an image collection's
    reference features for verification) into the version, so they are checksummed and travel with it.
    """
    index = fi.build(spec, dim, np.asarray(rids, np.int64), vecs)

    def fill(tmp: Path) -> dict[str, Any]:
        fi.save(index, tmp / INDEX_FILE)
        if sidecar is not None:
            sidecar(tmp, np.asarray(rids, np.int64))
        if save_encoder is not None:
            save_encoder(tmp / ENCODER_DIR)
            enc: dict[str, Any] = {"path": ENCODER_DIR, "base": encoder_ref}
        else:
            enc = {"ref": encoder_ref or "default"}
        return {
            "id": vid,
            "parent": parent,
            "job": job,
            "encoder": enc,
            "dim": dim,
            "index": {**spec.to_dict(), "built_kind": fi.inner_kind(index)},
            "watermark": watermark,
            "count": int(index.ntotal),
            "metrics": metrics or {},
            **(extra or {}),
        }

    return vstore.write(vid, fill)


def version_vectors(store: DocumentStore, vstore: VersionStore, manifest: dict[str, Any],
                    rids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors a version already holds for ``rids`` (its index, then the store's per-version table).

    Returns (found mask, vectors for the found rows in ``rids`` order).
    """
    index = fi.load(vstore.path(manifest["id"]) / INDEX_FILE)
    dim = int(manifest["dim"])
    ids, vecs = fi.all_vectors(index)
    pos = {int(r): i for i, r in enumerate(ids)}
    out = np.zeros((len(rids), dim), np.float32)
    found = np.zeros(len(rids), bool)
    rest = []
    for j, r in enumerate(rids):
        i = pos.get(int(r))
        if i is None:
            rest.append(j)
        else:
            out[j] = vecs[i]
            found[j] = True
    if rest:
        got = store.get_vectors(manifest["id"], [int(rids[j]) for j in rest], dim)
        for j in rest:
            v = got.get(int(rids[j]))
            if v is not None:
                out[j] = v
                found[j] = True
    return found, out


def load_index(vstore: VersionStore, manifest: dict[str, Any]) -> LiveIndex:
    spec = IndexSpec.from_dict(manifest.get("index"))
    index = fi.load(vstore.path(manifest["id"]) / INDEX_FILE)
    return LiveIndex(index, spec, int(manifest["dim"]))


def catch_up(
    store: DocumentStore, served: ServedVersion, encode: EncodeFn, text_of: Callable[[Document], str] = doc_text
) -> tuple[int, dict[str, int]]:
    """Make ``served`` hold exactly the store's live documents; returns (cursor seq, id->rid map).

    Vectors for rows past the version's watermark come from the store's vector
    table when another process already encoded them with this version, else they
    are encoded now and saved there.
    """
    cursor = store.watermark()
    live_map = store.live_rids(served.collection)
    live_rids = np.fromiter(live_map.values(), np.int64, count=len(live_map))
    have = served.live.ids()
    stale = np.setdiff1d(have, live_rids, assume_unique=False)
    if stale.size:
        served.live.remove(stale)
    missing = np.setdiff1d(live_rids, have, assume_unique=False)
    if missing.size:
        _add_rows(store, served, missing.tolist(), encode, text_of)
    return cursor, live_map


def apply_changes(
    store: DocumentStore,
    served: ServedVersion,
    changes: Sequence[Change],
    id_map: dict[str, int],
    encode: EncodeFn,
    text_of: Callable[[Document], str] = doc_text,
) -> None:
    """Apply a slice of the change feed (writes made by other processes) to ``served``."""
    remove: list[int] = []
    add: list[int] = []
    for ch in changes:
        old = id_map.get(ch.id)
        if old is not None and old != ch.rid:
            remove.append(old)
        if ch.deleted:
            id_map.pop(ch.id, None)
            remove.append(ch.rid)
        else:
            id_map[ch.id] = ch.rid
            if not served.live.contains(ch.rid):
                add.append(ch.rid)
    if remove:
        served.live.remove(remove)
    if add:
        _add_rows(store, served, add, encode, text_of)


def _add_rows(
    store: DocumentStore,
    served: ServedVersion,
    rids: list[int],
    encode: EncodeFn,
    text_of: Callable[[Document], str],
) -> None:
    for start in range(0, len(rids), 2048):
        chunk = rids[start : start + 2048]
        cached = store.get_vectors(served.id, chunk, served.dim)
        need = [r for r in chunk if r not in cached]
        if need:
            docs = store.by_rids(need, with_image=True)
            need = [r for r in need if r in docs]  # deleted meanwhile: the change feed will say so
            if need:
                vecs = np.asarray(encode([text_of(docs[r]) for r in need]), np.float32)
                store.put_vectors(served.id, need, vecs)
                for r, v in zip(need, vecs, strict=True):
                    cached[r] = v
        present = [r for r in chunk if r in cached]
        if present:
            served.live.add(present, np.vstack([cached[r] for r in present]))
