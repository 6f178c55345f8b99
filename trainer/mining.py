"""Stage 4: positive-aware hard-negative mining from the live index (NV-Retriever's TopK-PercPos).

For each training query: rank the corpus with the current encoder, drop the
positives, skip the top ``range_min`` ranks, consider ranks up to ``range_max``,
drop candidates scoring above ``(1 - relative_margin) x`` the positive's score
(likely false negatives) and candidates whose text equals the positive's, then
keep the ``negatives_per_query`` hardest. Every filter's removals are counted so
the job record says which setting to loosen.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from strop.trainer.contract import MiningSpec
from strop.trainer.data import Pair

log = logging.getLogger("strop.mining")

@dataclass
class MiningStats:
    queries: int = 0
    candidates_seen: int = 0
    removed_positive: int = 0
    removed_window: int = 0
    removed_margin: int = 0
    removed_duplicate_text: int = 0
    removed_teacher: int = 0
    kept: int = 0
    queries_without_negatives: int = 0
    # of those, the queries whose positive ranks below ``range_max``: every candidate in the window scores
    # above the positive, so the margin filter removes them all (the encoder gets these queries badly wrong)
    without_negatives_positive_below_window: int = 0
    rounds: int = 0

    def add(self, other: MiningStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def summary(self) -> dict:
        d = asdict(self)
        if self.queries and self.queries_without_negatives > 0.2 * self.queries:
            below = self.without_negatives_positive_below_window
            if below > 0.5 * self.queries_without_negatives:
                # measured on the stdlib code benchmark (docs/benchmarks.md): ranks 0-200 gave half of these
                # queries a negative and did not raise MRR@10, so this says what happens, not what to turn
                d["hint"] = (f"{below} queries have no eligible negative because their positive ranks below "
                             "mining.range_max: every candidate in the window outscores it. A larger range_max "
                             "reaches under the positive; on the stdlib code benchmark that did not pay")
            else:
                d["hint"] = ("many queries have no eligible negative: lower mining.relative_margin or "
                             "mining.range_min")
        return d


def mine(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    texts: list[str],
    pairs: list[Pair],
    spec: MiningSpec,
    chunk: int = 1024,
) -> tuple[list[list[int]], MiningStats]:
    """Hard negatives (corpus rows) for each pair, and what each filter removed."""
    stats = MiningStats(queries=len(pairs), rounds=1)
    out: list[list[int]] = [[] for _ in pairs]
    if spec.negatives_per_query == 0 or not pairs:
        return out, stats
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, np.float32))
    max_pos = max(1 + len(p.extra_positives) for p in pairs)
    k = min(spec.range_max + max_pos, corpus_emb.shape[0])
    for start in range(0, len(pairs), chunk):
        q = np.ascontiguousarray(query_emb[start : start + chunk], np.float32)
        scores, cands = index.search(q, k)
        for j in range(q.shape[0]):
            i = start + j
            p = pairs[i]
            positives = {p.positive, *p.extra_positives}
            pos_score = float(q[j] @ corpus_emb[p.positive])
            threshold = (1.0 - spec.relative_margin) * pos_score
            pos_text = texts[p.positive]
            rank = 0
            chosen: list[int] = []
            positive_in_window = False
            for s, c in zip(scores[j], cands[j], strict=True):
                if c < 0:
                    continue
                c = int(c)
                stats.candidates_seen += 1
                if c in positives:
                    stats.removed_positive += 1
                    positive_in_window |= c == p.positive and rank < spec.range_max
                    continue
                rank += 1
                if rank <= spec.range_min or rank > spec.range_max:
                    stats.removed_window += 1
                    continue
                if s > threshold:
                    stats.removed_margin += 1
                    continue
                if texts[c] == pos_text:
                    stats.removed_duplicate_text += 1
                    continue
                if len(chosen) < spec.negatives_per_query:
                    chosen.append(c)
            out[i] = chosen
            stats.kept += len(chosen)
            if not chosen:
                stats.queries_without_negatives += 1
                stats.without_negatives_positive_below_window += not positive_in_window
    return out, stats


def neighbour_batches(ref_emb: np.ndarray, batch_items: int, group: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of item indices made of ``group``-sized clusters of mutual nearest neighbours.

    Greedy: a random unassigned item takes its ``group - 1`` nearest unassigned items (by inner
    product of the rows of ``ref_emb``); groups are dealt into batches in random order, so each
    batch mixes a few clusters of look-alikes and its in-batch negatives are hard ones. Used for
    logo brands (views jobs) and for text pairs grouped by their positives (``mining.neighbour_group``).
    """
    n = len(ref_emb)
    free = np.ones(n, bool)
    groups = []
    for seed_i in rng.permutation(n):
        if not free[seed_i]:
            continue
        free[seed_i] = False
        sims = ref_emb @ ref_emb[seed_i]
        sims[~free] = -np.inf
        k = min(group - 1, int(free.sum()))
        nb = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.empty(0, int)
        free[nb] = False
        groups.append(np.concatenate([[seed_i], nb]).astype(int))
    order = rng.permutation(len(groups))
    per = max(1, batch_items // group)
    return [np.concatenate([groups[g] for g in order[s : s + per]]) for s in range(0, len(order), per)]
