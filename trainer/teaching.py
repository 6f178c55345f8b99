"""Stages 4b-6: the teacher's part in an encoder job.

Teacher scores are computed once per mining round, batched, and cached by (pair, corpus row);
``denoise`` drops mined negatives the teacher judges relevant (RocketQA), ``semantic_positives``
adds index neighbours of a positive that the teacher confirms (SRA-CL), and ``score_pairs``
fills the cache that distillation reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from strop.index.teacher import Scorer
from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair, positive_text
from strop.trainer.mining import MiningStats


@dataclass
class TeacherCache:
    teacher: Scorer
    scores: dict[tuple[int, int], float] = field(default_factory=dict)
    scored: int = 0

    def ensure(self, keys: list[tuple[int, int]], pairs: list[Pair], texts: list[str],
               progress: Callable[[int, int], None] | None = None, batch: int = 64) -> None:
        todo = [k for k in dict.fromkeys(keys) if k not in self.scores]
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            items = [(pairs[i].query, positive_text(pairs[i], texts) if r == pairs[i].positive else texts[r])
                     for i, r in chunk]
            for k, s in zip(chunk, self.teacher.score(items), strict=True):
                self.scores[k] = float(s)
            self.scored += len(chunk)
            if progress:
                progress(min(start + batch, len(todo)), len(todo))


def denoise(cache: TeacherCache, pairs: list[Pair], negatives: list[list[int]], texts: list[str],
            stats: MiningStats, progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Drop negatives the teacher scores at or above the query's positive (likely unlabelled positives)."""
    keys = [(i, p.positive) for i, p in enumerate(pairs)] + [(i, r) for i, negs in enumerate(negatives) for r in negs]
    cache.ensure(keys, pairs, texts, progress)
    out = []
    for i, negs in enumerate(negatives):
        limit = cache.scores[(i, pairs[i].positive)]
        keep = [r for r in negs if cache.scores[(i, r)] < limit]
        stats.removed_teacher += len(negs) - len(keep)
        stats.kept -= len(negs) - len(keep)
        if negs and not keep:
            stats.queries_without_negatives += 1
        out.append(keep)
    return out



def semantic_positives(cache: TeacherCache, pairs: list[Pair], corpus_emb: np.ndarray, texts: list[str],
                       spec: JobSpec, progress: Callable[[int, int], None] | None = None) -> tuple[list[Pair], dict]:
    """New (query, neighbour) pairs for neighbours of each positive that the teacher confirms."""
    sp = spec.positives
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, np.float32))
    pos_rows = np.array([p.positive for p in pairs], np.int64)
    _, nbrs = index.search(np.ascontiguousarray(corpus_emb[pos_rows]), sp.neighbours + 1)
    candidates: list[tuple[int, int]] = []
    for i, p in enumerate(pairs):
        known = {p.positive, *p.extra_positives, *p.negatives}
        candidates += [(i, int(r)) for r in nbrs[i] if r >= 0 and int(r) not in known
                       and texts[int(r)] != texts[p.positive]]
    cache.ensure([(i, p.positive) for i, p in enumerate(pairs)] + candidates, pairs, texts, progress)
    added: list[Pair] = []
    per_query: dict[int, int] = {}
    # the teacher's scores as logits (a bi-encoder's cosines / the InfoNCE temperature, as distillation
    # reads them), so exp(t_nb - t_pos) is the ratio of the two documents' teacher probabilities
    scale = 1.0 / spec.loss.temperature if cache.teacher.kind == "bi-encoder" else 1.0
    floor = float(np.log(sp.min_ratio))
    for i, r in candidates:
        if per_query.get(i, 0) >= sp.max_per_query:
            continue
        if scale * (cache.scores[(i, r)] - cache.scores[(i, pairs[i].positive)]) >= floor:
            p = pairs[i]
            p.extra_positives.append(r)
            added.append(Pair(p.query, r, extra_positives=[p.positive], group=p.group))
            per_query[i] = per_query.get(i, 0) + 1
    return added, {"checked": len(candidates), "added": len(added), "queries_with_added": len(per_query)}


