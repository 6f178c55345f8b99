"""Walking a source tree the way git sees it: ``.gitignore`` files, Python environments and
vendored folders left out, in a deterministic order."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from strop.index.code.languages import VENDORED_DIRS

__all__ = ["ALWAYS_SKIP_DIRS", "iter_source_files"]

# Directories never walked into, whatever .gitignore says (VCS data and bytecode caches).
ALWAYS_SKIP_DIRS: frozenset[str] = frozenset({".git", "__pycache__"})


@dataclass(frozen=True)
class _Rule:
    base: tuple[str, ...]  # directory holding the .gitignore, relative to the walk root
    segments: tuple[str, ...]  # fnmatch patterns per path segment ("**" = any depth)
    negated: bool
    dir_only: bool
    anchored: bool  # pattern contained "/" -> matched against the path below `base`


def _unescape(segment: str) -> str:
    """Turn gitignore ``\\x`` escapes into fnmatch's ``[x]``."""
    out, i = [], 0
    while i < len(segment):
        if segment[i] == "\\" and i + 1 < len(segment):
            out.append(f"[{segment[i + 1]}]")
            i += 2
        else:
            out.append(segment[i])
            i += 1
    return "".join(out)


def _parse_rule(line: str, base: tuple[str, ...]) -> _Rule | None:
    """One .gitignore line -> rule (``None`` for blanks and comments)."""
    line = line.rstrip("\n\r")
    while line.endswith(" ") and not line.endswith("\\ "):
        line = line[:-1]
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    segments: list[str] = []
    for seg in line.strip("/").split("/"):
        if not seg or (seg == "**" and segments and segments[-1] == "**"):
            continue
        segments.append(seg if seg == "**" else _unescape(seg))
    return _Rule(base, tuple(segments), negated, dir_only, anchored)


def _match_segments(pats: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether path segments ``parts`` match pattern segments ``pats`` ("**" = any number of segments).

    Dynamic programming over (pattern position, path position): O(len(pats) x len(parts)) segment
    matches whatever the pattern, so nested ``**`` cannot make it exponential (a recursive matcher,
    like a backtracking regex, takes seconds to minutes on ``**/a/**/a/**/a/**/z`` against a deep
    path; that includes pathspec's ``re`` backend, measured at 26 s for one 60-deep path)."""
    n, m = len(pats), len(parts)
    # ok[j] after processing pattern i: pats[i:] matches parts[j:]
    ok = [False] * (m + 1)
    ok[m] = True  # the empty pattern matches the empty rest
    for i in range(n - 1, -1, -1):
        head = pats[i]
        nxt = [False] * (m + 1)
        if head == "**":
            if i == n - 1:
                for j in range(m):  # trailing "/**": everything inside, not the dir itself
                    nxt[j] = True
            else:
                acc = False
                for j in range(m, -1, -1):  # "**" absorbs parts[j:k] for any k >= j
                    acc = acc or ok[j]
                    nxt[j] = acc
        else:
            for j in range(m):
                nxt[j] = ok[j + 1] and fnmatchcase(parts[j], head)
        ok = nxt
    return ok[0]


def _rule_matches(rule: _Rule, parts: tuple[str, ...], is_dir: bool) -> bool:
    if rule.dir_only and not is_dir:
        return False
    if parts[: len(rule.base)] != rule.base or len(parts) == len(rule.base):
        return False
    below = parts[len(rule.base) :]
    if rule.anchored:
        return _match_segments(rule.segments, below)
    return fnmatchcase(below[-1], rule.segments[0])


def _ignored(rules: Sequence[_Rule], parts: tuple[str, ...], is_dir: bool) -> bool:
    for rule in reversed(rules):  # last matching rule wins; deeper .gitignore files come last
        if _rule_matches(rule, parts, is_dir):
            return not rule.negated
    return False


def _read_gitignore(path: Path, base: tuple[str, ...]) -> list[_Rule]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [r for line in text.split("\n") if (r := _parse_rule(line, base)) is not None]


def _is_environment(path: Path) -> bool:
    """A virtualenv/venv (has ``pyvenv.cfg``) or a conda environment (has ``conda-meta/``)."""
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def iter_source_files(root: str | Path, suffixes: Collection[str], extra_ignore: Sequence[str] = (),
                      vendored: bool = False, on_vendored: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield the source files under ``root`` whose suffix is in ``suffixes`` in a deterministic (sorted, depth-first) order.

    Skipping rules:

    * ``.git`` and ``__pycache__`` directories are always skipped;
    * Python environments are skipped wherever they are and whatever they are called: any
      directory containing ``pyvenv.cfg`` (venv/virtualenv, also inside ``.tox``) or
      ``conda-meta/``. Other conventional names (``build``, ``dist``, ``venv`` without
      ``pyvenv.cfg``...) are only skipped when a ``.gitignore`` says so;
    * vendored folders (:data:`~strop.index.code.languages.VENDORED_DIRS`: ``node_modules``,
      ``vendor``, ``third_party``...) are skipped unless ``vendored`` is true, and each one is
      passed to ``on_vendored`` (its path relative to ``root``) without walking into it;
    * ``.gitignore`` files in ``root`` and below apply to their directory's subtree, with
      this subset of git's semantics: blank lines and ``#`` comments, ``!`` negation (last
      match wins, deeper files override shallower ones), trailing ``/`` = directories only,
      a ``/`` at the start or middle anchors the pattern to the .gitignore's directory
      (otherwise it matches a name at any depth), ``*``, ``?``, ``[...]`` (not crossing
      ``/``), ``**`` as a whole segment, and ``\\`` escapes. As in git, a file inside an
      ignored directory cannot be re-included. Not read: ``.gitignore`` files above
      ``root``, ``.git/info/exclude`` and the global excludes file;
    * ``extra_ignore`` patterns behave as if they were lines of a ``.gitignore`` in ``root``
      (read before it, so the tree's own file can override them).

    Symlinked directories are not followed (avoids cycles); symlinked files are yielded.
    """
    root = Path(root)
    base_rules = [r for p in extra_ignore if (r := _parse_rule(p, ())) is not None]
    skip_dirs = ALWAYS_SKIP_DIRS if vendored else ALWAYS_SKIP_DIRS | VENDORED_DIRS
    yield from _walk(root, (), base_rules, frozenset(s.lower() for s in suffixes), skip_dirs, on_vendored)


def _walk(directory: Path, parts: tuple[str, ...], rules: list[_Rule], suffixes: frozenset[str],
          skip_dirs: frozenset[str], on_vendored: Callable[[str], None] | None) -> Iterator[Path]:
    gitignore = directory / ".gitignore"
    if gitignore.is_file():
        rules = rules + _read_gitignore(gitignore, parts)
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        child = (*parts, entry.name)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = not is_dir and entry.is_file()
        except OSError:
            continue
        if is_dir:
            path = Path(entry.path)
            if entry.name in skip_dirs or _ignored(rules, child, True) or _is_environment(path):
                if entry.name in VENDORED_DIRS and entry.name in skip_dirs and on_vendored is not None \
                        and not _ignored(rules, child, True):
                    on_vendored("/".join(child))
                continue
            yield from _walk(path, child, rules, suffixes, skip_dirs, on_vendored)
        elif is_file and os.path.splitext(entry.name)[1].lower() in suffixes and not _ignored(rules, child, False):
            yield Path(entry.path)
