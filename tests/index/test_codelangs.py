"""Code ingest beyond Python (tree-sitter): per language the definitions, qualnames, kinds, doc-comment
summaries, the location header and the doc-comment split; generated, vendored and broken files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from strop.index.code.parse import context_header, parse_tree, split_docstring, usable_docstring
from strop.index.code.treesitter import split_doc_comment

GO = """\
// Package geo computes distances.
package geo

import "math"

// Point is a place on the earth.
type Point struct {
\tLat, Lon float64
}

// Haversine returns the great-circle distance in kilometres between two points.
//
// It assumes a spherical earth.
//go:noinline
func Haversine(a, b Point) float64 {
\treturn math.Abs(a.Lat - b.Lat)
}

// Bearing gives the initial compass direction from p towards q.
func (p *Point) Bearing(q Point) float64 { return 0 }

type (
\t// Shape is anything with an area.
\tShape interface{ Area() float64 }
\tMeters = float64
)

// Not a doc comment: a blank line follows.

func undocumented() {}
"""

JAVA = """\
package com.example.shop;

import java.util.Map;

/**
 * A shopping basket holding products and their quantities.
 *
 * @author someone
 */
public class Cart {
    private final Map<String, Integer> items = new java.util.HashMap<>();

    /** Creates an empty basket. */
    public Cart() {}

    /**
     * Puts a quantity of a {@link Product product} into the <b>basket</b>.
     * <p>Quantities add up.
     * @param sku the product
     */
    @SuppressWarnings("unused")
    public void add(String sku, int qty) {
        items.merge(sku, qty, Integer::sum);
    }

    /** Removes every product from the basket. */
    void clear() { items.clear(); }

    /** A line of the basket. */
    public static class Line {
        /** The total price of this line, in cents. */
        long total() { return 0; }
    }

    interface Priced { long price(); }
}
"""

TS = """\
/**
 * Format an amount of cents as a currency string.
 * @param cents - the amount
 */
export function formatCents(cents: number): string {
  return (cents / 100).toFixed(2);
}

/** A client for the pricing service. */
export class PriceClient {
  /** Fetch the current price of one product. */
  async fetchPrice(sku: string): Promise<number> {
    return 0;
  }
  private cache = new Map<string, number>();
  /** Forget every cached price. */
  reset = (): void => { this.cache.clear(); };
}

/** Anything that has a price. */
export interface Priced { price(): number; }

/** Round a number to two decimals. */
const round2 = (x: number) => Math.round(x * 100) / 100;
"""

JS = """\
/**
 * Creates a debounced function that delays invoking `func`.
 *
 * @param {Function} func The function to debounce.
 * @returns {Function} Returns the new debounced function.
 */
function debounce(func, wait) {
  let timer;
  return function (...args) { clearTimeout(timer); timer = setTimeout(() => func(...args), wait); };
}

/** Checks whether a value is a plain object. */
exports.isPlainObject = function (value) { return value !== null && typeof value === "object"; };

module.exports = debounce;
"""

RUST = """\
//! Geometry helpers.

use std::fmt;

/// A point in the plane.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    /// Creates a point from its [coordinates](https://example.com).
    pub fn new(x: f64, y: f64) -> Self {
        Point { x, y }
    }

    pub fn norm(&self) -> f64 {
        //! Returns the distance from the origin.
        (self.x * self.x + self.y * self.y).sqrt()
    }
}

