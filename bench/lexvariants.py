"""Screen variants of lexical fusion in-process, on the stdlib split with location headers.

bench/lexical.py measures strop's fusion through the REST API; this screen asks whether another
BM25 would do better, without a server: the base MiniLM embeds the test queries, 1,000 training
queries, the 1,159 test functions and all 14,315 functions once (bf16, cached under
bench/.cache/lexvariants/), the dense top 50 of each query is fused exactly as
``strop.index.lexical.fuse`` does, and only the BM25 part changes:

* ``candidates``: strop's BM25, document frequencies over the 50 candidates;
* ``corpus``: document frequencies and average length over the whole corpus;
* ``stemmed``: strop's BM25 over Snowball-stemmed tokens (needs ``pip install snowballstemmer``).

The weight is to be chosen on the training queries (all functions), then read off the test rows.

    python -m bench.lexvariants --weights 0.05,0.1,0.15,0.2,0.3
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.datasets import stdlib_pairs
from strop.index import lexical
from strop.index.code.parse import context_header

CACHE = Path(__file__).parent / ".cache" / "lexvariants"


def corpus_bm25(df: Counter, n: int, avg: float, k1: float = 1.2, b: float = 0.75) -> Callable:
    def score(query: str, cand: list[list[str]]) -> np.ndarray:
        q = set(lexical.tokens(query))
        out = np.zeros(len(cand), np.float32)
        for i, toks in enumerate(cand):
            for term, f in Counter(t for t in toks if t in q).items():
                idf = math.log(1.0 + (n - df.get(term, 0) + 0.5) / (df.get(term, 0) + 0.5))
                out[i] += idf * f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * len(toks) / avg))
        return out
    return score


def stemmed_tokens() -> Callable[[str], list[str]] | None:
    try:
        import snowballstemmer
    except ImportError:
        return None
    stem = lru_cache(maxsize=None)(snowballstemmer.stemmer("english").stemWord)
    plain = lexical.tokens  # bound now: bm25_variant swaps the module's `tokens` for this function
    return lambda text: [stem(t) for t in plain(text)]


def bm25_variant(name: str, query: str, texts: list[str], toks: list[list[str]], global_bm25: Callable,
                 stem: Callable | None) -> np.ndarray:
    if name == "candidates":
        return lexical.bm25(query, texts)
    if name == "corpus":
        return global_bm25(query, toks)
    saved, lexical.tokens = lexical.tokens, stem  # bm25 tokenises through the module's `tokens`
    try:
        return lexical.bm25(query, texts)
    finally:
        lexical.tokens = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="0.05,0.1,0.15,0.2,0.3")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    from sentence_transformers import SentenceTransformer

    from strop.index.encoder import resolve_spec

    data = stdlib_pairs()
    model = SentenceTransformer(resolve_spec(None), device="cpu").eval().to(torch.bfloat16)
    CACHE.mkdir(parents=True, exist_ok=True)

    def embed(name: str, texts: list[str], batch: int) -> np.ndarray:
        path = CACHE / f"{name}.npy"
        if not path.exists():
            with torch.inference_mode():
                np.save(path, model.encode(texts, batch_size=batch, normalize_embeddings=True).astype(np.float32))
        return np.load(path)

    def text(c: dict) -> str:
        header = context_header(data["contexts"][c["id"]])
        return f"{header}\n{c['text']}" if header else c["text"]

    test_q, train_q = data["test"], data["train"][:1000]
    qv = {"test": embed("q_test", [p["query"] for p in test_q], 32),
          "train": embed("q_train", [p["query"] for p in train_q], 32)}
    corpora = {"test corpus": data["corpus_test"], "all functions": data["corpus_all"]}
    dv = {"test corpus": embed("d_test", [text(c) for c in corpora["test corpus"]], 16),
          "all functions": embed("d_all", [text(c) for c in corpora["all functions"]], 16)}
    stem = stemmed_tokens()
    rows: dict[tuple[str, str], dict[float, float]] = {}
    for corpus, queries, qname in [("test corpus", test_q, "test"), ("all functions", test_q, "test"),
                                   ("all functions", train_q, "train")]:
        docs = corpora[corpus]
        texts = [text(c) for c in docs]
        toks = [lexical.tokens(t) for t in texts]
        df = Counter(t for ts in toks for t in set(ts))
        global_bm25 = corpus_bm25(df, len(toks), sum(map(len, toks)) / len(toks))
        names = ["candidates", "corpus"] + (["stemmed"] if stem else [])
        row = {c["id"]: k for k, c in enumerate(docs)}
        sims = qv[qname] @ dv[corpus].T
        top = np.argsort(-sims, axis=1)[:, :50]
        label = f"{corpus}, {qname} queries"
        for name in names:
            lex = []
            for i in range(len(queries)):
                x = bm25_variant(name, queries[i]["query"], [texts[j] for j in top[i]], [toks[j] for j in top[i]],
                                 global_bm25, stem)
                lex.append(x / x.max() if x.max() > 0 else x)
            for w in [0.0, *weights]:
                rr = []
                for i, p in enumerate(queries):
                    fused = sims[i, top[i]] + np.float32(w) * lex[i]
                    hit = np.flatnonzero(top[i][np.argsort(-fused, kind="stable")][:10] == row[p["positive_id"]])
                    rr.append(1.0 / (hit[0] + 1) if len(hit) else 0.0)
                rows.setdefault((label, name), {})[w] = float(np.mean(rr))
            print(label, name, {w: round(v, 4) for w, v in rows[(label, name)].items()}, flush=True)
    ws = [0.0, *weights]
    print("\n| corpus, queries | BM25 | " + " | ".join(f"w {w:g}" for w in ws) + " |")
    print("|---|---|" + "---|" * len(ws))
    for (label, name), m in rows.items():
        print(f"| {label} | {name} | " + " | ".join(f"{m[w]:.4f}" for w in ws) + " |")


if __name__ == "__main__":
    main()
