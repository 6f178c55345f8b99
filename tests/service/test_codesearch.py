"""Code search: ingest a package the test writes (CLI path and archive upload), search it by
docstring meaning with the packaged MiniLM, re-ingest after edits, a broken file in the tree."""

from __future__ import annotations

import io
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from strop.service.cli import format_hits
from strop.service.ingest import ingest_code

FILES = {
    "shop/__init__.py": '"""A tiny shop."""\n',
    "shop/money.py": '''
        def add_tax(amount, rate):
            """Compute the gross price by applying value added tax to a net amount."""
            return amount * (1 + rate)


        def fmt(cents):
            """Render an integer number of cents as a human readable currency string."""
            return f"{cents // 100}.{cents % 100:02d} EUR"
        ''',
    "shop/cart.py": '''
        class Cart:
            """A shopping basket holding products and their quantities."""

            def __init__(self):
                self.items = {}

            def add(self, sku, qty=1):
                """Put a quantity of a product into the basket."""
                self.items[sku] = self.items.get(sku, 0) + qty

            def clear(self):
                """Remove every product from the basket."""
                self.items.clear()
        ''',
    "shop/geo.py": '''
        import math


        def haversine(lat1, lon1, lat2, lon2):
            """Great-circle distance in kilometres between two points on the earth."""
            p = math.pi / 180
            a = 0.5 - math.cos((lat2 - lat1) * p) / 2
            return 12742 * math.asin(math.sqrt(a))
        ''',
    "shop/broken.py": "def oops(:\n    pass\n",
    "build/generated.py": "def generated():\n    '''Should be ignored by .gitignore.'''\n",
    ".gitignore": "build/\n",
}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture()
def minilm_client(make_client):
    return make_client(default_encoder="all-MiniLM-L6-v2")


def test_ingest_search_reingest(minilm_client, tmp_path, capsys):
    c = minilm_client
    root = tmp_path / "repo"
    write_tree(root, FILES)
    summary = ingest_code(c, root, "shop")
    assert summary["skipped_files"] == 1  # broken.py, counted, not fatal
    ids = {d["id"] for d in c.get("/collections/shop/documents").json()["documents"]}
    assert {"shop.money.add_tax", "shop.money.fmt", "shop.cart.Cart", "shop.cart.Cart.add", "shop.geo.haversine"} <= ids
    assert not any(i.startswith("build") or "generated" in i for i in ids)
    assert c.get("/collections/shop").json()["modality"] == "code"

    # by meaning, not by name: no query word appears in the function's name
    r = c.post("/collections/shop/search", json={"query": "how far apart are two places on the globe", "top_k": 3}).json()
    assert r["hits"][0]["id"] == "shop.geo.haversine"
    top = r["hits"][0]
    assert top["metadata"]["path"] == "shop/geo.py" and top["metadata"]["line"] == 4
    assert top["metadata"]["signature"].startswith("def haversine(")
    lines = format_hits("code", r["hits"])
    assert lines[0] == f"shop/geo.py:4  {top['metadata']['signature']}"
    r = c.post("/collections/shop/search", json={"query": "empty the shopping basket", "top_k": 1}).json()
    assert r["hits"][0]["id"] == "shop.cart.Cart.clear"
    # lexical fusion (off by default) lifts the class, whose docstring says "shopping basket", but the
    # method that answers stays in the top two
    r = c.post("/collections/shop/search", json={"query": "empty the shopping basket", "top_k": 2,
                                                  "lexical": 0.1}).json()
    assert "shop.cart.Cart.clear" in [h["id"] for h in r["hits"]]

    # edit: change one function, add one, delete one, fix the broken file
    files = dict(FILES)
    files["shop/money.py"] = FILES["shop/money.py"].replace("EUR", "USD")
    files["shop/geo.py"] = '''
        def bearing(lat1, lon1, lat2, lon2):
            """Initial compass direction to travel from one point towards another."""
            return 0.0
        '''
    files["shop/broken.py"] = "def fixed():\n    '''Now it parses fine again.'''\n    return 1\n"
    write_tree(root, files)
    summary = ingest_code(c, root, "shop")
    assert summary["skipped_files"] == 0
    assert summary["deleted"] == 1  # haversine vanished
    assert summary["upserted"] == 3  # fmt changed, bearing and fixed are new
    assert summary["unchanged"] >= 5
    assert c.get("/collections/shop/documents/shop.geo.haversine").status_code == 404
    assert "USD" in c.get("/collections/shop/documents/shop.money.fmt").json()["text"]
    r = c.post("/collections/shop/search", json={"query": "which direction should I head", "top_k": 1}).json()
    assert r["hits"][0]["id"] == "shop.geo.bearing"
    assert ingest_code(c, root, "shop")["upserted"] == 0  # idempotent

    # --exclude: extra gitignore-style patterns; what they exclude leaves the collection
    from strop.service.cli import build_parser

    args = build_parser().parse_args(["ingest", "code", str(root), "--collection", "shop", "--exclude", "geo.py"])
    summary = ingest_code(c, root, "shop", exclude=args.exclude)
    assert summary["deleted"] == 1 and summary["upserted"] == 0  # bearing went with geo.py
    assert c.get("/collections/shop/documents/shop.geo.bearing").status_code == 404
    assert c.get("/collections/shop/documents/shop.money.fmt").status_code == 200


