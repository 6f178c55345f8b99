"""Stages 4b-6: the teacher's part in an encoder job.

Teacher scores are computed once per mining round, batched, and cached by (pair, corpus row);
``denoise`` drops mined negatives the teacher judges relevant (RocketQA), ``teacher_fallback``
gives queries the margin left without a negative one from above the positive that the teacher
scores below it, ``semantic_positives``
adds index neighbours of a positive that the teacher confirms (SRA-CL), and ``score_pairs``
fills the cache that distillation reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from index.teacher import Scorer
from trainer.contract import JobSpec
from trainer.data import Pair, positive_text
from trainer.mining import MiningStats


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
            threshold: float | None, stats: MiningStats,
            progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Drop negatives scored >= the positive's teacher score (or >= ``threshold``)."""
    keys = [(i, p.positive) for i, p in enumerate(pairs)] + [(i, r) for i, negs in enumerate(negatives) for r in negs]
    cache.ensure(keys, pairs, texts, progress)
    out = []
    for i, negs in enumerate(negatives):
        limit = threshold if threshold is not None else cache.scores[(i, pairs[i].positive)]
        keep = [r for r in negs if cache.scores[(i, r)] < limit]
        stats.removed_teacher += len(negs) - len(keep)
        stats.kept -= len(negs) - len(keep)
        if negs and not keep:
            stats.queries_without_negatives += 1
        out.append(keep)
    return out


def teacher_fallback(cache: TeacherCache, pairs: list[Pair], negatives: list[list[int]],
                     candidates: dict[int, list[int]], texts: list[str], threshold: float | None,
                     stats: MiningStats, progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """``mining.fallback: "teacher"``: for each query in ``candidates`` (left without a negative because
    every candidate in the window outscores its positive), keep the best-ranked candidate the teacher
    scores below the positive (and below ``threshold`` when given): the student ranks it above the
    positive, the teacher says it is the worse answer, so it is a hard negative and not a false one."""
    keys = [(i, pairs[i].positive) for i in candidates] + [(i, r) for i, rows in candidates.items() for r in rows]
    cache.ensure(keys, pairs, texts, progress)
    out = [list(negs) for negs in negatives]
    for i, rows in candidates.items():
        stats.fallback_teacher_checked += len(rows)
        limit = cache.scores[(i, pairs[i].positive)]
        if threshold is not None:
            limit = min(limit, threshold)
        keep = next((r for r in rows if cache.scores[(i, r)] < limit), None)
        if keep is not None and not out[i]:
            out[i] = [keep]
            stats.fallback_teacher += 1
            stats.kept += 1
            stats.queries_without_negatives -= 1
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
