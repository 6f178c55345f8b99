"""Definitions and doc comments in Go, Java, JavaScript, TypeScript and Rust, parsed with tree-sitter.

tree-sitter is the parser code-search and code-chunking tools share: one C runtime, a maintained
grammar per language, and PyPI wheels (``tree-sitter-go``, ``-java``, ``-javascript``,
``-typescript``, ``-rust``) that load offline. Only the declarations are visited (top level, type
bodies, namespaces and modules), never function bodies, so a file costs about what tree-sitter
takes to parse it.

Each definition becomes a :class:`~strop.index.code.parse.CodeDoc` like a Python one: its text is
the definition's source from its doc comment on (attributes, annotations and decorators included),
and its metadata holds ``path``, ``module``, ``qualname``, ``line``, ``end_line``, ``kind``,
``signature``, ``docstring`` (the doc comment's summary sentence) and ``language``. Doc comments:
JSDoc / TSDoc and Javadoc (the ``/** ... */`` block right above), Go (the ``//`` lines right
above), Rust (``///`` and ``/** */`` above, ``//!`` and ``/*! */`` at the start of the item's body).
"Right above" means no blank line between.
"""

from __future__ import annotations

import functools
import html
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tree_sitter import Language, Node, Parser

from strop.index.code.parse import summarize_docstring

__all__ = ["TreeSitterError", "parse_definitions", "split_doc_comment"]

# language -> (grammar module, function returning the language pointer)
_GRAMMARS: dict[str, tuple[str, str]] = {
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
}
MAX_SIGNATURE_CHARS = 300


class TreeSitterError(ValueError):
    """The file has syntax errors: tree-sitter recovered, but where definitions start and end is a guess."""

    def __init__(self, line: int) -> None:
        super().__init__(f"syntax error (line {line})")
        self.line = line


@functools.cache
def _parser(grammar: str) -> Parser:
    module, attr = _GRAMMARS[grammar]
    return Parser(Language(getattr(importlib.import_module(module), attr)()))


# --------------------------------------------------------------------------------------
# Doc comments
# --------------------------------------------------------------------------------------

_GO_DIRECTIVE = re.compile(r"^(go:|line |export |extern |nolint|\+build)")
_INLINE_TAG = re.compile(r"\{@(?:link|linkplain|code|literal|value)\s+([^}\s]*)\s*([^}]*)\}")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)")
_MD_REF = re.compile(r"\[(`?[^\]\n`]+`?)\](?!\()")


def _comment_lines(text: str) -> list[str]:
    """The words of one comment, markers stripped: ``///``, ``//!``, ``//``, ``/** */``, ``/*! */``."""
    if text.startswith("/*"):
        body = text[3:] if text[2:3] in ("*", "!") else text[2:]
        body = body[:-2] if body.endswith("*/") else body
        out = []
        for line in body.split("\n"):
            s = line.strip()
            if s.startswith("*"):
                s = s[1:]
                s = s[1:] if s.startswith(" ") else s
            out.append(s.rstrip())
        return out
    s = text.rstrip("\n")
    s = s[3:] if s.startswith(("///", "//!")) else s[2:]
    return [s[1:] if s.startswith(" ") else s]


def clean_doc(language: str, comments: list[str]) -> str:
    """The prose of a definition's doc comments: markers, block tags (``@param``...), inline tags
    (``{@link Foo}`` -> ``Foo``), HTML, Markdown links and Go directives removed."""
    lines: list[str] = []
    for c in comments:
        lines += _comment_lines(c)
    if language == "go":
        lines = [ln for ln in lines if not _GO_DIRECTIVE.match(ln)]
    if language in ("java", "javascript", "typescript", "tsx"):
        for i, ln in enumerate(lines):
            if ln.lstrip().startswith("@"):  # block tags end the description
                lines = lines[:i]
                break
    text = "\n".join(lines)
    if language in ("java", "javascript", "typescript", "tsx"):
        text = _INLINE_TAG.sub(lambda m: m.group(2).strip() or m.group(1).split("#")[-1], text)
        text = _HTML_TAG.sub("", text)
        text = html.unescape(text)
    if language == "rust":
        text = _MD_REF.sub(r"\1", _MD_LINK.sub(r"\1", text))
    return text


