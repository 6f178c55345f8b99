"""How candidates are ordered after the dense search: lexical fusion and the teacher, in one place.

Search (one query) and evaluate (many) both take the dense top candidates of each query and
reorder them the same way, so a search and an evaluation of the same query always agree:

* ``lexical`` > 0: cosine + lexical x BM25 (scaled so the best candidate gets 1), computed over the
  candidates themselves (:func:`strop.index.lexical.fuse`);
* ``rerank``: the collection's teacher scores every (query, candidate) pair through its own
  micro-batcher. Without ``teacher_weight`` its score replaces the dense one; with it, the result is
  the (lexically fused) dense score + teacher_weight x the teacher's score on [0, 1].

Each query's ``parts`` keep the score components, which search returns as ``hits[].scores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from anyio import to_thread

from strop.index.lexical import fuse
from strop.index.settings import Settings
from strop.service.errors import ApiError
from strop.service.state import CollectionState


@dataclass
class Ranked:
    order: np.ndarray  # candidate positions, best first
    score: np.ndarray  # final score of each candidate (in candidate order)
    parts: dict[str, np.ndarray]  # bi_encoder, lexical, teacher: what went into it


def lexical_weight(rerank: bool, lexical: float | None, teacher_weight: float | None, st: CollectionState,
                   settings: Settings) -> float:
    """The request's lexical weight; unset, code collections use STROP_CODE_LEXICAL unless the teacher's
    order replaces the bi-encoder's (``rerank`` without ``teacher_weight``)."""
    if teacher_weight is not None and not rerank:
        raise ApiError(422, "teacher_weight_needs_rerank", "teacher_weight fuses the teacher's score into the "
                       "bi-encoder's: send it with \"rerank\": true")
    replaces = rerank and teacher_weight is None
    if replaces and lexical:
        raise ApiError(422, "conflicting_options", "rerank replaces the score with the teacher's, so lexical would "
                       "be ignored: send one of them, or add teacher_weight to fuse all three")
    if lexical is not None:
        return lexical
    return settings.code_lexical if st.record.modality == "code" and not replaces else 0.0


def check_teacher(rerank: bool, st: CollectionState) -> None:
    if rerank and not st.record.teacher:
        raise ApiError(409, "no_teacher", f"collection {st.record.name!r} has no teacher to rerank with: train one "
                       "with POST /collections/{name}/jobs {\"kind\": \"teacher\", ...} or name one with PUT "
                       "/collections/{name}/teacher {\"teacher\": \"<path or hub name>\"}")


def teacher_scores(raw: np.ndarray, teacher: Any, dense: np.ndarray, weight: float | None) -> np.ndarray:
    """What a reranked list is sorted by: the teacher's own score, or with ``weight`` the (possibly
    lexically fused) bi-encoder score plus ``weight`` x the teacher's score on [0, 1]."""
    if weight is None:
        return raw
    return dense + np.float32(weight) * teacher.encoder.scorer.unit(raw)


async def reorder(queries: Sequence[str], texts: Sequence[Sequence[str]], dense: Sequence[np.ndarray], *,
                  lexical: float, teacher: Any | None, teacher_weight: float | None) -> list[Ranked]:
    """Reorder each query's candidates (``texts[i]`` with dense scores ``dense[i]``).

    ``teacher`` is the collection's loaded teacher (``CollectionManager.teacher``) when the request
    reranks, else None. BM25 runs in a worker thread; every teacher pair of every query goes to the
    teacher's micro-batcher in one call."""
    scores = [np.asarray(d, np.float32) for d in dense]
    parts: list[dict[str, np.ndarray]] = [{"bi_encoder": d} for d in scores]
    if lexical:
        def fused() -> list[tuple[np.ndarray, np.ndarray]]:
            return [fuse(q, list(t), d, lexical) for q, t, d in zip(queries, texts, scores, strict=True)]

        for i, (total, lex) in enumerate(await to_thread.run_sync(fused)):
            scores[i], parts[i]["lexical"] = total, lex
    if teacher is not None:
        items = [(q, t) for q, row in zip(queries, texts, strict=True) for t in row]
        raw = (await teacher.batcher.encode_bulk(items))[:, 0] if items else np.zeros(0, np.float32)
        at = 0
        for i, d in enumerate(scores):
            t = raw[at : at + len(d)]
            at += len(d)
            parts[i]["teacher"] = t
            scores[i] = teacher_scores(t, teacher, d, teacher_weight)
    return [Ranked(np.argsort(-s, kind="stable"), s, p) for s, p in zip(scores, parts, strict=True)]
