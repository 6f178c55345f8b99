"""Keep a code collection in step with a source tree: which documents to upsert and which to delete.

Each ingested document carries ``metadata.sha1`` (of its text) and ``metadata.source =
"code-ingest"``; a re-run upserts only new or changed definitions and deletes the ingested
ones that vanished from the tree. Documents written by other means are never deleted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from strop.index.code.parse import CodeDoc

SOURCE_TAG = "code-ingest"


def to_document(doc: CodeDoc) -> dict[str, Any]:
    meta = dict(doc.metadata)
    meta["sha1"] = hashlib.sha1(doc.text.encode("utf-8", "surrogatepass")).hexdigest()
    meta["source"] = SOURCE_TAG
    return {"id": doc.id, "text": doc.text, "metadata": meta}


@dataclass
class SyncPlan:
    upsert: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: int = 0


def plan_sync(existing: dict[str, dict[str, Any]], docs: list[CodeDoc]) -> SyncPlan:
    """``existing`` maps document id -> metadata of what the collection holds now."""
    plan = SyncPlan()
    seen = set()
    for d in docs:
        doc = to_document(d)
        seen.add(doc["id"])
        old = existing.get(doc["id"])
        if old is not None and old == doc["metadata"]:
            plan.unchanged += 1
        else:
            plan.upsert.append(doc)
    plan.delete = sorted(i for i, meta in existing.items() if i not in seen and meta.get("source") == SOURCE_TAG)
    return plan
