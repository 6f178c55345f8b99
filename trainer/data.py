"""Stages 1-2: snapshot the collection, assemble training and evaluation pairs."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strop.index.collection import doc_text, encoder_source
from strop.index.retention import pin_active
from strop.index.store import DocumentStore
from strop.index.versions import Remote, VersionStore
from strop.trainer.contract import JobSpec


@dataclass
class Snapshot:
    """The corpus as of ``watermark`` and the version that served it."""

    collection: str
    modality: str
    version: str
    manifest: dict[str, Any]
    encoder_source: str
    base_encoder: str
    watermark: int
    ids: list[str]
    rids: np.ndarray
    texts: list[str]
    metadata: list[dict[str, Any]]
    index_spec: dict[str, Any]
    teacher: str | None = None
    pos: dict[str, int] = field(default_factory=dict)  # doc id -> row
    # What training sees for each row when it differs from the stored text (docstring jobs: every
    # documented function as code without its docstring, so a mined negative never carries the
    # natural-language hint that its positive was stripped of).
    train_texts: list[str] | None = None

    def __post_init__(self) -> None:
        self.pos = {d: i for i, d in enumerate(self.ids)}


@dataclass
class Pair:
    query: str
    positive: int  # row in the snapshot
    extra_positives: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)  # given (feedback) negatives
    group: str = ""
    positive_text: str | None = None  # train on this instead of the stored text (docstrings: code without it)
    replay: bool = False  # learnt by an earlier job (spec.replay): distilled from the starting encoder


def positive_text(p: Pair, texts: list[str]) -> str:
    return p.positive_text if p.positive_text is not None else texts[p.positive]


@dataclass
class EvalPair:
    query: str
    positives: list[int]
    text_overrides: dict[int, str] = field(default_factory=dict)


@dataclass
class RegressionEval:
    """A regression set of the gate, resolved against the snapshot."""

    name: str
    reference: float | None
    evals: list[EvalPair]


def snapshot(store: DocumentStore, data_dir: str, collection: str, job_id: str | None = None,
             remote: Remote | None = None) -> Snapshot:
    """The active version and the live documents at the current watermark. With ``job_id``, the version is
    pinned for that job as it is read, so retention keeps it while the job is queued or running."""
    rec = store.get_collection(collection)
    vstore = VersionStore(data_dir, collection, remote)
    vid = pin_active(store, vstore, job_id) if job_id else vstore.active()
    if vid is None:
        raise RuntimeError(f"collection {collection!r} has no active version")
    manifest = vstore.verify(vid)
    watermark = store.watermark()
    ids, rids, texts, metas = [], [], [], []
    for d in store.iter_documents(collection, max_seq=watermark, with_images=False):
        ids.append(d.id)
        rids.append(d.rid)
        texts.append(doc_text(d))
        metas.append(d.metadata)
    return Snapshot(collection, rec.modality, vid, manifest, encoder_source(vstore, manifest), rec.encoder,
                    watermark, ids, np.asarray(rids, np.int64), texts, metas, rec.index_spec, rec.teacher)


def assemble_pairs(spec: JobSpec, store: DocumentStore, snap: Snapshot) -> tuple[list[Pair], list[EvalPair], dict]:
    """Training pairs from the job's source, and evaluation pairs (given, or a grouped hold-out)."""
    source = spec.train.source or "pairs"
    pairs: list[Pair] = []
    dropped = 0
    if spec.train.pairs is not None:
        for p in spec.train.pairs:
            row = snap.pos.get(p.positive_id)
            if row is None:
                dropped += 1  # deleted since submission
                continue
            pairs.append(Pair(p.query, row, negatives=[snap.pos[i] for i in p.negative_ids if i in snap.pos]))
    elif source == "feedback":
        for fb in store.list_feedback(snap.collection):
            rows = [snap.pos[i] for i in fb["positive_ids"] if i in snap.pos]
            negs = [snap.pos[i] for i in fb["negative_ids"] if i in snap.pos]
            if not rows:
                dropped += 1
                continue
            pairs.append(Pair(fb["query"], rows[0], rows[1:], negs))
    elif source == "docstrings":
        pairs = docstring_pairs(snap)
        if not pairs:
            raise ValueError("no function in the collection has a usable docstring (>= 3 words) to learn from")
        snap.train_texts = stripped_texts(snap)
    elif not spec.train.queries:
        raise ValueError(f"train.source {source!r} is not supported for {snap.modality} collections yet")
    if not pairs and not (spec.train.queries and spec.train.pairs is None):
        raise ValueError("no usable training pairs: every positive is missing from the collection")

    group_key = spec.eval.group_by if spec.eval else None
    if group_key is None and source == "docstrings":
        group_key = "path"  # hold out whole modules
    for p in pairs:
        p.group = _group(snap, p.positive, group_key)

    leaked = 0
    if spec.eval is not None and spec.eval.pairs is not None:
        evals = [EvalPair(e.query, [snap.pos[i] for i in e.positive_ids if i in snap.pos]) for e in spec.eval.pairs]
        evals = [e for e in evals if e.positives]
        train = pairs
        if source == "docstrings":
            # Self-made pairs would otherwise train on the very docstrings the eval queries are:
            # drop every pair from a group (module) that holds an eval positive.
            eval_groups = {_group(snap, r, group_key) for e in evals for r in e.positives}
            train = [p for p in pairs if p.group not in eval_groups]
            leaked = len(pairs) - len(train)
    else:
        holdout = spec.eval.holdout if spec.eval and spec.eval.holdout else 0.2
        train, held = split_by_group(pairs, holdout, spec.seed)
        evals = _merge_eval(held)
    if not evals:
        raise ValueError("no evaluation pairs: give eval.pairs or more training pairs")
    if not train and pairs:
        raise ValueError("every training pair was held out for evaluation: give eval.pairs or more pairs")
    info = {"train_pairs": len(train), "eval_pairs": len(evals), "dropped_pairs": dropped, "source": source}
    if spec.replay is not None:
        replayed = replay_pairs(spec, snap, {e.query for e in evals})
        info["replay_pairs"] = len(replayed)
        train = train + replayed
    if leaked:
        info["dropped_eval_group_pairs"] = leaked
    if source == "docstrings":
        # Evaluated functions are searched without their docstrings, or the query would match itself.
        held_rows = {r for e in evals for r in e.positives}
        by_row = {p.positive: p for p in pairs}
        info["eval_text_overrides"] = len(held_rows)
        for e in evals:
            e.text_overrides = {r: by_row[r].positive_text for r in e.positives
                                if r in by_row and by_row[r].positive_text is not None}
    return train, evals, info