def _is_doc(language: str, text: str) -> bool:
    """Whether a comment placed above a definition documents it."""
    if language == "go":
        return text.startswith("//") or text.startswith("/*")
    if language == "rust":
        return (text.startswith("///") and not text.startswith("////")) or _is_block_doc(text)
    return _is_block_doc(text)


def _is_block_doc(text: str) -> bool:
    return text.startswith("/**") and not text.startswith("/***") and text != "/**/"


def _is_inner_doc(text: str) -> bool:
    return text.startswith("//!") or text.startswith("/*!")


# --------------------------------------------------------------------------------------
# Per-file walk
# --------------------------------------------------------------------------------------


def _last_row(node: Node) -> int:
    """The last line a node covers (Rust line comments end at column 0 of the next line)."""
    end = node.end_point
    return end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row


@dataclass
class _File:
    language: str
    src: bytes
    path: str
    module: str
    lines: list[bytes]
    emit: Callable[[str, str, Node, Node, list[Node], str], None]

    def text(self, node: Node | None) -> str:
        if node is None:
            return ""
        return self.src[node.start_byte : node.end_byte].decode("utf-8", "replace")

    def starts_line(self, node: Node) -> bool:
        row, col = node.start_point
        return not self.lines[row][:col].strip()


_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
_ATTRIBUTES = frozenset({"decorator", "attribute_item"})  # part of the definition they precede


def _leading(f: _File, outer: Node) -> tuple[Node, list[Node]]:
    """The first node of a definition's text (its doc comment or attributes, when right above it) and
    its doc comments, in source order."""
    first = outer
    docs: list[Node] = []
    sib = outer.prev_sibling
    single_block = f.language not in ("go", "rust")  # JSDoc / Javadoc: the one /** */ block right above
    while sib is not None:
        if _last_row(sib) < first.start_point.row - 1 or not f.starts_line(sib):
            break
        if sib.type in _ATTRIBUTES:
            first = sib
        elif sib.type in _COMMENTS and _is_doc(f.language, f.text(sib)):
            docs.insert(0, sib)
            first = sib
            if single_block:
                break
        else:
            break
        sib = sib.prev_sibling
    return first, docs


def _inner_docs(f: _File, body: Node | None) -> list[Node]:
    """Rust ``//!`` / ``/*! */`` comments at the start of an item's body."""
    out: list[Node] = []
    if body is None or f.language != "rust":
        return out
    for child in body.children:
        if child.type in ("{",):
            continue
        if child.type in _COMMENTS and _is_inner_doc(f.text(child)):
            out.append(child)
            continue
        break
    return out


def _signature(f: _File, node: Node, body: Node | None) -> str:
    end = body.start_byte if body is not None else node.end_byte
    sig = f.src[node.start_byte : end].decode("utf-8", "replace")
    sig = re.sub(r"\s+", " ", sig).strip().rstrip("{=").strip()
    while sig.startswith("@"):  # annotations and decorators are not the signature
        m = re.match(r"@[\w.]+(\((?:[^()]|\([^()]*\))*\))?\s*", sig)
        if not m or not m.end():
            break
        sig = sig[m.end():]
    return sig if len(sig) <= MAX_SIGNATURE_CHARS else sig[: MAX_SIGNATURE_CHARS - 3] + "..."


