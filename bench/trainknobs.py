"""Screen training knobs in-process: fine-tune MiniLM on the stdlib pairs, score the test corpus.

A cheaper screen than bench/codesearch.py (no server, no 14k-function re-encode, in-batch
negatives only): each spec trains with ``strop.trainer.train.fine_tune`` exactly as a job's train
stage does, then the test queries are scored against the 1,159 test functions, embedded in
bf16 at several serving sequence lengths. One row per spec; a knob that looks good here still
has to win in bench/codesearch.py, through the REST API, over seeds.

    python -m bench.trainknobs '{}' '{"batch_size": 64}' '{"batch_size": 64, "learning_rate": 2e-4}'
    python -m bench.trainknobs --zero-shot             # the base encoder only
    python -m bench.trainknobs --zero-shot --context   # code embedded after its location comment
    python -m bench.trainknobs '{}' '{"mining": {"neighbour_group": 8}}'   # batches of neighbouring positives
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from bench.datasets import stdlib_pairs
from strop.index.code.parse import context_header
from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair
from strop.trainer.train import fine_tune, load_model


def mrr_at_10(model, queries: list[str], docs: list[str], targets: list[int], seq: int) -> float:
    m = copy.deepcopy(model).eval().to(torch.bfloat16)
    m.max_seq_length = seq
    with torch.inference_mode():
        d = m.encode(docs, batch_size=16, normalize_embeddings=True)
        q = m.encode(queries, batch_size=32, normalize_embeddings=True)
    s = q @ d.T
    ranks = (s > s[np.arange(len(targets)), targets][:, None]).sum(1)
    return float(np.where(ranks < 10, 1.0 / (ranks + 1), 0.0).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="*", help="JSON job-spec overrides, one row each (no mined negatives; mining.neighbour_group applies)")
    ap.add_argument("--seqs", default="96,128,256", help="serving sequence lengths to score")
    ap.add_argument("--zero-shot", action="store_true")
    ap.add_argument("--context", action="store_true",
                    help="embed (and train on) each function after its location comment, as strop does for "
                         "documents with module/qualname metadata")
    args = ap.parse_args()
    seqs = [int(s) for s in args.seqs.split(",")]
    data = stdlib_pairs()
    corpus = data["corpus_all"]
    row = {c["id"]: k for k, c in enumerate(corpus)}
    def embedded(c: dict) -> str:
        header = context_header(data["contexts"][c["id"]]) if args.context else None
        return f"{header}\n{c['text']}" if header else c["text"]

    texts = [embedded(c) for c in corpus]
    pairs = [Pair(query=p["query"], positive=row[p["positive_id"]]) for p in data["train"]]
    test_docs = data["corpus_test"]
    col = {c["id"]: k for k, c in enumerate(test_docs)}
    queries = [p["query"] for p in data["test"]]
    targets = [col[p["positive_id"]] for p in data["test"]]
    docs = [embedded(c) for c in test_docs]
    print(f"train pairs {len(pairs)}, test queries {len(queries)}, test corpus {len(docs)}", flush=True)
    results = []
    base_pos = None
    if args.zero_shot:
        model = load_model(None)
        results.append(("zero-shot", "-", "-", {s: mrr_at_10(model, queries, docs, targets, s) for s in seqs}))
    for raw in args.specs:
        spec = JobSpec.model_validate({"train": {"pairs": [{"query": "-", "positive_id": "-"}]}, **json.loads(raw)})
        model = load_model(None, "cpu", spec.max_seq_length)
        t = time.perf_counter()
        pos_vecs = None
        if spec.mining.group_for("code") > 1:  # what a job takes from the live index: the base model's vectors
            if base_pos is None:
                base_pos = load_model(None).encode([texts[p.positive] for p in pairs], batch_size=32,
                                                   normalize_embeddings=True)
            pos_vecs = base_pos
        spec.mining.neighbour_group = spec.mining.group_for("code")  # as a job on a code collection
        out = fine_tune(model, pairs, texts, [[] for _ in pairs], spec, positive_vectors=pos_vecs)
        wall = time.perf_counter() - t
        results.append((raw, out["steps"], round(wall), {s: mrr_at_10(model, queries, docs, targets, s) for s in seqs}))
        print(results[-1], flush=True)
    print("\n| spec | steps | train s | " + " | ".join(f"MRR@10 served at {s}" for s in seqs) + " |")
    print("|---|---|---|" + "---|" * len(seqs))
    for raw, steps, wall, m in results:
        print(f"| `{raw}` | {steps} | {wall} | " + " | ".join(f"{m[s]:.4f}" for s in seqs) + " |")


if __name__ == "__main__":
    main()
