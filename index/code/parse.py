"""Turn a source tree into code documents (one per function, method, class, struct, interface...).

Python is read with the standard library's ``ast``; Go, Java, JavaScript, TypeScript and Rust with
tree-sitter (:mod:`strop.index.code.treesitter`); the language comes from the file extension
(:mod:`strop.index.code.languages`), so one tree may mix them. No encoder stack is needed. The
documents it produces are what a code-search index stores: a stable id, the source text of the
definition, and metadata for display, for filters (``language``, ``kind``...) and for building
docstring -> code training pairs (see :func:`split_docstring`).
"""

from __future__ import annotations

import ast
import re
import textwrap
import tokenize
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strop.index.code.languages import EXTENSIONS, generated_reason, language_of
from strop.index.code.walk import ALWAYS_SKIP_DIRS, iter_source_files

__all__ = [
    "ALWAYS_SKIP_DIRS",
    "CodeDoc",
    "ParseResult",
    "context_header",
    "iter_python_files",
    "iter_source_files",
    "module_name",
    "parse_source",
    "parse_tree",
    "split_docstring",
    "summarize_docstring",
    "usable_docstring",
]

_DefNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class CodeDoc:
    """One definition (function, method, class, struct, interface...) as a searchable document.

    Python: ``id`` is ``<dotted module>.<qualified name>`` (``pkg.mod.Class.method``); other
    languages: ``<path>:<qualified name>`` (``net/http/client.go:Client.Do``), so a ``.js`` and a
    ``.ts`` file of one name never collide. Suffixed with ``#2``, ``#3``... when a name is defined
    more than once in a file (property setters, ``if``/``else`` alternatives, overloads). ``text``
    is the definition's source, decorators and docstring (or doc comment) included. ``metadata``
    holds ``path``, ``module``, ``qualname``, ``line``, ``end_line``, ``kind``, ``signature``,
    ``docstring`` (the docstring's or doc comment's summary sentence, or ``""``) and ``language``.
    ``module`` and ``qualname`` also give the document its embedding header (:func:`context_header`).
    """

    id: str
    text: str
    metadata: dict


@dataclass
class ParseResult:
    """What :func:`parse_tree` found: the documents, how many source files it examined (skipped
    ones included), the files (and definitions) it could not use as (relative path, reason), the
    vendored folders it left out, and per language the counts of :data:`COUNTS`."""

    docs: list[CodeDoc] = field(default_factory=list)
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    vendored: list[str] = field(default_factory=list)
    languages: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, language: str, what: str, n: int = 1) -> None:
        self.languages.setdefault(language, Counter())[what] += n

    def summary(self) -> dict[str, dict[str, int]]:
        """Per language, every count of :data:`COUNTS` (zeros included), languages sorted."""
        return {lang: {k: int(c[k]) for k in COUNTS} for lang, c in sorted(self.languages.items())}


# what parse_tree counts per language: files seen, definitions kept, and why files (or definitions) were not
COUNTS = ("files", "definitions", "unparsable", "generated", "too_large", "undecodable", "definitions_too_large")


def context_header(metadata: dict | None) -> str | None:
    """The comment line a code document is embedded with: where it lives, as words.

    ``{"module": "json.decoder", "qualname": "JSONDecoder.decode"}`` gives
    ``# json decoder JSONDecoder decode``. A definition's own text rarely says which module or
    class it belongs to, and queries often name that domain ("decode a JSON document"): on the
    stdlib benchmark the header raised zero-shot MRR@10 from 0.53 to 0.59 (docs/benchmarks.md).
    It is a comment of the document's ``language`` (``#`` for Python, the default; ``//`` for the
    others, whose module paths are split at any punctuation: ``// net http Client Do``), so the
    text stays parseable (docstring jobs split it). ``None`` when the metadata has no string
    ``qualname``.
    """
    if not metadata or not isinstance(metadata.get("qualname"), str) or not metadata["qualname"]:
        return None
    module = metadata.get("module")
    where = f"{module}.{metadata['qualname']}" if isinstance(module, str) and module else metadata["qualname"]
    language = metadata.get("language")
    if language in (None, "python") or not isinstance(language, str):
        words = [w for w in re.split(r"[._#\s]+", where) if w]
        return "# " + " ".join(words) if words else None
    words = [w for w in re.split(r"[\W_]+", where) if w]
    return "// " + " ".join(words) if words else None


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


def split_docstring(source: str, metadata: Mapping | None = None) -> tuple[str, str]:
    """Split a definition's source into (docstring summary, source without the docstring).

    ``metadata`` names the document's ``language`` (Python when absent). For other languages the
    doc comment is removed (:func:`strop.index.code.treesitter.split_doc_comment`), keeping the
    location header the text may start with, and nothing raises.

    Python works on ``ast`` positions, not patterns: the docstring statement's lines are removed and
    everything else is kept verbatim (comments, blank lines, formatting). A docstring sharing
    its line with other code is cut out of that line (``def f(): "doc"; return 1`` becomes
    ``def f(): return 1``). If the docstring was the whole body, ``pass`` takes its place.
    Without a docstring the result is ``("", source)``. Indented input is dedented first.
    Raises ``SyntaxError`` if the Python source does not parse.
    """
    language = metadata.get("language") if metadata else None
    if isinstance(language, str) and language != "python":
        from strop.index.code.treesitter import split_doc_comment

        return split_doc_comment(source, language, context_header(metadata))
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
            "language": "python",
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
# Parsing a tree
# --------------------------------------------------------------------------------------


