"""Code search on a mixed-language tree (Go, TypeScript, Java, Rust, Python): `strop ingest code` and the
archive upload count per language, searches filter on `language`, and a docstrings job learns from every
language's doc comments."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from strop.client import Client
from strop.index.code.parse import parse_tree
from strop.index.code.sync import to_document

# (name, what it does): one documented function each, rendered in every language
TASKS = [
    ("shippingCost", "computes the shipping cost of a parcel from its weight"),
    ("parseHeader", "reads the key and value of one HTTP header line"),
    ("celsiusToKelvin", "converts a temperature from degrees Celsius to kelvin"),
    ("retryLater", "waits with exponential backoff before trying a request again"),
    ("hashPassword", "derives a salted hash from a user's password"),
    ("mergeSorted", "merges two sorted lists into one sorted list"),
    ("countWords", "counts how many times each word occurs in a text"),
    ("isLeapYear", "tells whether a year has a twenty-ninth of February"),
    ("slugify", "turns a title into a lowercase identifier for a URL"),
    ("median", "finds the middle value of a list of numbers"),
    ("gzipBytes", "compresses a byte buffer with the deflate algorithm"),
    ("nextBusinessDay", "returns the next weekday that is not a public holiday"),
]
PER_FILE = 3


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def render(language: str, tasks: list[tuple[str, str]], k: int) -> str:
    out = []
    if language == "go":
        out.append(f"package tasks{k}\n")
        for i, (name, what) in enumerate(tasks):
            n = name[0].upper() + name[1:]
            out.append(f"// {n} {what}.\nfunc {n}(x int) int {{\n\treturn x + {i}\n}}\n")
    elif language == "typescript":
        for i, (name, what) in enumerate(tasks):
            out.append(f"/**\n * {what.capitalize()}.\n * @param x - the input\n */\n"
                       f"export function {name}(x: number): number {{\n  return x + {i};\n}}\n")
    elif language == "java":
        out.append(f"package org.example.tasks{k};\n\npublic class Tasks{k} {{")
        for i, (name, what) in enumerate(tasks):
            out.append(f"    /** {what.capitalize()}. */\n    public static int {name}(int x) {{\n"
                       f"        return x + {i};\n    }}\n")
        out.append("}\n")
    elif language == "rust":
        for i, (name, what) in enumerate(tasks):
            out.append(f"/// {what.capitalize()}.\npub fn {_snake(name)}(x: i64) -> i64 {{\n    x + {i}\n}}\n")
    else:
        for i, (name, what) in enumerate(tasks):
            out.append(f'def {_snake(name)}(x):\n    """{what.capitalize()}."""\n    return x + {i}\n\n')
    return "\n".join(out)


EXT = {"go": "go", "typescript": "ts", "java": "java", "rust": "rs", "python": "py"}


def write_mixed(root: Path) -> int:
    """The mixed tree; returns how many documented functions it holds."""
    n = 0
    for lang, ext in EXT.items():
        for k in range(0, len(TASKS), PER_FILE):
            chunk = TASKS[k : k + PER_FILE]
            p = root / lang / (f"Tasks{k}.java" if lang == "java" else f"tasks{k}.{ext}")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(render(lang, chunk, k))
            n += len(chunk)
    (root / "web").mkdir()
    (root / "web" / "app.min.js").write_text("function a(){return 1}\n")
    (root / "node_modules" / "left-pad").mkdir(parents=True)
    (root / "node_modules" / "left-pad" / "index.js").write_text("/** Pads a string. */\nfunction leftPad(s) {}\n")
    (root / "rust" / "broken.rs").write_text("pub fn broken( {\n")
    return n


def test_docstring_pairs_in_every_language(tmp_path):
    """The trainer's pair assembly on ingested documents as the encoder reads them (location header first):
    each documented function gives (doc-comment summary -> its code without the doc comment)."""
    from strop.index.collection import doc_text
    from strop.index.store import Document
    from strop.trainer.data import Snapshot, docstring_pairs, stripped_texts

    n = write_mixed(tmp_path)
    docs = [to_document(d) for d in parse_tree(tmp_path).docs]
    texts = [doc_text(Document(d["id"], d["text"], metadata=d["metadata"])) for d in docs]
    snap = Snapshot("c", "code", "v1", {}, "", "", 0, [d["id"] for d in docs], np.arange(len(docs)), texts,
                    [d["metadata"] for d in docs], {})
    pairs = docstring_pairs(snap)
    assert len(pairs) == n
    langs = {snap.metadata[p.positive]["language"] for p in pairs}
    assert langs == set(EXT)
    for p in pairs:
        meta = snap.metadata[p.positive]
        header = texts[p.positive].split("\n")[0]
        assert p.positive_text.startswith(header + "\n") and header.startswith(("// ", "# "))
        assert p.query.rstrip(".").lower() in texts[p.positive].lower()  # the summary came from the doc comment
        assert p.query.rstrip(".").lower() not in p.positive_text.lower(), meta  # ... and left the code
        assert "/**" not in p.positive_text and "///" not in p.positive_text and '"""' not in p.positive_text
    assert stripped_texts(snap) == [next((p.positive_text for p in pairs if p.positive == i), t)
                                    for i, t in enumerate(texts)]