def _zip(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in root.rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def test_archive_upload(make_client, tmp_path):
    c = make_client()
    root = tmp_path / "repo"
    write_tree(root, FILES)
    assert c.post("/collections", json={"name": "arch", "modality": "code"}).status_code == 201
    r = c.post("/collections/arch/ingest/code", content=_zip(root), headers={"content-type": "application/zip"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["upserted"] >= 7 and [s["path"] for s in body["skipped_files"]] == ["shop/broken.py"]
    assert c.get("/collections/arch/documents/shop.geo.haversine").status_code == 200
    # a tarball of one top-level folder gives the same ids
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, arcname="repo")
    r = c.post("/collections/arch/ingest/code", content=buf.getvalue())
    assert r.status_code == 200 and r.json()["upserted"] == 0 and r.json()["deleted"] == 0
    # hostile and broken archives are 4xx, and nothing changes
    count = c.get("/collections/arch").json()["count"]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/evil.py", "def x(): pass\n")
    assert c.post("/collections/arch/ingest/code", content=evil.getvalue()).json()["error"]["code"] == "unsafe_archive"
    assert c.post("/collections/arch/ingest/code", content=b"not an archive").status_code == 422
    assert c.post("/collections/arch/ingest/code", content=b"").status_code == 422
    assert c.get("/collections/arch").json()["count"] == count
    c.post("/collections", json={"name": "prose", "modality": "text"})
    assert c.post("/collections/prose/ingest/code", content=_zip(root)).json()["error"]["code"] == "wrong_modality"


def test_docstring_pairs_and_augmentation():
    import random

    import numpy as np

    from strop.trainer.augment import augment_code
    from strop.trainer.data import Snapshot, docstring_pairs

    src = textwrap.dedent(FILES["shop/money.py"]).lstrip("\n")
    from strop.index.code.parse import parse_source

    docs = parse_source(src, "shop.money", "shop/money.py")
    undocumented = {"id": "shop.money.nodoc", "text": "def nodoc(x):\n    return x\n",
                    "metadata": {"kind": "function", "docstring": ""}}
    snap = Snapshot("c", "code", "v1", {}, "", "", 0, [d.id for d in docs] + [undocumented["id"]],
                    np.arange(len(docs) + 1), [d.text for d in docs] + [undocumented["text"]],
                    [d.metadata for d in docs] + [undocumented["metadata"]], {})
    pairs = docstring_pairs(snap)
    assert [snap.ids[p.positive] for p in pairs] == ["shop.money.add_tax", "shop.money.fmt"]
    assert pairs[0].query.startswith("Compute the gross price")
    assert '"""' not in pairs[0].positive_text and "return amount * (1 + rate)" in pairs[0].positive_text

    code = pairs[0].positive_text
    rng = random.Random(0)
    masked = augment_code(code, 1.0, "mask", rng)
    assert "[MASK]" in masked and "amount" not in masked and "return" in masked
    typed = augment_code(code, 1.0, "type", rng)
    assert "function" in typed and "variable" in typed
    assert augment_code(code, 0.0, "both", rng) == code


def test_code_is_embedded_after_its_location(minilm_client):
    """Two definitions with the same source differ by where they live: metadata ``module`` and
    ``qualname`` become a comment line in the embedding input (not in the stored text)."""
    c = minilm_client
    assert c.post("/collections", json={"name": "located", "modality": "code"}).status_code == 201
    text = "def load(fp):\n    return parse(fp.read())\n"
    docs = [{"id": "j", "text": text, "metadata": {"module": "json.decoder", "qualname": "load"}},
            {"id": "t", "text": text, "metadata": {"module": "tarfile", "qualname": "TarFile.load"}},
            {"id": "bare", "text": text}]
    assert c.put("/collections/located/documents", json={"documents": docs}).status_code == 200
    top = lambda q: c.post("/collections/located/search", json={"query": q, "top_k": 3}).json()["hits"]  # noqa: E731
    assert top("parse a JSON document read from a file")[0]["id"] == "j"
    assert top("read a tar archive")[0]["id"] == "t"
    hits = top("load")
    assert len({round(h["score"], 5) for h in hits}) == 3  # same text, three different embeddings
    assert all(h["text"] == text for h in hits)  # stored and returned verbatim
    # lexical fusion scores the same input the encoder sees: only the tarfile copy's header says "tar"
    hits = c.post("/collections/located/search", json={"query": "read a tar archive", "top_k": 3,
                                                       "lexical": 0.1}).json()["hits"]
    lex = {h["id"]: h["scores"]["lexical"] for h in hits}
    assert lex["t"] == 1.0 and lex["j"] < 1.0 and lex["bare"] < 1.0
