"""In-process screen of the teacher (cross-encoder) recipe on Debian descriptions (or ``--set stdlib``).

Trains ``strop.trainer.teacher.job.train_cross_encoder`` exactly as a teacher job does (a fresh
cross-encoder on the packaged MiniLM whose head starts at zero, learning a correction over the prior:
the bi-encoder whose candidates it reranks; listwise over the positive and 3 negatives mined by the
base bi-encoder) for each spec, then reranks the base bi-encoder's top 20 of held-out queries, with
the correction's weight cross-fitted as the teacher job fits it. A minutes-long screen instead of a
30-minute REST teacher job.

    python -m bench.teacherknobs '{}' '{"head_lr": 1e-3}' '{"learning_rate": 1e-4}'
    python -m bench.teacherknobs --student '{"head_lr": 1e-3}'   # against the fine-tuned bi-encoder
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.distill import load_set
from strop.index.encoder import Encoder
from strop.index.teacher import BiEncoderScorer, CrossEncoderScorer
from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair
from strop.trainer.mining import mine
from strop.trainer.teacher.job import fit_logit_weight, prior_vectors, train_cross_encoder
from strop.trainer.train import fine_tune, inference_encoder, load_model


def mrr10(ranked: list[list[int]], gold: list[int]) -> float:
    total = 0.0
    for row, g in zip(ranked, gold, strict=True):
        if g in row[:10]:
            total += 1.0 / (row.index(g) + 1)
    return total / len(gold)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+", help="JSON: job fields (learning_rate, max_steps...) plus head_lr")
    ap.add_argument("--set", choices=["debian", "stdlib"], default="debian")
    ap.add_argument("--train", type=int, default=640)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--corpus", type=int, default=4000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--student", action="store_true",
                    help="first fine-tune the bi-encoder on the same pairs (a default encoder job, in-process) and "
                         "rerank its candidates: does the teacher beat the fine-tuned student?")
    args = ap.parse_args()
    torch.set_num_threads(2)
    d = load_set(args.set, args.train, args.test, args.corpus)  # the same subsets bench.distill uses
    train, test, corpus = d["train"], d["test"], d["corpus"]
    row = {c["id"]: i for i, c in enumerate(corpus)}
    texts = [c["text"] for c in corpus]
    enc = Encoder.load(None)
    t = time.perf_counter()
    emb = enc.encode(texts).vectors
    qtr = enc.encode([p["query"] for p in train]).vectors
    qte = enc.encode([p["query"] for p in test]).vectors
    print(f"encoded {len(texts)} docs in {time.perf_counter() - t:.0f}s", flush=True)
    pairs, negatives = [], []
    for p, q in zip(train, qtr, strict=True):
        pos = row[p["positive_id"]]
        order = np.argsort(-(emb @ q))[:10]
        pairs.append(Pair(p["query"], pos))
        negatives.append([int(r) for r in order if r != pos][:3])
    gold = [row[p["positive_id"]] for p in test]
    base_name = "base bi-encoder"
    if args.student:  # the teacher against the *fine-tuned* bi-encoder
        job = JobSpec.model_validate({"train": {"pairs": [{"query": "x", "positive_id": "x"}]}})
        job = job.model_copy(update={"mining": job.mining.model_copy(  # the modality's default, as a job resolves it
            update={"neighbour_group": job.mining.group_for(d["modality"])})})
        mined, _ = mine(qtr, emb, texts, pairs, job.mining)
        student = load_model(None, "cpu", job.max_seq_length)
        t = time.perf_counter()
        out = fine_tune(student, pairs, texts, mined, job, positive_vectors=emb[[p.positive for p in pairs]])
        enc = inference_encoder(student, "student")
        emb = enc.encode(texts).vectors
        qte = enc.encode([p["query"] for p in test]).vectors
        base_name = f"fine-tuned bi-encoder (1 mined negative, {out['steps']} steps)"
        print(f"student trained in {time.perf_counter() - t:.0f}s", flush=True)
    cands = [[int(r) for r in np.argsort(-(emb @ q))[: args.depth]] for q in qte]
    rows = [(base_name, mrr10(cands, gold), None, 0.0, None)]
    print(rows[-1], flush=True)
    for raw in args.specs:
        spec_d = json.loads(raw)
        head_lr = spec_d.pop("head_lr", None)
        spec = JobSpec.model_validate({"kind": "teacher", "train": {"pairs": [{"query": "x", "positive_id": "x"}]},
                                       **spec_d})
        ce = CrossEncoderScorer.init_from(None, max_length=args.max_length)
        ce.zero_head()  # over the bi-encoder whose candidates it reranks, as a teacher job does
        ce.prior, ce.prior_scale = BiEncoderScorer(enc, "prior"), 1.0 / spec.loss.temperature
        prior = prior_vectors(enc, enc.encode([p.query for p in pairs]).vectors, emb, pairs, texts, ce.prior_scale)
        t = time.perf_counter()
        out = train_cross_encoder(ce, pairs, texts, negatives, spec, lambda pr: None, lambda: False, head_lr=head_lr,
                                  prior=prior)
        secs = time.perf_counter() - t
        ranked, parts = [], []
        for q, cand in zip(test, cands, strict=True):
            logits, prior_part = ce.score_parts([(q["query"], texts[r]) for r in cand])
            assert prior_part is not None  # the teacher has its prior
            parts.append((logits, prior_part))
            s = logits + prior_part  # the correction at full weight
            ranked.append([cand[i] for i in np.argsort(-s, kind="stable")])
        # what the teacher job reports: the correction's weight chosen on held-out halves
        _, held, fit = fit_logit_weight(parts, cands, [{g} for g in gold])
        fitted = (held["mrr@10"], fit["chosen_per_half"], fit["mrr@10_by_weight"])
        rows.append((raw, mrr10(ranked, gold), out["loss"], secs, fitted))
        print(rows[-1], f"steps {out['steps']}", flush=True)
    print(f"\n| spec | rerank MRR@10 (top {args.depth}) | correction weight cross-fitted (w per half) "
          "| final loss (EMA) | train s |\n|---|---|---|---|---|")
    for name, m, loss, secs, fitted in rows:
        f = "-" if fitted is None else f"{fitted[0]:.4f} (w {', '.join(f'{w:g}' for w in fitted[1])})"
        print(f"| {name} | {m:.4f} | {f} | {'-' if loss is None else f'{loss:.3f}'} | {secs:.0f} |")
        if fitted is not None and fitted[2]:
            print(f"|  MRR@10 of all queries by correction weight: {fitted[2]} | | | | |")


if __name__ == "__main__":
    main()
