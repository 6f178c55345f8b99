"""Retrieval metrics over ranked id lists: MRR@10, recall@k, nDCG@10 (binary relevance)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def evaluate_rankings(rankings: Sequence[Sequence[str]], positives: Sequence[Sequence[str]], k: int = 10) -> dict:
    """Mean metrics over queries. ``rankings[i]`` is the ranked hit ids for query i.

    recall@k is the fraction of a query's positives found in its top k (so with one
    positive per query it is the hit rate). MRR uses the first positive within the
    top 10; nDCG@10 uses binary gains with the ideal ranking of all positives.
    """
    n = len(rankings)
    if n == 0:
        return {"mrr@10": 0.0, "recall@1": 0.0, f"recall@{k}": 0.0, "ndcg@10": 0.0, "n": 0}
    mrr = r1 = rk = ndcg = 0.0
    for ranked, pos in zip(rankings, positives, strict=True):
        pset = set(pos)
        if not pset:
            continue
        for rank, doc in enumerate(ranked[:10], start=1):
            if doc in pset:
                mrr += 1.0 / rank
                break
        r1 += len(pset.intersection(ranked[:1])) / min(len(pset), 1)
        rk += len(pset.intersection(ranked[:k])) / len(pset)
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in pset)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(pset), 10)))
        ndcg += dcg / idcg
    out = {
        "mrr@10": mrr / n,
        "recall@1": r1 / n,
        f"recall@{k}": rk / n,
        "ndcg@10": ndcg / n,
        "n": n,
    }
    if k != 10:
        out.setdefault("recall@10", sum(
            len(set(p).intersection(r[:10])) / max(len(set(p)), 1) for r, p in zip(rankings, positives, strict=True)
        ) / n)
    return out


def query_ranks(rankings: Sequence[Sequence[str]], positives: Sequence[Sequence[str]], k: int = 10) -> list[dict]:
    """Per query: the 1-based rank of its first positive within the top ``k`` (None when none is
    there), its reciprocal rank and the ids ranked above it (the whole top 3 when it was missed)."""
    out = []
    for ranked, pos in zip(rankings, positives, strict=True):
        pset = set(pos)
        rank = next((i for i, doc in enumerate(ranked[:k], start=1) if doc in pset), None)
        out.append({"rank": rank, "reciprocal_rank": 1.0 / rank if rank else 0.0,
                    "top": list(ranked[: min(rank - 1, 3) if rank else 3])})
    return out
