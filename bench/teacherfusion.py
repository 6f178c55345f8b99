"""Screen teacher fusion in-process: does a second, stronger bi-encoder lift a fine-tuned student?

``"rerank": true`` replaces the student's order with the teacher's. When the teacher is a
zero-shot model that is *weaker* on the collection than the fine-tuned student (all-mpnet-base-v2
against a MiniLM fine-tuned on the collection), replacing loses; adding the teacher's score to the
student's cosine may still win, because the two models make different mistakes. This screen asks
how much, without a server:

1. MiniLM is fine-tuned on the stdlib training pairs exactly as a job's train stage does
   (``strop.trainer.train.fine_tune``, in-batch negatives, the job defaults; documents carry their
   location header as strop embeds them); the model is cached under bench/.cache/teacherfusion/.
2. The student (served precision and length) and the teacher embed the test queries and the
   1,159 test functions (cached). Each query's student top ``--depth`` candidates are reordered by

       fused = student cosine + w_lex * lexical + w_t * teacher cosine

   (``lexical`` is strop's BM25 fusion part, ``strop.index.lexical.fuse``).
3. Weights are chosen by two-fold cross-fitting over modules: the test queries are split into two
   halves by module, the weight that maximises MRR@10 on one half is scored on the other, and the
   two held-out halves are pooled. The full grid is printed too (the in-sample best, for reading).

    python -m bench.teacherfusion --teacher /models/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np

from bench.datasets import stdlib_pairs
from strop.index import lexical
from strop.index.code.parse import context_header

CACHE = Path(__file__).parent / ".cache" / "teacherfusion"


def mrr10(ranks: np.ndarray) -> np.ndarray:
    """Per-query reciprocal rank (0 beyond rank 10, or when the positive is not among the candidates)."""
    return np.where((ranks >= 0) & (ranks < 10), 1.0 / (ranks + 1), 0.0)


def student(spec: dict, texts: list[str], pairs: list, key: str):
    import torch

    from strop.trainer.contract import JobSpec
    from strop.trainer.train import fine_tune, load_model

    path = CACHE / f"student-{key}"
    if (path / "modules.json").exists():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device="cpu")
        model.serving_max_seq_length = model.max_seq_length
        return model, 0.0
    job = JobSpec.model_validate({"train": {"pairs": [{"query": "-", "positive_id": "-"}]}, **spec})
    torch.manual_seed(job.seed)
    model = load_model(None, "cpu", job.max_seq_length)
    t = time.perf_counter()
    fine_tune(model, pairs, texts, [[] for _ in pairs], job)
    wall = time.perf_counter() - t
    serving = model.max_seq_length
    model.max_seq_length = model.serving_max_seq_length
    model.save(str(path))
    model.max_seq_length = serving
    return model, wall


def embed(encoder, texts: list[str], name: str) -> np.ndarray:
    path = CACHE / f"{name}-{hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:12]}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    vecs = encoder.encode(texts, 32).vectors.astype(np.float32)
    print(f"embedded {len(texts)} texts with {name} in {time.perf_counter() - t:.0f}s", flush=True)
    np.save(path, vecs)
    return vecs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True, help="a sentence-transformers directory (e.g. all-mpnet-base-v2)")
    ap.add_argument("--spec", default="{}", help="JSON job-spec overrides for the student's fine-tuning")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--lexical", default="0,0.05,0.1,0.15")
    ap.add_argument("--teacher-weights", default="0,0.1,0.2,0.3,0.5,0.75,1,1.5")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    from strop.index.encoder import Encoder
    from strop.trainer.data import Pair
    from strop.trainer.train import inference_encoder

    data = stdlib_pairs()

    def embedded(c: dict) -> str:
        header = context_header(data["contexts"][c["id"]])
        return f"{header}\n{c['text']}" if header else c["text"]

    corpus = data["corpus_all"]
    row = {c["id"]: k for k, c in enumerate(corpus)}
    pairs = [Pair(query=p["query"], positive=row[p["positive_id"]]) for p in data["train"]]
    spec = json.loads(args.spec)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    model, train_s = student(spec, [embedded(c) for c in corpus], pairs, key)
    print(f"student ready (trained {train_s:.0f}s; cached as student-{key})", flush=True)

    docs = [embedded(c) for c in data["corpus_test"]]
    col = {c["id"]: k for k, c in enumerate(data["corpus_test"])}
    queries = [p["query"] for p in data["test"]]
    target = np.array([col[p["positive_id"]] for p in data["test"]])
    modules = [p["module"] for p in data["test"]]
    s_enc = inference_encoder(model)
    sq, sd = embed(s_enc, queries, f"student-{key}-q"), embed(s_enc, docs, f"student-{key}-d")
    t_enc = Encoder.load(args.teacher)
    tname = hashlib.sha1(args.teacher.encode()).hexdigest()[:8]
    tq, td = embed(t_enc, queries, f"teacher-{tname}-q"), embed(t_enc, docs, f"teacher-{tname}-d")

    s_all = sq @ sd.T
    cand = np.argsort(-s_all, axis=1, kind="stable")[:, : args.depth]
    s = np.take_along_axis(s_all, cand, 1)
    t = np.einsum("qd,qkd->qk", tq, td[cand])
    lex = np.stack([lexical.fuse(q, [docs[j] for j in c], np.zeros(len(c)), 1.0)[1] for q, c in zip(queries, cand, strict=True)])
    hit = cand == target[:, None]

    def per_query(w_lex: float, w_t: float) -> np.ndarray:
        fused = s + w_lex * lex + w_t * t
        order = np.argsort(-fused, axis=1, kind="stable")
        pos = np.take_along_axis(hit, order, 1)
        ranks = np.where(pos.any(1), pos.argmax(1), -1)
        return mrr10(ranks)

    grid = list(itertools.product([float(x) for x in args.lexical.split(",")],
                                  [float(x) for x in args.teacher_weights.split(",")]))
    scores = {g: per_query(*g) for g in grid}
    teacher_only = mrr10(np.where(np.take_along_axis(hit, np.argsort(-t, 1, kind="stable"), 1).any(1),
                                  np.take_along_axis(hit, np.argsort(-t, 1, kind="stable"), 1).argmax(1), -1))
    full_t = tq @ td.T
    zs_ranks = (full_t > full_t[np.arange(len(target)), target][:, None]).sum(1)

    half = np.array([int(hashlib.sha1(m.encode()).hexdigest(), 16) % 2 for m in modules])
    crossfit = np.zeros(len(queries))
    chosen = []
    for h in (0, 1):
        fit, held = half != h, half == h
        best = max(grid, key=lambda g: (scores[g][fit].mean(), -g[1], -g[0]))
        chosen.append(best)
        crossfit[held] = scores[best][held]

    print(f"\nstdlib test: {len(queries)} queries, {len(docs)} functions, depth {args.depth}; "
          f"halves by module: {int((half == 0).sum())} / {int((half == 1).sum())} queries")
    print("\n| ordering | MRR@10 |\n|---|---|")
    print(f"| teacher alone, whole test corpus (zero-shot) | {mrr10(zs_ranks).mean():.4f} |")
    print(f"| student alone | {scores[(0.0, 0.0)].mean():.4f} |")
    print(f"| teacher reorders the student's top {args.depth} (`rerank`) | {teacher_only.mean():.4f} |")
    for w_lex in sorted({g[0] for g in grid}):
        if w_lex:
            print(f"| student + lexical {w_lex} | {scores[(w_lex, 0.0)].mean():.4f} |")
    print(f"| cross-fitted fusion (weights chosen per half: {chosen}) | **{crossfit.mean():.4f}** |")
    w_ts = sorted({g[1] for g in grid})
    print("\nIn-sample grid (rows: lexical weight, columns: teacher weight):\n")
    print("| lexical \\ teacher | " + " | ".join(str(w) for w in w_ts) + " |")
    print("|---|" + "---|" * len(w_ts))
    for w_lex in sorted({g[0] for g in grid}):
        print(f"| {w_lex} | " + " | ".join(f"{scores[(w_lex, w)].mean():.4f}" for w in w_ts) + " |")


if __name__ == "__main__":
    main()
