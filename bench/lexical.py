"""Lexical fusion on the stdlib code split: MRR@10 of dense search alone and fused with BM25.

For each encoder (the base MiniLM, or fine-tuned encoder directories such as a codesearch job's
``versions/vNNNN/encoder``), a live `strop serve` indexes the test corpus (1,159 functions) and
all 14,315 functions, and evaluates the 1,159 test queries with ``"lexical": w`` for each
weight. The weight is chosen on *training* queries with the base encoder (which never saw
them), then read off the test rows.

    python -m bench.lexical --encoders base --weights 0,0.05,0.1,0.2 --select
    python -m bench.lexical --encoders base,/tmp/x/encoder --weights 0,0.1
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from bench.codesearch import evaluate, start_server
from bench.datasets import stdlib_pairs
from strop.client import Client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoders", default="base", help="comma list: 'base' (the packaged MiniLM) or directories")
    ap.add_argument("--weights", default="0,0.05,0.1,0.2")
    ap.add_argument("--select", action="store_true", help="also score 1,000 training queries with the base "
                    "encoder on all functions, to pick the weight without the test queries")
    ap.add_argument("--no-all", action="store_true", help="skip the 14k all-functions corpus")
    ap.add_argument("--context", action="store_true", help="send each function's module/qualname metadata, so "
                    "it is embedded (and BM25-scored) after its location comment, as `strop ingest code` stores it")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    data = stdlib_pairs()
    test_pairs = [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in data["test"]]
    train_pairs = [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in data["train"][:1000]]
    tmp = Path(tempfile.mkdtemp(prefix="strop-lexical-"))
    server, url = start_server(tmp / "data")
    rows = []
    try:
        c = Client(url, timeout=3600)
        for n, enc in enumerate(args.encoders.split(",")):
            corpora = [("test corpus", data["corpus_test"])] + ([] if args.no_all else [("all", data["corpus_all"])])
            if args.context:
                corpora = [(label, [{**d, "metadata": data["contexts"][d["id"]]} for d in docs]) for label, docs in corpora]
            for label, docs in corpora:
                name = f"e{n}-{'test' if label == 'test corpus' else 'all'}"
                c.create_collection(name, modality="code", encoder=None if enc == "base" else enc)
                t = time.perf_counter()
                c.upsert(name, docs)
                print(f"{enc} {label}: {len(docs)} docs in {time.perf_counter() - t:.0f}s", flush=True)
                sets = [("test queries", test_pairs)]
                if args.select and enc == "base" and label == "all":
                    sets.append(("1,000 train queries", train_pairs))
                for qlabel, pairs in sets:
                    for w in weights:
                        t = time.perf_counter()
                        m = evaluate(c, name, pairs, lexical=w)
                        rows.append((enc, label, qlabel, w, m, time.perf_counter() - t))
                        print(rows[-1][:4], round(m["mrr@10"], 4), flush=True)
                c.delete_collection(name)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print("\n| encoder | corpus | queries | lexical | MRR@10 | R@1 | R@10 | evaluate s |")
    print("|---|---|---|---|---|---|---|---|")
    for enc, label, qlabel, w, m, secs in rows:
        print(f"| {enc} | {label} | {qlabel} | {w:g} | {m['mrr@10']:.4f} | {m['recall@1']:.4f} | "
              f"{m['recall@10']:.4f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