def score_pairs(cache: TeacherCache, pairs: list[Pair], negatives: list[list[int]], texts: list[str],
                progress: Callable[[int, int], None] | None = None) -> dict[tuple[int, int], float]:
    keys = [(i, p.positive) for i, p in enumerate(pairs)] + [(i, r) for i, negs in enumerate(negatives) for r in negs]
    cache.ensure(keys, pairs, texts, progress)
    return cache.scores


def pick_label(query: str, rows: list[int], scores: np.ndarray, texts: list[str], spec: JobSpec,
               teacher_kind: str) -> tuple[int, list[int], float]:
    """(best candidate, candidates with its text, their softmax mass) for one unlabelled query.

    ``scores`` are the teacher's over ``rows``; the softmax is on the logit scale distillation reads
    (a bi-encoder's cosines over the InfoNCE temperature).
    """
    logits = np.asarray(scores, np.float64) / (spec.loss.temperature if teacher_kind == "bi-encoder" else 1.0)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    best = int(np.argmax(logits))
    same = [b for b, r in enumerate(rows) if texts[r] == texts[rows[best]]]
    return best, same, float(p[same].sum())


def pseudo_label(cache: TeacherCache, queries: list[str], query_emb: np.ndarray, corpus_emb: np.ndarray,
                 texts: list[str], spec: JobSpec, offset: int, skip: set[str] = frozenset(),
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[Pair], dict]:
    """GPL-style pseudo-labels for unlabelled queries (``train.queries``).

    The live bi-encoder retrieves each query's top ``pseudo.candidates`` documents, the teacher
    scores them, and a query becomes a training pair, its positive the teacher's best document,
    when the teacher's softmax over the candidates gives that document (and any copy of its text)
    at least ``pseudo.min_confidence``. The teacher's scores are stored in ``cache`` under the
    pairs' final indices (``offset + j``), so denoising and distillation read them for free.
    Queries in ``skip`` (labelled or evaluation queries) are left out: they have labels already,
    or must not be trained on.
    """
    ps = spec.pseudo
    keep = [j for j, q in enumerate(queries) if q not in skip]
    info = {"queries": len(queries), "known": len(queries) - len(keep), "labelled": 0, "low_confidence": 0,
            "teacher_disagreed": 0, "mean_confidence": None}
    if not keep:
        return [], info
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, np.float32))
    k = min(ps.candidates, len(texts))
    _, cand = index.search(np.ascontiguousarray(query_emb[keep], np.float32), k)
    items = [(queries[j], texts[int(r)]) for j, rows in zip(keep, cand, strict=True) for r in rows if r >= 0]
    scores = np.empty(len(items), np.float32)
    batch = 256
    for start in range(0, len(items), batch):
        scores[start : start + batch] = cache.teacher.score(items[start : start + batch])
        cache.scored += len(items[start : start + batch])
        if progress:
            progress(min(start + batch, len(items)), len(items))
    out: list[Pair] = []
    confidences: list[float] = []
    at = 0
    for j, rows in zip(keep, cand, strict=True):
        rows = [int(r) for r in rows if r >= 0]
        s = scores[at : at + len(rows)]
        at += len(rows)
        best, same, conf = pick_label(queries[j], rows, s, texts, spec, cache.teacher.kind)
        if conf < ps.min_confidence:
            info["low_confidence"] += 1
            continue
        i = offset + len(out)
        pair = Pair(queries[j], rows[best], extra_positives=[rows[b] for b in same if b != best], group="pseudo")
        out.append(pair)
        for r, v in zip(rows, s, strict=True):
            cache.scores[(i, r)] = float(v)
        confidences.append(conf)
        info["teacher_disagreed"] += best != 0  # the student ranked another document first
    info["labelled"] = len(out)
    if confidences:
        info["mean_confidence"] = round(float(np.mean(confidences)), 4)
    return out, info
