"""Turn a Python source tree into code documents (one per function, method and class).

Pure standard library (``ast``, ``pathlib``, ``fnmatch``) so it can run anywhere the service
runs, without the encoder stack. The documents it produces are what a code-search index
stores: a stable dotted id, the source text of the definition, and metadata for display and
for building docstring -> code training pairs (see :func:`split_docstring`).
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = [
    "CodeDoc",
    "ParseResult",
    "iter_python_files",
    "module_name",
    "parse_source",
    "parse_tree",
    "split_docstring",
    "summarize_docstring",
    "usable_docstring",
]

_DefNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef

# Directories never walked into, whatever .gitignore says (VCS data and bytecode caches).
ALWAYS_SKIP_DIRS: frozenset[str] = frozenset({".git", "__pycache__"})


@dataclass(frozen=True)
class CodeDoc:
    """One definition (function, method or class) as a searchable document.

    ``id`` is ``<dotted module>.<qualified name>`` (``pkg.mod.Class.method``), suffixed with
    ``#2``, ``#3``... when a name is defined more than once in a module (property setters,
    ``if``/``else`` alternatives). ``text`` is the definition's source, decorators and
    docstring included. ``metadata`` holds ``path``, ``module``, ``qualname``, ``line``,
    ``end_line``, ``kind``, ``signature`` and ``docstring`` (the docstring's summary sentence,
    or ``""``). ``module`` and ``qualname`` also give the document its embedding header
    (:func:`context_header`).
    """

    id: str
    text: str
    metadata: dict


@dataclass
class ParseResult:
    """What :func:`parse_tree` found: the documents, how many ``.py`` files it examined
    (skipped ones included) and the files it could not use, as (relative path, reason)."""

    docs: list[CodeDoc] = field(default_factory=list)
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def context_header(metadata: dict | None) -> str | None:
    """The comment line a code document is embedded with: where it lives, as words.

    ``{"module": "json.decoder", "qualname": "JSONDecoder.decode"}`` gives
    ``# json decoder JSONDecoder decode``. A definition's own text rarely says which module or
    class it belongs to, and queries often name that domain ("decode a JSON document"): on the
    stdlib benchmark the header raised zero-shot MRR@10 from 0.53 to 0.59 (docs/benchmarks.md).
    It is a Python comment, so the text stays parseable (docstring jobs split it). ``None`` when
    the metadata has no string ``qualname``.
    """
    if not metadata or not isinstance(metadata.get("qualname"), str) or not metadata["qualname"]:
        return None
    module = metadata.get("module")
    where = f"{module}.{metadata['qualname']}" if isinstance(module, str) and module else metadata["qualname"]
    words = [w for w in re.split(r"[._#\s]+", where) if w]
    return "# " + " ".join(words) if words else None


# --------------------------------------------------------------------------------------
# Source helpers
# --------------------------------------------------------------------------------------


def _normalize_newlines(source: str) -> str:
    """Use ``\\n`` line ends only, so line numbers from ``ast`` index ``source.split("\\n")``.

    ``ast`` counts ``\\r\\n``, ``\\r`` and ``\\n`` as line breaks but not the other characters
    ``str.splitlines`` splits on (form feed, ``\\x1c``, ``\\u2028``...), hence no splitlines.
    """
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _head(line: str, byte_col: int) -> str:
    """The part of ``line`` before UTF-8 byte column ``byte_col`` (ast columns are bytes)."""
    return line.encode("utf-8")[:byte_col].decode("utf-8", errors="replace")


def _tail(line: str, byte_col: int) -> str:
    """The part of ``line`` from UTF-8 byte column ``byte_col`` on."""
    return line.encode("utf-8")[byte_col:].decode("utf-8", errors="replace")


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t\f"))]


def _block_text(lines: list[str], node: _DefNode) -> tuple[str, int]:
    """Source of a def/class with its decorators, and its first line number (1-based).

    Lines are taken verbatim, except that the indentation of the block's first line is removed
    from every line that starts with it, so a method reads (and parses) like top-level code.
    The last line is cut at the node's end column (drops ``; other_stmt`` / trailing comments).
    """
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    block = lines[start - 1 : end]
    block[-1] = _head(block[-1], node.end_col_offset or len(block[-1].encode("utf-8")))
    indent = _leading_ws(block[0])
    if indent:
        block = [
            ln[len(indent) :] if ln.startswith(indent) else ("" if not ln.strip() else ln) for ln in block
        ]
    return "\n".join(block), start


def _type_params(node: _DefNode) -> str:
    params = getattr(node, "type_params", None)  # PEP 695, Python 3.12+
    return f"[{', '.join(ast.unparse(p) for p in params)}]" if params else ""


def _signature(node: _DefNode) -> str:
    """``def f(a, b=1) -> int`` / ``async def g()`` / ``class C(Base, metaclass=M)``."""
    if isinstance(node, ast.ClassDef):
        args = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        return f"class {node.name}{_type_params(node)}" + (f"({', '.join(args)})" if args else "")
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    sig = f"{prefix} {node.name}{_type_params(node)}({ast.unparse(node.args)})"
    if node.returns is not None:
        sig += f" -> {ast.unparse(node.returns)}"
    return sig


# --------------------------------------------------------------------------------------
# Docstrings
# --------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "no.", "viz.", "al."})
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.+)?$")


def _paragraphs(doc: str) -> list[str]:
    paras: list[str] = []
    current: list[str] = []
    for line in doc.split("\n"):
        if line.strip():
            current.append(line.strip())
        elif current:
            paras.append(" ".join(current))
            current = []
    if current:
        paras.append(" ".join(current))
    return [" ".join(p.split()) for p in paras]


def summarize_docstring(doc: str | None) -> str:
    """First sentence of a docstring's first paragraph, whitespace-collapsed ("" if none).

    A leading paragraph that is only a call signature (``S.rjust(width) -> str``, an old
    stdlib convention) is skipped. The sentence ends at the first word ending in ``.``, ``!``
    or ``?`` that is not a common abbreviation (``e.g.``, ``i.e.``, ``etc.``...); the
    terminating punctuation is kept.
    """
    if not doc:
        return ""
    paras = _paragraphs(_normalize_newlines(doc))
    if not paras:
        return ""
    text = paras[0]
    if len(paras) > 1 and _SIGNATURE_LINE.match(text):
        text = paras[1]
    words = text.split(" ")
    for i, word in enumerate(words):
        bare = word.rstrip("\"')]")
        if bare.endswith((".", "!", "?")) and bare.lower() not in _ABBREVIATIONS and i + 1 < len(words):
            return " ".join(words[: i + 1])
    return text


_BOILERPLATE_PREFIXES = (
    "todo",
    "fixme",
    "xxx",
    "docstring",
    "placeholder",
    "not implemented",
    "deprecated",
    "undocumented",
    "no docstring",
    "missing docstring",
    "see ",
    "same as ",
    "return self",
    "for internal use",
    "internal use",
    ">>>",
)


def usable_docstring(summary: str) -> bool:
    """Whether a docstring summary is a meaningful natural-language query.

    Rule: at least 3 words that contain a letter, and (case-insensitively) not starting with
    a boilerplate/pointer phrase: TODO/FIXME/XXX, "Docstring", "Placeholder", "Not
    implemented", "Deprecated", "Undocumented", "See ...", "Same as ...", "Return self...",
    "(For) internal use", or a doctest prompt ``>>>``.
    """
    text = " ".join(summary.split())
    if sum(1 for w in text.split(" ") if any(c.isalpha() for c in w)) < 3:
        return False
    return not text.lower().startswith(_BOILERPLATE_PREFIXES)


def _is_docstring_stmt(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def split_docstring(source: str) -> tuple[str, str]:
    """Split a def/class source into (docstring summary, source without the docstring).

    Works on ``ast`` positions, not patterns: the docstring statement's lines are removed and
    everything else is kept verbatim (comments, blank lines, formatting). A docstring sharing
    its line with other code is cut out of that line (``def f(): "doc"; return 1`` becomes
    ``def f(): return 1``). If the docstring was the whole body, ``pass`` takes its place.
    Without a docstring the result is ``("", source)``. Indented input is dedented first.
    Raises ``SyntaxError`` if the source does not parse.
    """
    text = _normalize_newlines(source)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        dedented = textwrap.dedent(text)
        if dedented == text:
            raise
        text, tree = dedented, ast.parse(dedented)
    node = next((n for n in tree.body if isinstance(n, _DefNode)), None)
    if node is None or not node.body or not _is_docstring_stmt(node.body[0]):
        return "", text
    summary = summarize_docstring(ast.get_docstring(node))
    doc = node.body[0]
    only_stmt = len(node.body) == 1
    lines = text.split("\n")
    first, last = doc.lineno - 1, (doc.end_lineno or doc.lineno) - 1
    prefix = _head(lines[first], doc.col_offset)
    rest = _tail(lines[last], doc.end_col_offset or 0).strip()
    if rest.startswith(";"):
        after = rest[1:].strip()
        if after and not after.startswith("#"):
            # `"doc"; stmt` -> `stmt`, on the docstring's line and at its position.
            lines[first : last + 1] = [prefix + after]
            return summary, _checked("\n".join(lines), node)
        rest = after
    comment = (" " + rest) if rest else ""
    if prefix.strip():
        # One-liner `def f(): "doc"` (docstring is then necessarily the only statement).
        lines[first : last + 1] = [prefix + "pass" + comment]
    elif only_stmt:
        lines[first : last + 1] = [prefix + "pass"]
    else:
        del lines[first : last + 1]
    return summary, _checked("\n".join(lines), node)


def _checked(stripped: str, node: _DefNode) -> str:
    """Return ``stripped`` if it still parses; otherwise a normalised (``ast.unparse``) copy
    of the definition without its docstring, so the docstring never leaks into the code."""
    try:
        ast.parse(stripped)
        return stripped
    except SyntaxError:
        node.body = node.body[1:] or [ast.Pass()]
        return ast.unparse(node)


# --------------------------------------------------------------------------------------
# Parsing one module
# --------------------------------------------------------------------------------------


def _child_blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    """Statement lists nested in a compound statement that is not a def/class (if/try/...)."""
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if isinstance(block, list):
            yield block
    for handler in getattr(stmt, "handlers", None) or ():
        yield handler.body
    for case in getattr(stmt, "cases", None) or ():
        yield case.body


def parse_source(source: str, module: str, path: str) -> list[CodeDoc]:
    """Documents for the functions, classes and methods defined in one module's source.

    Covers module-level functions and classes, methods, and nested classes with their methods,
    including definitions under module/class-level ``if``/``try``/``with``/``for``/``match``
    blocks (e.g. platform-specific alternatives). Functions (and classes) defined inside
    function bodies are skipped. Duplicate ids get ``#2``, ``#3``... in source order.
    ``module`` is the dotted module name ("" for none: ids are then bare qualified names),
    ``path`` the relative path stored in metadata. Raises ``SyntaxError`` on invalid code.
    """
    text = _normalize_newlines(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. in scanned code
        tree = ast.parse(text, filename=path)
    lines = text.split("\n")
    docs: list[CodeDoc] = []
    seen: dict[str, int] = {}

    def emit(node: _DefNode, scope: list[str], kind: str) -> None:
        qualname = ".".join([*scope, node.name])
        base_id = f"{module}.{qualname}" if module else qualname
        seen[base_id] = seen.get(base_id, 0) + 1
        doc_id = base_id if seen[base_id] == 1 else f"{base_id}#{seen[base_id]}"
        body, start = _block_text(lines, node)
        meta = {
            "path": path,
            "module": module,
            "qualname": qualname,
            "line": start,
            "end_line": node.end_lineno or node.lineno,
            "kind": kind,
            "signature": _signature(node),
            "docstring": summarize_docstring(ast.get_docstring(node)),
        }
        docs.append(CodeDoc(id=doc_id, text=body, metadata=meta))

    def visit(stmts: Iterable[ast.stmt], scope: list[str], in_class: bool) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                emit(stmt, scope, "method" if in_class else "function")
            elif isinstance(stmt, ast.ClassDef):
                emit(stmt, scope, "class")
                visit(stmt.body, [*scope, stmt.name], True)
            else:
                for block in _child_blocks(stmt):
                    visit(block, scope, in_class)

    visit(tree.body, [], False)
    return docs


def module_name(rel_path: str | Path) -> str:
    """Dotted module name for a path relative to the tree root: ``pkg/mod.py`` -> ``pkg.mod``,
    ``pkg/__init__.py`` -> ``pkg``, the root's own ``__init__.py`` -> ``""``."""
    parts = list(Path(rel_path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# --------------------------------------------------------------------------------------
# Walking a tree (.gitignore aware)
# --------------------------------------------------------------------------------------


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


def iter_python_files(root: str | Path, extra_ignore: Sequence[str] = ()) -> Iterator[Path]:
    """Yield the ``*.py`` files under ``root`` in a deterministic (sorted, depth-first) order.

    Skipping rules:

    * ``.git`` and ``__pycache__`` directories are always skipped;
    * Python environments are skipped wherever they are and whatever they are called: any
      directory containing ``pyvenv.cfg`` (venv/virtualenv, also inside ``.tox``) or
      ``conda-meta/``. Other conventional names (``build``, ``dist``, ``node_modules``,
      ``venv`` without ``pyvenv.cfg``...) are only skipped when a ``.gitignore`` says so;
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
    yield from _walk(root, (), base_rules)


def _walk(directory: Path, parts: tuple[str, ...], rules: list[_Rule]) -> Iterator[Path]:
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
            if entry.name in ALWAYS_SKIP_DIRS or _ignored(rules, child, True) or _is_environment(path):
                continue
            yield from _walk(path, child, rules)
        elif is_file and entry.name.endswith(".py") and not _ignored(rules, child, False):
            yield Path(entry.path)


# --------------------------------------------------------------------------------------
# Parsing a tree
# --------------------------------------------------------------------------------------


def _read_source(path: Path) -> str:
    """Decode a Python file the way the interpreter would (PEP 263 cookie, BOM, else UTF-8).

    Raises ``UnicodeDecodeError``/``SyntaxError`` (bad cookie) or ``OSError``."""
    data = path.read_bytes()
    with open(path, "rb") as fh:
        encoding, _ = tokenize.detect_encoding(fh.readline)
    return data.decode(encoding)


MAX_FILE_BYTES = 256 * 1024  # larger .py files are data (pydoc's topics), generated or hostile
MAX_DEFINITION_CHARS = 200_000  # a document's text limit (STROP_MAX_DOCUMENT_CHARS' default)


def parse_tree(
    root: str | Path,
    progress: Callable[[int, int], None] | None = None,
    extra_ignore: Sequence[str] = (),
    max_file_bytes: int = MAX_FILE_BYTES,
    max_definition_chars: int = MAX_DEFINITION_CHARS,
) -> ParseResult:
    """Parse every Python file :func:`iter_python_files` yields under ``root``.

    Module names and ``metadata["path"]`` are relative to ``root``. Files that cannot be read,
    decoded or parsed are listed in ``skipped`` with a reason instead of failing the run, and so
    are files over ``max_file_bytes`` (parsing costs hundreds of bytes of memory per byte of
    source) and definitions over ``max_definition_chars`` (as ``path:line``).
    ``progress(done, total)`` is called after each file (total is known up front).
    """
    root = Path(root)
    files = list(iter_python_files(root, extra_ignore))
    result = ParseResult(files=len(files))
    for done, path in enumerate(files, start=1):
        rel = path.relative_to(root).as_posix()
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # reading it below reports why
        if size > max_file_bytes:
            result.skipped.append((rel, f"too large: {size} bytes; files over {max_file_bytes} are skipped"))
            if progress is not None:
                progress(done, len(files))
            continue
        try:
            source = _read_source(path)
        except (UnicodeDecodeError, LookupError) as exc:
            result.skipped.append((rel, f"undecodable: {exc}"))
        except SyntaxError as exc:  # invalid coding cookie
            result.skipped.append((rel, f"undecodable: {exc.msg}"))
        except OSError as exc:
            result.skipped.append((rel, f"unreadable: {exc}"))
        else:
            try:
                for doc in parse_source(source, module_name(rel), rel):
                    if len(doc.text) > max_definition_chars:
                        result.skipped.append((f"{rel}:{doc.metadata.get('line', '?')}",
                                               f"definition too large: {len(doc.text)} characters; "
                                               f"the limit is {max_definition_chars}"))
                    else:
                        result.docs.append(doc)
            except SyntaxError as exc:
                result.skipped.append((rel, f"syntax error: {exc.msg} (line {exc.lineno})"))
            except (ValueError, RecursionError, MemoryError) as exc:  # e.g. null bytes
                result.skipped.append((rel, f"unparsable: {type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(done, len(files))
    return result