def iter_python_files(root: str | Path, extra_ignore: Sequence[str] = ()) -> Iterator[Path]:
    """The ``*.py`` files under ``root`` (:func:`~strop.index.code.walk.iter_source_files`)."""
    yield from iter_source_files(root, (".py",), extra_ignore)


def _read_source(path: Path, language: str = "python") -> str:
    """Decode a source file: Python the way the interpreter would (PEP 263 cookie, BOM, else
    UTF-8), the other languages as UTF-8 (a BOM dropped); line ends become ``\\n``.

    Raises ``UnicodeDecodeError``/``SyntaxError`` (bad cookie) or ``OSError``."""
    data = path.read_bytes()
    if language != "python":
        return _normalize_newlines(data.decode("utf-8-sig"))
    with open(path, "rb") as fh:
        encoding, _ = tokenize.detect_encoding(fh.readline)
    return data.decode(encoding)


MAX_FILE_BYTES = 256 * 1024  # larger source files are data (pydoc's topics), generated or hostile
MAX_DEFINITION_CHARS = 200_000  # a document's text limit (STROP_MAX_DOCUMENT_CHARS' default)


def _definitions(source: str, language: str, rel: str) -> list[CodeDoc]:
    """The documents of one file. Raises ``SyntaxError`` (Python), ``TreeSitterError`` (the others)."""
    if language == "python":
        return parse_source(source, module_name(rel), rel)
    from strop.index.code.treesitter import parse_definitions

    docs: list[CodeDoc] = []
    seen: dict[str, int] = {}
    for text, meta in parse_definitions(source, language, rel):
        base = f"{rel}:{meta['qualname']}"
        seen[base] = seen.get(base, 0) + 1
        docs.append(CodeDoc(base if seen[base] == 1 else f"{base}#{seen[base]}", text, meta))
    return docs


def parse_tree(
    root: str | Path,
    progress: Callable[[int, int], None] | None = None,
    extra_ignore: Sequence[str] = (),
    max_file_bytes: int = MAX_FILE_BYTES,
    max_definition_chars: int = MAX_DEFINITION_CHARS,
    languages: Collection[str] | None = None,
    include_generated: bool = False,
) -> ParseResult:
    """Parse every source file under ``root`` in the ``languages`` asked for (default: all of
    :data:`~strop.index.code.languages.EXTENSIONS`), each by its extension.

    Files are walked as :func:`~strop.index.code.walk.iter_source_files` does. Module names and
    ``metadata["path"]`` are relative to ``root``. Files that cannot be read, decoded or parsed are
    listed in ``skipped`` with a reason instead of failing the run, and so are files over
    ``max_file_bytes`` (parsing costs hundreds of bytes of memory per byte of source) and
    definitions over ``max_definition_chars`` (as ``path:line``). Unless ``include_generated``,
    generated and minified files (:func:`~strop.index.code.languages.generated_reason`) are skipped
    and vendored folders are not walked (listed in ``vendored``). Every file and skip is counted
    per language in ``languages``. A tree-sitter file with syntax errors is skipped whole, as a
    Python one is: tree-sitter recovers, but where its definitions begin and end is then a guess.
    ``progress(done, total)`` is called after each file (total is known up front).
    """
    from strop.index.code.treesitter import TreeSitterError

    root = Path(root)
    suffixes = [ext for ext, lang in EXTENSIONS.items() if languages is None or lang in languages]
    result = ParseResult()
    files = list(iter_source_files(root, suffixes, extra_ignore, vendored=include_generated,
                                   on_vendored=result.vendored.append))
    result.files = len(files)
    for done, path in enumerate(files, start=1):
        rel = path.relative_to(root).as_posix()
        language = language_of(rel) or "python"
        result.count(language, "files")
        why = _skip_reason(path, rel, language, max_file_bytes)
        if isinstance(why, tuple):
            result.count(language, why[0])
            result.skipped.append((rel, why[1]))
        else:
            source = why
            reason = None if include_generated else generated_reason(path.name, source)
            if reason is not None:
                result.count(language, "generated")
                result.skipped.append((rel, reason))
            else:
                try:
                    for doc in _definitions(source, language, rel):
                        if len(doc.text) > max_definition_chars:
                            result.count(language, "definitions_too_large")
                            result.skipped.append((f"{rel}:{doc.metadata.get('line', '?')}",
                                                   f"definition too large: {len(doc.text)} characters; "
                                                   f"the limit is {max_definition_chars}"))
                        else:
                            result.count(language, "definitions")
                            result.docs.append(doc)
                except SyntaxError as exc:
                    result.count(language, "unparsable")
                    result.skipped.append((rel, f"syntax error: {exc.msg} (line {exc.lineno})"))
                except TreeSitterError as exc:
                    result.count(language, "unparsable")
                    result.skipped.append((rel, str(exc)))
                except (ValueError, RecursionError, MemoryError) as exc:  # e.g. null bytes
                    result.count(language, "unparsable")
                    result.skipped.append((rel, f"unparsable: {type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(done, len(files))
    return result


def _skip_reason(path: Path, rel: str, language: str, max_file_bytes: int) -> str | tuple[str, str]:
    """The file's source, or (count, reason) when it cannot be used."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # reading it below reports why
    if size > max_file_bytes:
        return "too_large", f"too large: {size} bytes; files over {max_file_bytes} are skipped"
    try:
        return _read_source(path, language)
    except (UnicodeDecodeError, LookupError) as exc:
        return "undecodable", f"undecodable: {exc}"
    except SyntaxError as exc:  # invalid coding cookie
        return "undecodable", f"undecodable: {exc.msg}"
    except OSError as exc:
        return "undecodable", f"unreadable: {exc}"