def _define(f: _File, kind: str, qualname: str, node: Node, outer: Node | None = None,
            body: Node | None = None, sig_node: Node | None = None, sig: str | None = None) -> None:
    """Record one definition: ``node`` is the declaration, ``outer`` the statement that holds it
    (``export ...``, ``const x = ...``) and whose doc comment it gets."""
    outer = outer or node
    first, docs = _leading(f, outer)
    if body is None:
        body = node.child_by_field_name("body")
    docs = docs + _inner_docs(f, body)
    f.emit(kind, qualname, first, outer, docs, sig if sig is not None else _signature(f, sig_node or node, body))


# -- Go -----------------------------------------------------------------------------------


def _go_receiver(f: _File, node: Node) -> str:
    recv = node.child_by_field_name("receiver")
    stack = [recv] if recv is not None else []
    while stack:  # the first type name in the receiver: (r *Reader), (m Map[K, V])
        n = stack.pop(0)
        if n.type == "type_identifier":
            return f.text(n)
        stack.extend(n.named_children)
    return ""


def _walk_go(f: _File, root: Node) -> None:
    for node in root.named_children:
        if node.type == "function_declaration":
            _define(f, "function", f.text(node.child_by_field_name("name")), node)
        elif node.type == "method_declaration":
            recv = _go_receiver(f, node)
            name = f.text(node.child_by_field_name("name"))
            _define(f, "method", f"{recv}.{name}" if recv else name, node)
        elif node.type == "type_declaration":
            specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
            grouped = any(c.type == "(" for c in node.children)
            for spec in specs:
                t = spec.child_by_field_name("type")
                kind = {"struct_type": "struct", "interface_type": "interface"}.get(t.type if t else "", "type")
                name = f.text(spec.child_by_field_name("name"))
                params = f.text(spec.child_by_field_name("type_parameters"))
                shape = kind if kind != "type" else ("= " if spec.type == "type_alias" else "") + f.text(t)
                sig = re.sub(r"\s+", " ", f"type {name}{params} {shape}")[:MAX_SIGNATURE_CHARS]
                # `type ( A struct{...}; B = int )`: each spec is a definition of its own
                _define(f, kind, name, spec if grouped else node, sig=sig)


# -- Java ---------------------------------------------------------------------------------

_JAVA_TYPES = {"class_declaration": "class", "interface_declaration": "interface", "enum_declaration": "enum",
               "record_declaration": "record", "annotation_type_declaration": "interface"}


def _walk_java(f: _File, nodes: list[Node], scope: list[str]) -> None:
    for node in nodes:
        if node.type in _JAVA_TYPES:
            name = f.text(node.child_by_field_name("name"))
            _define(f, _JAVA_TYPES[node.type], ".".join([*scope, name]), node)
            body = node.child_by_field_name("body")
            if body is not None:
                members = list(body.named_children)
                for m in list(members):
                    if m.type == "enum_body_declarations":
                        members += m.named_children
                _walk_java(f, members, [*scope, name])
        elif node.type in ("method_declaration", "constructor_declaration", "compact_constructor_declaration"):
            if node.child_by_field_name("body") is None:
                continue  # abstract and interface methods: part of their type's document
            name = f.text(node.child_by_field_name("name")) or (scope[-1] if scope else "")
            _define(f, "method", ".".join([*scope, name]), node)


# -- JavaScript / TypeScript ---------------------------------------------------------------

_JS_FUNCTIONS = frozenset({"function_declaration", "generator_function_declaration", "function"})
_JS_VALUES = frozenset({"arrow_function", "function_expression", "function", "generator_function"})
_JS_CLASSES = frozenset({"class_declaration", "abstract_class_declaration", "class"})
_TS_TYPES = {"interface_declaration": "interface", "enum_declaration": "enum", "type_alias_declaration": "type"}


