"""Which files code ingest reads, in which language, and which it leaves out as generated or vendored.

A language is chosen by file extension alone, so one tree may mix languages (a Go service with a
TypeScript front end is one collection). Python is parsed with ``ast`` (:mod:`strop.index.code.parse`),
the others with tree-sitter (:mod:`strop.index.code.treesitter`); both produce the same documents.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

__all__ = [
    "EXTENSIONS",
    "LANGUAGES",
    "MAX_LINE_CHARS",
    "VENDORED_DIRS",
    "generated_reason",
    "language_of",
]

# extension -> language; the language names are what metadata["language"] holds and filters match
EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".go": "go",
    ".java": "java",
    ".rs": "rust",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "typescript",
}
LANGUAGES: tuple[str, ...] = tuple(dict.fromkeys(EXTENSIONS.values()))

# Folders that hold other people's code copied into a tree (package managers' installs, vendoring);
# skipped wherever they are, unless ingest is asked to include generated and vendored code.
VENDORED_DIRS: frozenset[str] = frozenset({
    "node_modules", "bower_components", "jspm_packages", "vendor", "_vendor", "third_party", "third-party",
    "thirdparty",
})

MAX_LINE_CHARS = 1_000  # a longer line means minified, bundled or generated data, not code someone reads

_MINIFIED_NAME = re.compile(r"[.-]min\.[cm]?js$|\.bundle\.[cm]?js$", re.IGNORECASE)
# https://go.dev/s/generatedcode, also written by protoc and other generators for every language
_GENERATED_MARK = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.MULTILINE)


def language_of(path: str | PurePosixPath) -> str | None:
    """The language of a file by its extension (``"go"``, ``"typescript"``...), or None if ingest skips it."""
    return EXTENSIONS.get(PurePosixPath(path).suffix.lower())


def generated_reason(name: str, text: str) -> str | None:
    """Why a file looks generated or minified (None when it looks written by hand).

    Three signs: a minified or bundled name (``*.min.js``, ``*.bundle.js``), the ``// Code generated ...
    DO NOT EDIT.`` line generators write, or a line over :data:`MAX_LINE_CHARS` characters.
    """
    if _MINIFIED_NAME.search(name):
        return "minified: the name says so"
    if _GENERATED_MARK.search(text[:4096]):
        return "generated: it says `Code generated ... DO NOT EDIT.`"
    longest = max((len(line) for line in text.split("\n")), default=0)
    if longest > MAX_LINE_CHARS:
        return f"generated or minified: a line of {longest} characters (over {MAX_LINE_CHARS})"
    return None
