"""`strop ingest code PATH`: parse a source tree locally and sync it into a collection over REST,
with progress bars on stderr (the work itself is :meth:`strop.client.Client.ingest_code`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from strop.client import Client


def bar(what: str, done: int, total: int | None) -> None:
    """One progress line on stderr, redrawn in place: ``upsert     [#####.....] 500/1000``."""
    width = 30
    if total:
        filled = int(width * done / total)
        line = f"\r{what:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    else:
        line = f"\r{what:<10} {done}"
    print(line, end="", file=sys.stderr, flush=True)


def ingest_code(c: Client | httpx.Client, root: Path, collection: str, batch: int = 200,
                exclude: Sequence[str] = (), include_generated: bool = False) -> dict[str, Any]:
    """Make ``collection`` (created as a code collection if missing) match the source tree at ``root``;
    print the summary (a line per language) and return it with ``skipped_files`` and ``vendored_dirs``
    counted.

    ``c``: a :class:`strop.client.Client`, or an ``httpx.Client`` whose base URL is the server.
    ``exclude``: extra gitignore-style patterns on top of the tree's own .gitignore files.
    ``include_generated``: also read generated and minified files and vendored folders.
    Raises NotADirectoryError and :class:`strop.client.StropError`.
    """
    client = c if isinstance(c, Client) else Client(http=c)
    stage = ""

    def progress(what: str, done: int, total: int | None) -> None:
        nonlocal stage
        if stage and what != stage:
            print(file=sys.stderr)
        stage = what
        bar(what, done, total)

    try:
        result = client.ingest_code(collection, root, exclude=exclude, progress=progress, batch_size=batch,
                                    include_generated=include_generated)
    finally:
        if stage:
            print(file=sys.stderr)
    for skipped in result["skipped_files"][:20]:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    languages = result.get("languages") or {}
    summary: dict[str, Any] = {**result, "skipped_files": len(result["skipped_files"]),
                               "vendored_dirs": len(result.get("vendored_dirs") or [])}
    print(" ".join(f"{k}={v}" for k, v in summary.items() if k != "languages"))
    for lang, counts in languages.items():
        print(f"  {lang}: " + " ".join(f"{k}={v}" for k, v in counts.items() if v or k in ("files", "definitions")))
    return summary
