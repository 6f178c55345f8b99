"""In-process screen: how strong a *fine-tuned* bi-encoder teacher could be, against the student.

Distillation needs a teacher that out-ranks the fine-tuned student on pairs it has not trained on.
This trains each named bi-encoder on the same training pairs and mined negatives as the
hard-negatives row of ``bench.distill`` (1 epoch, lr 1e-4, batch 32, negatives mined by the base
MiniLM from ranks 0-50 with margin 0.05, random batches), with ``strop.trainer.train.fine_tune``
exactly as a job's train stage does, then ranks the held-out queries over the same corpus.
``--fraction`` trains on the first part of the pairs only: what one fold model of a K-fold teacher
sees is a fraction (K-1)/K. Rows: each model zero-shot and fine-tuned, and the fine-tuned models
fused (cos_a + w cos_b, w cross-fitted on halves of the queries).

    python -m bench.teacherscreen --set stdlib --train 1000 --test 400 --corpus 4000 --negatives 2 \\
        --models default,/models/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.distill import BASE_MINING, load_set
from strop.trainer.contract import ENCODER_LR, JobSpec
from strop.trainer.data import Pair
from strop.trainer.mining import mine
from strop.trainer.train import fine_tune, inference_encoder, load_model

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def mrr10(scores: np.ndarray, gold: np.ndarray) -> float:
    ranks = (scores > scores[np.arange(len(gold)), gold][:, None]).sum(1)
    return float(np.where(ranks < 10, 1.0 / (ranks + 1), 0.0).mean())


def cross_fitted(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> tuple[float, list[float]]:
    half = len(gold) // 2
    halves = (np.arange(half), np.arange(half, len(gold)))
    total, chosen = 0.0, []
    for fit, held in (halves, halves[::-1]):
        w = max(WEIGHTS, key=lambda w: mrr10(a[fit] + w * b[fit], gold[fit]))
        chosen.append(w)
        total += mrr10(a[held] + w * b[held], gold[held]) * len(held)
    return total / len(gold), chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["stdlib", "debian"], default="stdlib")
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--corpus", type=int, default=4000)
    ap.add_argument("--negatives", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=1.0, help="train on this first part of the pairs")
    ap.add_argument("--models", default="default,/models/all-mpnet-base-v2",
                    help="comma-separated: 'default' (the packaged MiniLM-L6) or a sentence-transformers path")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(42)
    d = load_set(args.set, args.train, args.test, args.corpus)
    corpus, train, test = d["corpus"], d["train"], d["test"]
    row = {c["id"]: i for i, c in enumerate(corpus)}
    texts = [c["text"] for c in corpus]
    gold = np.array([row[p["positive_id"]] for p in test])
    pairs = [Pair(p["query"], row[p["positive_id"]]) for p in train]
    spec = JobSpec.model_validate({"train": {"pairs": [{"query": "x", "positive_id": "x"}]}, "batch_size": 32,
                                   "learning_rate": ENCODER_LR, "epochs": args.epochs, "max_steps": 100000,
                                   "mining": {**BASE_MINING, "negatives_per_query": args.negatives}})
    t = time.perf_counter()
    base = inference_encoder(load_model("default", "cpu", spec.max_seq_length), "base")
    negatives, _ = mine(base.encode([p.query for p in pairs]).vectors, base.encode(texts).vectors, texts, pairs,
                        spec.mining)
    n = int(round(len(pairs) * args.fraction))
    print(f"{args.set}: train {n} of {len(pairs)}, test {len(test)}, corpus {len(texts)}; mined in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    rows, tuned = [], {}
    for name in args.models.split(","):
        model = load_model(name, "cpu", spec.max_seq_length)
        for label in ("zero-shot", "fine-tuned"):
            t = time.perf_counter()
            out = None
            if label == "fine-tuned":
                out = fine_tune(model, pairs[:n], texts, negatives[:n], spec)
            enc = inference_encoder(model, name)
            s = enc.encode([p["query"] for p in test]).vectors @ enc.encode(texts).vectors.T
            if label == "fine-tuned":
                tuned[name] = s
            rows.append((f"{name} {label}" + (f" ({out['steps']} steps)" if out else ""), mrr10(s, gold),
                         time.perf_counter() - t))
            print(rows[-1], flush=True)
    names = list(tuned)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            m, w = cross_fitted(tuned[a], tuned[b], gold)
            rows.append((f"{a} + w x {b}, both fine-tuned (w {w})", m, 0.0))
            print(rows[-1], flush=True)
    print(f"\n| {args.set} | MRR@10 | s |\n|---|---|---|")
    for label, m, s in rows:
        print(f"| {label} | {m:.4f} | {s:.0f} |")


if __name__ == "__main__":
    main()