def replay_pairs(spec: JobSpec, snap: Snapshot, eval_queries: set[str]) -> list[Pair]:
    """The job's replayed pairs whose positives still exist (never one whose query is evaluated)."""
    assert spec.replay is not None
    out = []
    for p in spec.replay.pairs:
        row = snap.pos.get(p.positive_id)
        if row is None or p.query in eval_queries:
            continue
        out.append(Pair(p.query, row, negatives=[snap.pos[i] for i in p.negative_ids if i in snap.pos],
                        replay=True))
    return out


def regression_evals(spec: JobSpec, snap: Snapshot) -> list[RegressionEval]:
    """The gate's regression sets as evaluation pairs on the snapshot. On a docstrings job a positive
    is searched without its docstring (stripped text), as held-out functions are."""
    out = []
    for rs in spec.gate.regression_sets:
        evals = [EvalPair(e.query, [snap.pos[i] for i in e.positive_ids if i in snap.pos]) for e in rs.pairs]
        evals = [e for e in evals if e.positives]
        if snap.train_texts is not None:
            for e in evals:
                e.text_overrides = {r: snap.train_texts[r] for r in e.positives
                                    if snap.train_texts[r] != snap.texts[r]}
        out.append(RegressionEval(rs.name, rs.reference, evals))
    return out


def _group(snap: Snapshot, row: int, key: str | None) -> str:
    meta = snap.metadata[row]
    return str(meta.get(key)) if key and key in meta else snap.ids[row]


def docstring_pairs(snap: Snapshot) -> list[Pair]:
    """(docstring or doc-comment summary -> code without it) for every function and method that has one."""
    from strop.index.code.parse import split_docstring, usable_docstring

    out = []
    for row, (text, meta) in enumerate(zip(snap.texts, snap.metadata, strict=True)):
        summary = meta.get("docstring") or ""
        if meta.get("kind") not in ("function", "method") or not usable_docstring(summary):
            continue
        try:
            _, code = split_docstring(text, meta)  # the doc comment, in the document's language
        except SyntaxError:
            continue
        if code.strip():
            out.append(Pair(summary, row, positive_text=code))
    return out


def stripped_texts(snap: Snapshot) -> list[str]:
    """Every function and method with a docstring as code without it; other rows unchanged."""
    from strop.index.code.parse import split_docstring

    out = list(snap.texts)
    for row, meta in enumerate(snap.metadata):
        if meta.get("kind") in ("function", "method") and meta.get("docstring"):
            try:
                _, code = split_docstring(out[row], meta)
            except SyntaxError:
                continue
            if code.strip():
                out[row] = code
    return out


def eval_overrides(evals: list[EvalPair]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in evals:
        out.update(e.text_overrides)
    return out


def split_by_group(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole groups (never a query's positive in both halves), about ``fraction`` of pairs."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        groups[p.group].append(p)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(fraction * len(pairs)))
    held: list[Pair] = []
    train: list[Pair] = []
    for k in keys:
        (held if len(held) < target else train).extend(groups[k])
    if not train and len(keys) > 1:  # one giant group took everything
        train, held = held[target:], held[:target]
    return train, held


def _merge_eval(pairs: list[Pair]) -> list[EvalPair]:
    by_query: dict[str, set[int]] = defaultdict(set)
    for p in pairs:
        by_query[p.query].update([p.positive, *p.extra_positives])
    return [EvalPair(q, sorted(rows)) for q, rows in by_query.items()]