def _walk_js(f: _File, nodes: list[Node], scope: list[str]) -> None:
    for stmt in nodes:
        node = stmt
        if node.type == "export_statement":
            node = node.child_by_field_name("declaration") or node.child_by_field_name("value") or node
        if node.type == "expression_statement" and node.named_child_count == 1:
            node = node.named_children[0]
        qual = lambda name: ".".join([*scope, name])  # noqa: E731
        if node.type in _JS_FUNCTIONS and node.child_by_field_name("body") is not None:
            name = f.text(node.child_by_field_name("name")) or "default"
            _define(f, "function", qual(name), node, stmt)
        elif node.type in _JS_CLASSES:
            name = f.text(node.child_by_field_name("name")) or "default"
            _define(f, "class", qual(name), node, stmt)
            _walk_class(f, node.child_by_field_name("body"), [*scope, name])
        elif node.type in _TS_TYPES:
            name = f.text(node.child_by_field_name("name"))
            _define(f, _TS_TYPES[node.type], qual(name), node, stmt)
        elif node.type in ("lexical_declaration", "variable_declaration"):
            decls = [d for d in node.named_children if d.type == "variable_declarator"]
            for d in decls:
                value = d.child_by_field_name("value")
                if value is None or (value.type not in _JS_VALUES and value.type not in _JS_CLASSES):
                    continue
                name = f.text(d.child_by_field_name("name"))
                kind = "class" if value.type in _JS_CLASSES else "function"
                one = len(decls) == 1
                _define(f, kind, qual(name), node if one else d, stmt if one else None, body=value.child_by_field_name("body"),
                        sig_node=node if one else d)
                if kind == "class":
                    _walk_class(f, value.child_by_field_name("body"), [*scope, name])
        elif node.type == "assignment_expression":
            value = node.child_by_field_name("right")
            left = node.child_by_field_name("left")
            if value is not None and left is not None and value.type in _JS_VALUES and \
                    left.type == "member_expression":
                name = f.text(left).replace(".prototype.", ".")
                _define(f, "function", qual(name), node, stmt, body=value.child_by_field_name("body"))
        elif node.type in ("internal_module", "module"):
            body = node.child_by_field_name("body")
            name = f.text(node.child_by_field_name("name")).strip("\"'")
            if body is not None:
                _walk_js(f, list(body.named_children), [*scope, name])


def _walk_class(f: _File, body: Node | None, scope: list[str]) -> None:
    if body is None:
        return
    for m in body.named_children:
        if m.type == "method_definition" and m.child_by_field_name("body") is not None:
            _define(f, "method", ".".join([*scope, f.text(m.child_by_field_name("name"))]), m)
        elif m.type in ("public_field_definition", "field_definition"):
            value = m.child_by_field_name("value")
            name = m.child_by_field_name("name") or m.child_by_field_name("property")
            if value is not None and value.type in _JS_VALUES and name is not None:
                _define(f, "method", ".".join([*scope, f.text(name)]), m, body=value.child_by_field_name("body"))


# -- Rust ---------------------------------------------------------------------------------

_RUST_TYPES = {"struct_item": "struct", "union_item": "struct", "enum_item": "enum", "trait_item": "trait",
               "type_item": "type"}


def _rust_type_name(f: _File, node: Node | None) -> str:
    """``Vec<T>`` -> ``Vec``, ``fmt::Display`` -> ``Display``, ``&'a mut [T]`` -> ``[T]``."""
    text = f.text(node)
    while True:
        stripped = re.sub(r"<[^<>]*>", "", text)
        if stripped == text:
            break
        text = stripped
    text = re.sub(r"^(&\s*('\w+\s*)?(mut\s+)?|dyn\s+|impl\s+)+", "", text.strip())
    return text.split("::")[-1].strip() or text


