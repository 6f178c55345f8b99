"""Tests for strop.index.code.parse: ids, positions, signatures, docstrings, .gitignore walking."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from strop.index.code.parse import (
    CodeDoc,
    context_header,
    iter_python_files,
    module_name,
    parse_source,
    parse_tree,
    split_docstring,
    summarize_docstring,
    usable_docstring,
)

MOD_SOURCE = '''\
"""Module docstring."""
import functools


def plain(a, b=1) -> int:
    """Add two numbers together. More text here.

    Second paragraph.
    """
    def inner():
        """Nested functions are skipped."""
    return a + b


async def fetch(url: str, *, timeout: float = 1.0):
    """Fetch a URL asynchronously, e.g. over HTTP."""
    return url


class Base:
    pass


class Widget(Base, metaclass=type):
    """A widget with a nested helper class."""

    @functools.lru_cache(maxsize=None)
    @staticmethod
    def decorated(x):
        """Return a cached value for x."""
        return x

    @property
    def size(self):
        """The size of the widget in pixels."""
        return self._size

    @size.setter
    def size(self, value):
        self._size = value

    class Inner:
        def method(self):
            """Do the inner thing quickly."""
            return 1

    def one_liner(self): "Docstring only on the def line."
'''


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('def top():\n    """Package level function here."""\n')
    (pkg / "mod.py").write_text(MOD_SOURCE)
    (pkg / "sub" / "util.py").write_text("def helper(x):\n    return x\n")
    (pkg / "broken.py").write_text("def oops(:\n    pass\n")
    (pkg / "latin.py").write_bytes(b"x = '\xe9'\n")  # no coding cookie: not valid UTF-8
    # .gitignore: an ignored file, an ignored directory, a negated file, an anchored pattern.
    (tmp_path / ".gitignore").write_text(
        "# comment\n\n*_gen.py\n!keep_gen.py\ngenerated/\n/pkg/sub/anchored.py\n"
    )
    (pkg / "a_gen.py").write_text("def gen():\n    pass\n")
    (pkg / "keep_gen.py").write_text("def kept():\n    pass\n")
    (pkg / "generated").mkdir()
    (pkg / "generated" / "g.py").write_text("def g():\n    pass\n")
    (pkg / "sub" / "anchored.py").write_text("def anchored():\n    pass\n")
    # nested .gitignore applies under its own directory only
    (pkg / "sub" / ".gitignore").write_text("local_*.py\n")
    (pkg / "sub" / "local_x.py").write_text("def lx():\n    pass\n")
    (pkg / "local_y.py").write_text("def ly():\n    pass\n")
    # always / environment skips
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "c.py").write_text("def c():\n    pass\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / ".venv" / "lib" / "site.py").write_text("def s():\n    pass\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    return tmp_path


def _by_id(docs: list[CodeDoc]) -> dict[str, CodeDoc]:
    return {d.id: d for d in docs}


def test_parse_source_ids_kinds_and_dedupe() -> None:
    docs = parse_source(MOD_SOURCE, "pkg.mod", "pkg/mod.py")
    ids = [d.id for d in docs]
    assert ids == [
        "pkg.mod.plain",
        "pkg.mod.fetch",
        "pkg.mod.Base",
        "pkg.mod.Widget",
        "pkg.mod.Widget.decorated",
        "pkg.mod.Widget.size",
        "pkg.mod.Widget.size#2",
        "pkg.mod.Widget.Inner",
        "pkg.mod.Widget.Inner.method",
        "pkg.mod.Widget.one_liner",
    ]
    kinds = {d.id: d.metadata["kind"] for d in docs}
    assert kinds["pkg.mod.plain"] == "function"
    assert kinds["pkg.mod.fetch"] == "function"
    assert kinds["pkg.mod.Widget"] == "class"
    assert kinds["pkg.mod.Widget.Inner"] == "class"
    assert kinds["pkg.mod.Widget.decorated"] == "method"
    assert kinds["pkg.mod.Widget.Inner.method"] == "method"
    assert all(d.metadata["path"] == "pkg/mod.py" and d.metadata["module"] == "pkg.mod" for d in docs)
    quals = {d.id: d.metadata["qualname"] for d in docs}
    assert quals["pkg.mod.Widget.Inner.method"] == "Widget.Inner.method"
    assert quals["pkg.mod.Widget.size#2"] == "Widget.size"


def test_context_header() -> None:
    assert context_header({"module": "json.decoder", "qualname": "JSONDecoder.decode"}) == \
        "# json decoder JSONDecoder decode"
    assert context_header({"module": "", "qualname": "_private__name"}) == "# private name"
    assert context_header({"qualname": "f", "module": 3}) == "# f"
    for meta in (None, {}, {"module": "m"}, {"qualname": ""}, {"qualname": 5}, {"qualname": "._"}):
        assert context_header(meta) is None
    # a header keeps code parseable, so docstring jobs can still split it
    summary, code = split_docstring(context_header({"qualname": "f"}) + '\ndef f():\n    """Doc."""\n    return 1\n')
    assert summary == "Doc." and code.startswith("# f\ndef f():")


def test_lines_text_and_decorators() -> None:
    docs = _by_id(parse_source(MOD_SOURCE, "pkg.mod", "pkg/mod.py"))
    lines = MOD_SOURCE.split("\n")
    dec = docs["pkg.mod.Widget.decorated"]
    assert lines[dec.metadata["line"] - 1].strip() == "@functools.lru_cache(maxsize=None)"
    assert lines[dec.metadata["end_line"] - 1].strip() == "return x"
    assert dec.text.startswith("@functools.lru_cache(maxsize=None)\n@staticmethod\ndef decorated(x):")
    assert '"""Return a cached value for x."""' in dec.text
    ast.parse(dec.text)  # dedented methods parse on their own

    plain = docs["pkg.mod.plain"]
    assert lines[plain.metadata["line"] - 1] == "def plain(a, b=1) -> int:"
    assert plain.metadata["end_line"] == plain.metadata["line"] + 7
    # top-level definitions are verbatim slices of the source
    assert plain.text == "\n".join(lines[plain.metadata["line"] - 1 : plain.metadata["end_line"]])
    assert "def inner():" in plain.text  # nested function stays inside its parent's text

    widget = docs["pkg.mod.Widget"]
    assert widget.text.startswith("class Widget(Base, metaclass=type):")
    assert widget.text.rstrip().endswith('def one_liner(self): "Docstring only on the def line."')
    assert docs["pkg.mod.Widget.Inner.method"].text.startswith("def method(self):\n    ")


def test_signatures_and_docstrings() -> None:
    docs = _by_id(parse_source(MOD_SOURCE, "pkg.mod", "pkg/mod.py"))
    assert docs["pkg.mod.plain"].metadata["signature"] == "def plain(a, b=1) -> int"
    assert docs["pkg.mod.fetch"].metadata["signature"] == "async def fetch(url: str, *, timeout: float=1.0)"
    assert docs["pkg.mod.Widget"].metadata["signature"] == "class Widget(Base, metaclass=type)"
    assert docs["pkg.mod.Base"].metadata["signature"] == "class Base"
    assert docs["pkg.mod.plain"].metadata["docstring"] == "Add two numbers together."
    assert docs["pkg.mod.fetch"].metadata["docstring"] == "Fetch a URL asynchronously, e.g. over HTTP."
    assert docs["pkg.mod.Widget.size"].metadata["docstring"] == "The size of the widget in pixels."
    assert docs["pkg.mod.Widget.size#2"].metadata["docstring"] == ""
    assert docs["pkg.mod.Base"].metadata["docstring"] == ""


def test_parse_source_raises_on_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        parse_source("def broken(:\n", "m", "m.py")


def test_module_name() -> None:
    assert module_name("pkg/mod.py") == "pkg.mod"
    assert module_name("pkg/__init__.py") == "pkg"
    assert module_name("__init__.py") == ""
    assert module_name(Path("a/b/c.py")) == "a.b.c"


def test_iter_python_files_gitignore(tree: Path) -> None:
    found = sorted(p.relative_to(tree).as_posix() for p in iter_python_files(tree))
    assert found == [
        "pkg/__init__.py",
        "pkg/broken.py",
        "pkg/keep_gen.py",  # re-included by `!keep_gen.py`
        "pkg/latin.py",
        "pkg/local_y.py",  # nested .gitignore in pkg/sub does not apply here
        "pkg/mod.py",
        "pkg/sub/util.py",
    ]


def test_iter_python_files_extra_ignore_and_dir_only(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "b.py").write_text("")
    (tmp_path / "a" / "deep" / "x").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "x" / "y.py").write_text("")
    (tmp_path / "a" / "z.py").write_text("")
    (tmp_path / "dironly.py").write_text("")
    (tmp_path / ".gitignore").write_text("dironly.py/\na/**/x/\n")
    names = {p.relative_to(tmp_path).as_posix() for p in iter_python_files(tmp_path)}
    assert names == {"build/b.py", "a/z.py", "dironly.py"}  # dir-only pattern spares the file
    names = {p.relative_to(tmp_path).as_posix() for p in iter_python_files(tmp_path, ["build/", "z.py"])}
    assert names == {"dironly.py"}


def test_parse_tree(tree: Path) -> None:
    calls: list[tuple[int, int]] = []
    result = parse_tree(tree, progress=lambda done, total: calls.append((done, total)))
    assert result.files == 7
    assert calls[-1] == (7, 7) and len(calls) == 7
    skipped = dict(result.skipped)
    assert set(skipped) == {"pkg/broken.py", "pkg/latin.py"}
    assert skipped["pkg/broken.py"].startswith("syntax error")
    assert skipped["pkg/latin.py"].startswith("undecodable")
    ids = {d.id for d in result.docs}
    assert {"pkg.top", "pkg.mod.plain", "pkg.sub.util.helper", "pkg.keep_gen.kept"} <= ids
    assert not ids & {"pkg.a_gen.gen", "pkg.generated.g.g", "pkg.sub.anchored.anchored"}
    top = next(d for d in result.docs if d.id == "pkg.top")
    assert top.metadata["path"] == "pkg/__init__.py" and top.metadata["line"] == 1


def test_split_docstring_round_trip() -> None:
    for doc in parse_source(MOD_SOURCE, "pkg.mod", "pkg/mod.py"):
        summary, code = split_docstring(doc.text)
        assert summary == doc.metadata["docstring"]
        tree = ast.parse(code)
        node = tree.body[0]
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        assert ast.get_docstring(node) is None
        original = ast.parse(doc.text).body[0]
        raw = ast.get_docstring(original, clean=False)  # type: ignore[arg-type]
        if raw is None:
            assert (summary, code) == ("", doc.text)
        else:
            assert raw not in code
            assert code.split("\n")[0] == doc.text.split("\n")[0] or doc.id.endswith("one_liner")


def test_split_docstring_details() -> None:
    src = textwrap.dedent(
        '''\
        @decorator
        def f(x):  # trailing comment kept
            """Compute the thing.

            Details.
            """
            # a comment that stays
            return x
        '''
    )
    summary, code = split_docstring(src)
    assert summary == "Compute the thing."
    assert (
        code == "@decorator\ndef f(x):  # trailing comment kept\n    # a comment that stays\n    return x\n"
    )

    summary, code = split_docstring('def g():\n    """Only a docstring in this body."""\n')
    assert summary == "Only a docstring in this body."
    assert code == "def g():\n    pass\n"

    summary, code = split_docstring('def h(): "Inline docstring here."; return 1\n')
    assert (summary, code) == ("Inline docstring here.", "def h(): return 1\n")

    summary, code = split_docstring('def k(): "Inline only docstring."\n')
    assert (summary, code) == ("Inline only docstring.", "def k(): pass\n")

    summary, code = split_docstring("def n():\n    return 'not a docstring'\n")
    assert (summary, code) == ("", "def n():\n    return 'not a docstring'\n")

    # indented input (e.g. a method copied out of a class) is dedented first
    summary, code = split_docstring('    def m(self):\n        """Method doc text."""\n        return 2\n')
    assert summary == "Method doc text."
    assert code == "def m(self):\n    return 2\n"


def test_summarize_docstring() -> None:
    assert summarize_docstring(None) == ""
    assert summarize_docstring("Do a thing.   Then another.") == "Do a thing."
    assert summarize_docstring("Wrapped\n   summary line\n\nbody") == "Wrapped summary line"
    assert summarize_docstring("S.rjust(width) -> str\n\nReturn it right-justified.") == (
        "Return it right-justified."
    )
    assert summarize_docstring("Use i.e. this one. Not this.") == "Use i.e. this one."


@pytest.mark.parametrize(
    ("summary", "ok"),
    [
        ("Return the sum of two numbers.", True),
        ("Compute hash.", False),  # fewer than 3 words
        ("Docstring for the function here.", False),
        ("TODO: write a docstring", False),
        ("Return self+value.", False),
        ("See the documentation for details.", False),
        (">>> f(1) 2 3", False),
        ("", False),
    ],
)
def test_usable_docstring(summary: str, ok: bool) -> None:
    assert usable_docstring(summary) is ok
