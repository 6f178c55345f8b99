"""`strop ingest code PATH`: parse a Python tree locally and sync it into a collection over REST."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from strop.index.code.parse import parse_tree
from strop.index.code.sync import plan_sync


def _bar(done: int, total: int, what: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    print(f"\r{what:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


def existing_documents(c: Any, collection: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    after = ""
    while True:
        r = c.get(f"/collections/{collection}/documents", params={"after": after, "limit": 1000})
        r.raise_for_status()
        page = r.json()
        for d in page["documents"]:
            out[d["id"]] = d.get("metadata") or {}
        if not page.get("next"):
            return out
        after = page["next"]


def ingest_code(c: Any, root: Path, collection: str, batch: int = 200, exclude: Sequence[str] = ()) -> dict:
    """Parse ``root`` and make ``collection`` (created as a code collection if missing) match it.

    ``exclude``: extra gitignore-style patterns on top of the tree's own .gitignore files.
    """
    if not root.is_dir():
        print(f"{root} is not a directory", file=sys.stderr)
        sys.exit(2)
    result = parse_tree(root, progress=lambda d, t: _bar(d, t, "parse"), extra_ignore=exclude)
    print(file=sys.stderr)
    r = c.get(f"/collections/{collection}")
    if r.status_code == 404:
        c.post("/collections", json={"name": collection, "modality": "code"}).raise_for_status()
    elif r.status_code != 200:
        r.raise_for_status()
    elif r.json()["modality"] != "code":
        print(f"collection {collection!r} is not a code collection", file=sys.stderr)
        sys.exit(2)
    plan = plan_sync(existing_documents(c, collection), result.docs)
    for i in range(0, len(plan.upsert), batch):
        c.put(f"/collections/{collection}/documents", json={"documents": plan.upsert[i : i + batch]}).raise_for_status()
        _bar(min(i + batch, len(plan.upsert)), len(plan.upsert), "upsert")
    if plan.upsert:
        print(file=sys.stderr)
    for doc_id in plan.delete:
        c.delete(f"/collections/{collection}/documents/{doc_id}").raise_for_status()
    summary = {"files": result.files, "documents": len(result.docs), "upserted": len(plan.upsert),
               "unchanged": plan.unchanged, "deleted": len(plan.delete), "skipped_files": len(result.skipped)}
    for path, reason in result.skipped[:20]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return summary