impl fmt::Display for Point {
    /// Writes the point as `(x, y)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

/** Something with an area. */
pub trait Shape {
    fn area(&self) -> f64;
    /// Whether the shape has no area at all.
    fn is_empty(&self) -> bool { self.area() == 0.0 }
}

pub mod units {
    /// Converts metres to feet.
    pub fn to_feet(m: f64) -> f64 { m * 3.28084 }
}
"""

PY = '''\
def add_tax(amount, rate):
    """Compute the gross price by applying value added tax to a net amount."""
    return amount * (1 + rate)
'''


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)


@pytest.fixture()
def mixed(tmp_path: Path) -> dict:
    write(tmp_path, {"geo/geo.go": GO, "src/main/java/com/example/shop/Cart.java": JAVA, "src/price.ts": TS,
                     "lib/debounce.js": JS, "geom/src/geometry.rs": RUST, "shop/money.py": PY})
    result = parse_tree(tmp_path)
    return {"result": result, "docs": {d.id: d for d in result.docs}, "root": tmp_path}


def test_go(mixed):
    docs = mixed["docs"]
    go = {i: d for i, d in docs.items() if d.metadata["language"] == "go"}
    assert {i: d.metadata["kind"] for i, d in go.items()} == {
        "geo/geo.go:Point": "struct", "geo/geo.go:Haversine": "function", "geo/geo.go:Point.Bearing": "method",
        "geo/geo.go:Shape": "interface", "geo/geo.go:Meters": "type", "geo/geo.go:undocumented": "function"}
    h = go["geo/geo.go:Haversine"].metadata
    assert h["docstring"] == "Haversine returns the great-circle distance in kilometres between two points."
    assert h["module"] == "geo" and h["qualname"] == "Haversine" and h["path"] == "geo/geo.go"
    assert h["signature"] == "func Haversine(a, b Point) float64"
    lines = GO.split("\n")
    assert lines[h["line"] - 1] == "// Haversine returns the great-circle distance in kilometres between two points."
    assert lines[h["end_line"] - 1] == "}"
    assert go["geo/geo.go:Haversine"].text == "\n".join(lines[h["line"] - 1 : h["end_line"]])
    assert go["geo/geo.go:Point.Bearing"].metadata["docstring"] == \
        "Bearing gives the initial compass direction from p towards q."
    assert go["geo/geo.go:Point.Bearing"].metadata["signature"] == "func (p *Point) Bearing(q Point) float64"
    assert go["geo/geo.go:Shape"].metadata["docstring"] == "Shape is anything with an area."  # inside `type ( )`
    assert go["geo/geo.go:Shape"].metadata["signature"] == "type Shape interface"
    assert go["geo/geo.go:Meters"].metadata["docstring"] == ""
    assert go["geo/geo.go:undocumented"].metadata["docstring"] == ""  # a blank line cuts the comment off
    assert go["geo/geo.go:Point"].text.startswith("// Point is a place on the earth.\ntype Point struct {")
    assert context_header(h) == "// geo Haversine"


def test_java(mixed):
    docs = {i: d for i, d in mixed["docs"].items() if d.metadata["language"] == "java"}
    prefix = "src/main/java/com/example/shop/Cart.java:"
    assert {i.removeprefix(prefix): d.metadata["kind"] for i, d in docs.items()} == {
        "Cart": "class", "Cart.Cart": "method", "Cart.add": "method", "Cart.clear": "method",
        "Cart.Line": "class", "Cart.Line.total": "method", "Cart.Priced": "interface"}
    add = docs[prefix + "Cart.add"]
    assert add.metadata["docstring"] == "Puts a quantity of a product into the basket."  # {@link}, HTML gone
    assert add.metadata["module"] == "com.example.shop"  # the package, not the folders
    assert add.metadata["signature"] == "public void add(String sku, int qty)"
    assert add.text.startswith("/**\n * Puts a quantity") and "@SuppressWarnings" in add.text
    assert docs[prefix + "Cart"].metadata["docstring"] == "A shopping basket holding products and their quantities."
    assert docs[prefix + "Cart.Line.total"].metadata["docstring"] == "The total price of this line, in cents."
    assert docs[prefix + "Cart.Line.total"].metadata["qualname"] == "Cart.Line.total"
    assert context_header(add.metadata) == "// com example shop Cart add"


def test_typescript_and_javascript(mixed):
    docs = mixed["docs"]
    ts = {i: d for i, d in docs.items() if d.metadata["language"] == "typescript"}
    assert {i: d.metadata["kind"] for i, d in ts.items()} == {
        "src/price.ts:formatCents": "function", "src/price.ts:PriceClient": "class",
        "src/price.ts:PriceClient.fetchPrice": "method", "src/price.ts:PriceClient.reset": "method",
        "src/price.ts:Priced": "interface", "src/price.ts:round2": "function"}
    fmt = ts["src/price.ts:formatCents"]
    assert fmt.metadata["docstring"] == "Format an amount of cents as a currency string."
    assert fmt.text.startswith("/**") and fmt.text.endswith("}") and "export function formatCents" in fmt.text
    assert fmt.metadata["module"] == "src/price" and fmt.metadata["line"] == 1
    assert ts["src/price.ts:PriceClient.reset"].metadata["docstring"] == "Forget every cached price."
    assert ts["src/price.ts:round2"].metadata["signature"] == "const round2 = (x: number) =>"
    assert context_header(ts["src/price.ts:PriceClient.fetchPrice"].metadata) == "// src price PriceClient fetchPrice"
    js = {i: d for i, d in docs.items() if d.metadata["language"] == "javascript"}
    assert set(js) == {"lib/debounce.js:debounce", "lib/debounce.js:exports.isPlainObject"}
    assert js["lib/debounce.js:debounce"].metadata["docstring"] == \
        "Creates a debounced function that delays invoking `func`."
    assert js["lib/debounce.js:exports.isPlainObject"].metadata["docstring"] == "Checks whether a value is a plain object."


def test_rust(mixed):
    docs = {i.removeprefix("geom/src/geometry.rs:"): d for i, d in mixed["docs"].items()
            if d.metadata["language"] == "rust"}
    assert {i: d.metadata["kind"] for i, d in docs.items()} == {
        "Point": "struct", "Point#2": "impl", "Point.new": "method", "Point.norm": "method",
        "<Point as Display>": "impl", "<Point as Display>.fmt": "method", "Shape": "trait",
        "Shape.is_empty": "method", "units.to_feet": "function"}
    assert docs["Point"].metadata["docstring"] == "A point in the plane."
    assert docs["Point"].text.startswith("/// A point in the plane.\n#[derive(Debug, Clone, Copy)]\npub struct Point")
    assert docs["Point.new"].metadata["docstring"] == "Creates a point from its coordinates."  # Markdown link
    assert docs["Point.norm"].metadata["docstring"] == "Returns the distance from the origin."  # //! inside
    assert docs["<Point as Display>.fmt"].metadata["docstring"] == "Writes the point as `(x, y)`."
    assert docs["Shape"].metadata["docstring"] == "Something with an area."
    assert docs["units.to_feet"].metadata["module"] == "geom::geometry"  # crate folder, then the path below src/
    assert docs["units.to_feet"].metadata["qualname"] == "units.to_feet"  # an inline `mod` is a scope
    assert context_header(docs["<Point as Display>.fmt"].metadata) == "// geom geometry Point as Display fmt"


def test_python_documents_name_their_language(mixed):
    d = mixed["docs"]["shop.money.add_tax"]
    assert d.metadata["language"] == "python"
    assert context_header(d.metadata) == "# shop money add tax"
    summary = mixed["result"].summary()
    assert set(summary) == {"go", "java", "javascript", "python", "rust", "typescript"}
    assert summary["go"]["files"] == 1 and summary["go"]["definitions"] == 6
    assert summary["java"]["definitions"] == 7 and summary["rust"]["definitions"] == 9


@pytest.mark.parametrize("doc_id", [
    "geo/geo.go:Haversine", "geo/geo.go:Point.Bearing", "src/main/java/com/example/shop/Cart.java:Cart.add",
    "src/price.ts:formatCents", "src/price.ts:PriceClient.reset", "lib/debounce.js:debounce",
    "geom/src/geometry.rs:Point.new", "geom/src/geometry.rs:Point.norm", "geom/src/geometry.rs:<Point as Display>.fmt",
])
def test_split_removes_the_doc_comment_and_keeps_the_header(mixed, doc_id):
    d = mixed["docs"][doc_id]
    header = context_header(d.metadata)
    summary, code = split_docstring(f"{header}\n{d.text}", d.metadata)
    assert summary == d.metadata["docstring"] and usable_docstring(summary)
    assert code.startswith(header + "\n")  # the location header stays, on its own line
    body = code[len(header) + 1 :]
    assert "/**" not in body and "///" not in body and "//!" not in body
    assert not body.lstrip().startswith("//")
    # everything but the doc comment is still there, the definition's last line included
    assert body.rstrip().endswith(d.text.rstrip().split("\n")[-1].strip())
    assert split_docstring(code, d.metadata) == ("", code)  # nothing left to strip


def test_split_details():
    # a Rust attribute between outer doc lines stays; both doc lines go
    summary, code = split_doc_comment("/// Adds two\n#[inline]\n/// numbers together.\npub fn add() {}\n", "rust")
    assert summary == "Adds two numbers together." and code == "#[inline]\npub fn add() {}\n"
    summary, code = split_doc_comment("pub fn f() {\n    //! Inner doc.\n    1\n}", "rust")
    assert summary == "Inner doc." and code == "pub fn f() {\n    1\n}"
    # Java: the annotation after the Javadoc stays
    summary, code = split_doc_comment("/** Does it. */\n@Override\npublic void run() {}", "java")
    assert summary == "Does it." and code == "@Override\npublic void run() {}"
    assert split_doc_comment("func f() {}", "go") == ("", "func f() {}")


def test_generated_vendored_broken_and_large_files_are_skipped_and_counted(tmp_path):
    write(tmp_path, {
        "web/app.min.js": "function a(){return 1}\n",
        "web/bundle.js": "var x = [" + ",".join(["1"] * 600) + "];\nfunction b() {}\n",
        "web/ok.js": "/** Says hello to someone by name. */\nfunction hello(n) { return n; }\n",
        "gen/zz_generated.go": "// Code generated by stringer; DO NOT EDIT.\n\npackage gen\n\nfunc X() {}\n",
        "gen/ok.go": "package gen\n\n// Y does the thing.\nfunc Y() {}\n",
        "node_modules/left-pad/index.js": "function leftPad() {}\n",
        "vendor/golang.org/x/y.go": "package y\nfunc Z() {}\n",
        "broken.go": "package main\nfunc ( {{\n",
        "broken.ts": "export function (: {\n",
        "Big.java": "class Big {\n" + "  void m() {}\n" * 500 + "}\n",
        "huge.rs": "fn huge() {\n" + "    let x = 1;\n" * 300 + "}\n",
        "latin.rs": b"/// caf\xe9\nfn f() {}\n",
        "ignored/skip.go": "package ignored\nfunc W() {}\n",
        ".gitignore": "ignored/\n",
    })
    r = parse_tree(tmp_path, max_file_bytes=5000, max_definition_chars=2000)
    s = r.summary()
    assert sorted(r.vendored) == ["node_modules", "vendor"]
    assert s["javascript"]["files"] == 3 and s["javascript"]["generated"] == 2 and s["javascript"]["definitions"] == 1
    assert s["go"]["files"] == 3 and s["go"]["generated"] == 1 and s["go"]["unparsable"] == 1
    assert s["go"]["definitions"] == 1
    assert s["typescript"]["unparsable"] == 1
    assert s["java"]["too_large"] == 1
    assert s["rust"]["definitions_too_large"] == 1 and s["rust"]["undecodable"] == 1
    reasons = dict(r.skipped)
    assert reasons["web/app.min.js"].startswith("minified")
    assert "characters" in reasons["web/bundle.js"] and "DO NOT EDIT" in reasons["gen/zz_generated.go"]
    assert reasons["broken.go"].startswith("syntax error (line 2)")
    assert {d.id for d in r.docs} == {"web/ok.js:hello", "gen/ok.go:Y"}
    # asked to, ingest reads generated files and vendored folders too (.gitignore still applies)
    r = parse_tree(tmp_path, include_generated=True, languages=["javascript", "go"])
    ids = {d.id for d in r.docs}
    assert {"web/app.min.js:a", "web/bundle.js:b", "node_modules/left-pad/index.js:leftPad",
            "vendor/golang.org/x/y.go:Z", "gen/zz_generated.go:X"} <= ids
    assert not any(i.startswith("ignored/") for i in ids) and r.vendored == []
    assert set(r.summary()) == {"go", "javascript"}


def test_duplicate_names_get_numbered(tmp_path):
    src = textwrap.dedent("""\
        class A {
          /** Reads the size. */
          get size() { return 1; }
          /** Writes the size. */
          set size(v) {}
        }
        """)
    write(tmp_path, {"a.js": src})
    docs = {d.id: d for d in parse_tree(tmp_path).docs}
    assert docs["a.js:A.size"].metadata["docstring"] == "Reads the size."
    assert docs["a.js:A.size#2"].metadata["docstring"] == "Writes the size."