def _walk_rust(f: _File, nodes: list[Node], scope: list[str], in_type: bool) -> None:
    for node in nodes:
        qual = lambda name: ".".join([*scope, name])  # noqa: E731
        if node.type == "function_item":
            _define(f, "method" if in_type else "function", qual(f.text(node.child_by_field_name("name"))), node)
        elif node.type in _RUST_TYPES:
            name = f.text(node.child_by_field_name("name"))
            _define(f, _RUST_TYPES[node.type], qual(name), node)
            if node.type == "trait_item" and (body := node.child_by_field_name("body")) is not None:
                _walk_rust(f, list(body.named_children), [*scope, name], True)
        elif node.type == "impl_item":
            ty = _rust_type_name(f, node.child_by_field_name("type"))
            trait = node.child_by_field_name("trait")
            name = f"<{ty} as {_rust_type_name(f, trait)}>" if trait is not None else ty
            _define(f, "impl", qual(name), node)
            if (body := node.child_by_field_name("body")) is not None:
                _walk_rust(f, list(body.named_children), [*scope, name], True)
        elif node.type == "mod_item" and (body := node.child_by_field_name("body")) is not None:
            _walk_rust(f, list(body.named_children), [*scope, f.text(node.child_by_field_name("name"))], False)


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _grammar(language: str, path: str) -> str:
    return "tsx" if language == "typescript" and path.lower().endswith(".tsx") else language


def module_of(language: str, path: str, root_node: Node | None = None, src: bytes = b"") -> str:
    """Where a file's definitions live, the way the language names it: the Java package (``java.util``),
    the Go package directory (``net/http``), the Rust module path (``core::iter::adapters::map``), the
    JavaScript / TypeScript module path (``src/utils/debounce``)."""
    p = PurePosixPath(path)
    if language == "java" and root_node is not None:
        for n in root_node.named_children:
            if n.type == "package_declaration":
                named = [c for c in n.named_children if c.type in ("scoped_identifier", "identifier")]
                if named:
                    return src[named[0].start_byte : named[0].end_byte].decode("utf-8", "replace")
        return ".".join(p.parent.parts)
    if language == "go":  # the package's directory; at the root, the package's name
        if p.parent.parts or root_node is None:
            return p.parent.as_posix() if p.parent.parts else ""
        for n in root_node.named_children:
            if n.type == "package_clause" and n.named_children:
                c = n.named_children[0]
                return src[c.start_byte : c.end_byte].decode("utf-8", "replace")
        return ""
    if language == "rust":
        parts = list(p.with_suffix("").parts)
        if "src" in parts:
            i = parts.index("src")
            crate = [re.sub(r"-\d+(\.\d+)*.*$", "", parts[i - 1])] if i > 0 else []
            parts = crate + parts[i + 1 :]
        if parts and parts[-1] in ("lib", "main", "mod"):
            parts.pop()
        return "::".join(parts)
    parts = list(p.with_suffix("").parts)
    if len(parts) > 1 and parts[-1] == "index":
        parts.pop()
    return "/".join(parts)


