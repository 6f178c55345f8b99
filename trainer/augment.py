"""Soft data augmentation for code (CoCoSoDa): replace a fraction of identifiers with a mask
token or with a token naming their kind, so the encoder leans on structure and meaning
rather than on exact names."""

from __future__ import annotations

import io
import keyword
import random
import tokenize

MASK = "[MASK]"


def _kind(tokens: list[tokenize.TokenInfo], i: int) -> str:
    prev = tokens[i - 1].string if i > 0 else ""
    nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
    if prev == "def":
        return "function"
    if prev == "class":
        return "class"
    if prev == ".":
        return "attribute"
    if nxt == "(":
        return "call"
    return "variable"


def augment_code(code: str, rate: float, mode: str, rng: random.Random) -> str:
    """Return ``code`` with about ``rate`` of its identifier occurrences masked or typed."""
    if rate <= 0:
        return code
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code
    lines = code.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or keyword.iskeyword(tok.string) or tok.string in ("self", "cls"):
            continue
        if rng.random() >= rate:
            continue
        m = mode if mode != "both" else rng.choice(("mask", "type"))
        repl = MASK if m == "mask" else _kind(tokens, i)
        (r0, c0), (r1, c1) = tok.start, tok.end
        if r0 == r1:
            edits.append((r0, c0, c1, repl))
    for r, c0, c1, repl in sorted(edits, reverse=True):
        line = lines[r - 1]
        lines[r - 1] = line[:c0] + repl + line[c1:]
    return "".join(lines)