def test_mixed_tree_ingest_filter_and_docstrings_job(live_server, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    n = write_mixed(root)
    out = live_server.strop("ingest", "code", str(root), "--collection", "mixed", "--url", live_server.url)
    assert out.returncode == 0, out.stderr
    classes = len(range(0, len(TASKS), PER_FILE))  # each Java file's class is a document too
    assert f"documents={n + classes}" in out.stdout and "vendored_dirs=1" in out.stdout
    assert "skipped_files=2" in out.stdout
    lines = {ln.split(":")[0].strip(): ln for ln in out.stdout.splitlines() if ln.startswith("  ")}
    assert set(lines) == set(EXT) | {"javascript"}
    assert "files=4 definitions=12" in lines["go"] and "unparsable=1" in lines["rust"]
    assert "generated=1" in lines["javascript"]
    with Client(live_server.url, timeout=120) as c:
        for lang in EXT:
            hits = c.search("mixed", "compute something", top_k=50, filter={"language": lang})["hits"]
            assert len(hits) == len(TASKS) + (classes if lang == "java" else 0)
            assert {h["metadata"]["language"] for h in hits} == {lang}
        assert c.search("mixed", "x", top_k=5, filter={"language": "cobol"})["hits"] == []
        job = c.submit_job("mixed", {"train": {"source": "docstrings"}, "epochs": 1, "batch_size": 8,
                                     "learning_rate": 1e-3, "mining": {"negatives_per_query": 0},
                                     "gate": {"metric": "mrr@10", "min_delta": -1.0}})
        final = c.follow_job(job["job_id"], poll_s=0.5, timeout=600)
    assert final["state"] == "succeeded", final
    pairs = final["details"]["pairs"]
    assert pairs["source"] == "docstrings" and pairs["train_pairs"] + pairs["eval_pairs"] == n
    assert pairs["eval_pairs"] >= PER_FILE and pairs["eval_pairs"] % PER_FILE == 0  # whole files held out
    assert pairs["eval_text_overrides"] == pairs["eval_pairs"]  # evaluated without their doc comments
    assert final["metrics"]["after"]["n"] == pairs["eval_pairs"]


def test_archive_upload_counts_per_language(make_client, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    n = write_mixed(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    c = make_client()
    assert c.post("/collections", json={"name": "zipped", "modality": "code"}).status_code == 201
    body = c.post("/collections/zipped/ingest/code", content=buf.getvalue()).json()
    assert body["documents"] == n + 4 and body["vendored_dirs"] == ["node_modules"]  # + the Java classes
    assert body["languages"]["java"]["definitions"] == 4 + len(TASKS)  # the four classes and their methods
    assert body["languages"]["javascript"] == {"files": 1, "definitions": 0, "unparsable": 0, "generated": 1,
                                               "too_large": 0, "undecodable": 0, "definitions_too_large": 0}
    assert [s["path"] for s in body["skipped_files"]] == ["rust/broken.rs", "web/app.min.js"]
    doc = c.get("/collections/zipped/documents/go/tasks0.go:ShippingCost").json()
    assert doc["metadata"]["language"] == "go" and doc["metadata"]["kind"] == "function"
    # asked to, the upload reads generated files and vendored folders too
    r = c.post("/collections/zipped/ingest/code?include_generated=true", content=buf.getvalue())
    assert r.status_code == 200 and r.json()["upserted"] == 2 and r.json()["vendored_dirs"] == []
    assert c.get("/collections/zipped/documents/node_modules/left-pad/index.js:leftPad").status_code == 200