def parse_definitions(source: str, language: str, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The definitions in one file as (text, metadata) in source order (ids are made by the caller).

    ``source`` has ``\\n`` line ends. Raises :class:`TreeSitterError` when the file has syntax errors.
    """
    src = source.encode("utf-8", "surrogatepass")
    tree = _parser(_grammar(language, path)).parse(src)
    root = tree.root_node
    if root.has_error:
        raise TreeSitterError(_first_error_line(root))
    lines = src.split(b"\n")
    out: list[tuple[str, dict[str, Any]]] = []
    module = module_of(language, path, root, src)

    def emit(kind: str, qualname: str, first: Node, outer: Node, docs: list[Node], signature: str) -> None:
        start_row = first.start_point.row
        end_row = _last_row(outer)
        indent = lines[start_row][: first.start_point.column]
        if indent.strip():  # code before the definition on its first line: start at the definition
            block = [src[first.start_byte : outer.end_byte]]
        else:
            block = lines[start_row : end_row + 1]
            block[-1] = block[-1][: outer.end_point.column] if outer.end_point.row == end_row else block[-1]
            if indent:
                block = [ln[len(indent):] if ln.startswith(indent) else (b"" if not ln.strip() else ln) for ln in block]
        text = b"\n".join(block).decode("utf-8", "replace")
        doc = clean_doc(language, [f.text(d) for d in docs])
        out.append((text, {
            "path": path, "module": module, "qualname": qualname, "line": start_row + 1, "end_line": end_row + 1,
            "kind": kind, "signature": signature, "docstring": summarize_docstring(doc), "language": language,
        }))

    f = _File(language, src, path, module, lines, emit)
    if language == "go":
        _walk_go(f, root)
    elif language == "java":
        _walk_java(f, list(root.named_children), [])
    elif language == "rust":
        _walk_rust(f, list(root.named_children), [], False)
    else:
        _walk_js(f, list(root.named_children), [])
    return out


def _first_error_line(root: Node) -> int:
    stack = [root]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            return n.start_point.row + 1
        stack.extend(reversed([c for c in n.children if c.has_error or c.is_missing]))
    return root.start_point.row + 1


def split_doc_comment(source: str, language: str, header: str | None = None) -> tuple[str, str]:
    """Split a definition's text into (doc-comment summary, the text without its doc comments).

    Removes the comments above the definition (a definition's text starts at its doc comment) and,
    in Rust, the ``//!`` / ``/*! */`` comments opening its body. A first line equal to ``header``
    (the location comment code is embedded after) is kept in place. ``("", source)`` when there is
    no doc comment. Never raises: text that does not parse keeps its body comments.
    """
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    prefix = ""
    if header and text.startswith(header + "\n"):
        prefix, text = header + "\n", text[len(header) + 1 :]
    comments: list[str] = []
    kept: list[str] = []  # Rust attributes between doc comments stay
    rest = text
    while True:  # leading comments, whatever whitespace and attributes lie between
        s = rest.lstrip()
        if language == "rust" and s.startswith("#["):
            end = s.find("\n")
            if end < 0:
                break
            kept.append(s[: end + 1])
            rest = s[end + 1 :]
        elif s.startswith("//"):
            end = s.find("\n")
            comments.append(s if end < 0 else s[:end])
            rest = "" if end < 0 else s[end + 1 :]
        elif s.startswith("/*"):
            end = s.find("*/", 2)
            if end < 0:
                break
            comments.append(s[: end + 2])
            rest = s[end + 2 :].lstrip(" \t")
            rest = rest[1:] if rest.startswith("\n") else rest
        else:
            break
    if comments:
        text = "".join(kept) + rest
    inner: list[str] = []
    if language == "rust" and ("//!" in text or "/*!" in text):
        text, inner = _strip_inner_docs(text)
    doc = clean_doc(language, comments + inner)
    return summarize_docstring(doc), prefix + text


def _strip_inner_docs(text: str) -> tuple[str, list[str]]:
    src = text.encode("utf-8", "surrogatepass")
    root = _parser("rust").parse(src).root_node
    item = next((n for n in root.named_children if n.type not in _COMMENTS and n.type not in _ATTRIBUTES), None)
    body = item.child_by_field_name("body") if item is not None else None
    if body is None:
        return text, []
    cut: list[Node] = []
    for child in body.children:
        if child.type == "{":
            continue
        if child.type in _COMMENTS and _is_inner_doc(src[child.start_byte : child.end_byte].decode("utf-8", "replace")):
            cut.append(child)
            continue
        break
    if not cut:
        return text, []
    docs = [src[c.start_byte : c.end_byte].decode("utf-8", "replace") for c in cut]
    # drop whole lines when the comments own them, else just their bytes
    start, end = cut[0].start_byte, cut[-1].end_byte
    line_start = src.rfind(b"\n", 0, start) + 1
    if not src[line_start:start].strip():
        start = line_start
        nl = src.find(b"\n", end - 1) if src[end - 1 : end] == b"\n" else src.find(b"\n", end)
        end = len(src) if nl < 0 else nl + 1
    return (src[:start] + src[end:]).decode("utf-8", "replace"), docs
