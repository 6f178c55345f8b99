"""Code search beyond Python: Go, JavaScript, Java and Rust, each trained on its own doc comments.

Per language, on real code nobody here wrote:

1. parse the whole corpus as `strop ingest code` does (tree-sitter; generated, minified and vendored
   files skipped) and time it: definitions found, files skipped per reason;
2. keep a sample of whole files, up to ``--max-defs`` definitions (2 CPU cores), and upload it to a
   code collection of its own on a live `strop serve`;
3. submit a docstrings job (``train.source: "docstrings"``: doc-comment summary -> the code without
   its doc comment; 20% of the files held out by path, the gate off). Its ``before`` metrics are the
   zero-shot MiniLM on the held-out definitions, searched without their doc comments among every
   definition of the sample; ``after`` the same with the trained encoder.

Corpora (Debian and npm packages; ``--roots`` points elsewhere):

    apt-get download golang-1.19-src openjdk-17-source librust-tokio-dev
    for f in *.deb; do dpkg -x $f /work/corpora/root; done
    unzip -q /work/corpora/root/usr/lib/jvm/openjdk-17/lib/src.zip -d /work/corpora/jdk
    npm pack lodash && mkdir -p /work/corpora/lodash && tar xzf lodash-*.tgz -C /work/corpora/lodash

    python -m bench.codesearch_multi                          # every language found (about 40 min on 2 cores)
    python -m bench.codesearch_multi --languages go --quick   # smoke: 300 definitions, 5 steps
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench._util import log, machine_line, omp_passive, table

CORPORA: dict[str, tuple[str, str]] = {  # language -> (label, default root)
    "go": ("Go 1.19 standard library (golang-1.19-src)", "/work/corpora/root/usr/share/go-1.19/src"),
    "javascript": ("lodash 4 (npm), one module per function", "/work/corpora/lodash/package"),
    "java": ("OpenJDK 17 java.base (openjdk-17-source)", "/work/corpora/jdk/java.base"),
    "rust": ("tokio 1.24 crate (librust-tokio-dev)", "/work/corpora/root/usr/share/cargo/registry/tokio-1.24.2"),
}


def sample_files(docs: list[Any], max_defs: int, seed: int) -> list[Any]:
    """Whole files in a seeded random order until ``max_defs`` definitions (held-out-by-path stays meaningful)."""
    by_path: dict[str, list[Any]] = defaultdict(list)
    for d in docs:
        by_path[d.metadata["path"]].append(d)
    paths = sorted(by_path)
    random.Random(seed).shuffle(paths)
    out: list[Any] = []
    for p in paths:
        if len(out) + len(by_path[p]) > max_defs and out:
            continue
        out += by_path[p]
        if len(out) >= max_defs:
            break
    return out


def run_language(c: Any, language: str, root: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.codesearch import run_job
    from strop.index.code.parse import parse_tree
    from strop.index.code.sync import to_document

    t = time.perf_counter()
    parsed = parse_tree(root, languages=[language])
    parse_s = time.perf_counter() - t
    counts = parsed.summary().get(language, {})
    log(f"{language}: parsed {counts} in {parse_s:.1f}s; vendored folders left out: {parsed.vendored[:5]}")
    docs = sample_files(parsed.docs, args.max_defs, args.seed)
    name = f"multi-{language}"
    c.create_collection(name, modality="code")
    t = time.perf_counter()
    c.upsert(name, [to_document(d) for d in docs])
    upload_s = time.perf_counter() - t
    log(f"{language}: uploaded {len(docs)} definitions from {len({d.metadata['path'] for d in docs})} files "
        f"in {upload_s:.0f}s")
    if args.encode_rate:
        return encode_rate_row(language, [to_document(d) for d in docs], upload_s)
    body: dict[str, Any] = {"train": {"source": "docstrings"}, "batch_size": 32, "learning_rate": args.lr,
                            "epochs": args.epochs, "seed": args.seed,
                            "gate": {"metric": "mrr@10", "min_delta": -1.0}}
    if args.max_steps:
        body["max_steps"] = args.max_steps
    t = time.perf_counter()
    job = run_job(c, body, name)
    job_s = time.perf_counter() - t
    if job["state"] != "succeeded":
        raise RuntimeError(f"{language}: job {job['state']}: {job.get('error')}")
    pairs = job["details"]["pairs"]
    before, after = job["metrics"]["before"], job["metrics"]["after"]
    row = {"language": language, "corpus": CORPORA[language][0], "files": counts.get("files", 0),
           "found": counts.get("definitions", 0), "parse_s": parse_s,
           "skipped": {k: v for k, v in counts.items() if k not in ("files", "definitions") and v},
           "vendored": len(parsed.vendored), "sample": len(docs), "train_pairs": pairs["train_pairs"],
           "eval_pairs": pairs["eval_pairs"], "before": before, "after": after, "job_s": job_s,
           "upload_s": upload_s, "stages": job["details"].get("stage_seconds", {})}
    print(json.dumps(row), flush=True)  # whole rows in the log even when a later language fails
    return row


def encode_rate_row(language: str, documents: list[dict], upload_s: float) -> dict[str, Any]:
    """Ingest over REST against plain encode: the same texts, each with its location header, encoded in process
    by the same packaged MiniLM in batches of 32 (bench.serving's "plain encode"), right after the upload."""
    from strop.index.code.parse import context_header
    from strop.index.encoder import Encoder

    texts = [(h + "\n" if (h := context_header(d.get("metadata"))) else "") + d["text"] for d in documents]
    enc = Encoder.load("all-MiniLM-L6-v2")
    t = time.perf_counter()
    for i in range(0, len(texts), 32):
        enc.encode(texts[i:i + 32])
    plain_s = time.perf_counter() - t
    row = {"language": language, "docs": len(texts), "ingest_docs_s": len(texts) / upload_s,
           "plain_docs_s": len(texts) / plain_s}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--languages", default=",".join(CORPORA), help="comma-separated, of " + ", ".join(CORPORA))
    ap.add_argument("--roots", default="{}", help='JSON {"go": "/path/to/src", ...} overriding the corpus roots')
    ap.add_argument("--max-defs", type=int, default=3000, help="definitions per language kept (whole files)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="300 definitions and 5 steps per language")
    ap.add_argument("--omp-default", action="store_true", help="keep libgomp's spin-waiting (bench._util)")
    ap.add_argument("--encode-rate", action="store_true", help="upload only, then encode the same texts in process: "
                    "ingest docs/s against plain encode docs/s")
    args = ap.parse_args()
    if args.quick:
        args.max_defs, args.max_steps = 300, 5
    roots = {lang: root for lang, (_, root) in CORPORA.items()} | json.loads(args.roots)
    languages = [lang for lang in args.languages.split(",") if lang]
    missing = [lang for lang in languages if not Path(roots[lang]).is_dir()]
    for lang in missing:
        log(f"{lang}: no corpus at {roots[lang]}; skipped (see the module docstring for how to get it)")
    languages = [lang for lang in languages if lang not in missing]

    from bench.codesearch import start_server
    from strop.client import Client

    print(machine_line(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="strop-codesearch-multi-"))
    server, url = start_server(tmp / "data")
    rows = []
    try:
        c = Client(url, timeout=3600)
        for lang in languages:
            rows.append(run_language(c, lang, roots[lang], args))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print()
    if args.encode_rate:
        print(table(["language", "definitions", "ingest over REST docs/s", "plain encode docs/s", "ratio"],
                    [[r["language"], r["docs"], f"{r['ingest_docs_s']:.1f}", f"{r['plain_docs_s']:.1f}",
                      f"{r['ingest_docs_s'] / r['plain_docs_s']:.2f}"] for r in rows]))
        return
    print(table(
        ["language", "corpus", "files", "definitions found", "parse s (whole corpus)", "skipped files",
         "definitions kept (sample)", "train / eval pairs", "MRR@10 zero-shot", "MRR@10 after job", "gain (points)",
         "R@10 zero-shot / after", "job s"],
        [[r["language"], r["corpus"], r["files"], r["found"], round(r["parse_s"], 1),
          ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "-", r["sample"],
          f"{r['train_pairs']} / {r['eval_pairs']}", f"{r['before']['mrr@10']:.4f}", f"{r['after']['mrr@10']:.4f}",
          f"{100 * (r['after']['mrr@10'] - r['before']['mrr@10']):+.1f}",
          f"{r['before']['recall@10']:.3f} / {r['after']['recall@10']:.3f}", round(r["job_s"])] for r in rows]))


if __name__ == "__main__":
    omp_passive()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
