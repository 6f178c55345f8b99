"""The encoder job: snapshot -> pairs -> evaluate before -> mine -> train -> evaluate after -> gate -> publish.

Each stage is a plain function (``strop.trainer.data``, ``strop.trainer.mining``,
``strop.trainer.train``, below); ``run_encoder_job`` chains them and reports stage and
progress through a ``Reporter``. Nothing becomes visible to the service until
``publish`` renames a complete version into place and replaces the active pointer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.index.collection import doc_text, version_vectors, write_version
from strop.index.embcache import TEACHER_CACHE_DIR
from strop.index.encoder import Encoder
from strop.index.faiss_index import IndexSpec
from strop.index.metrics import evaluate_rankings
from strop.index.store import DocumentStore
from strop.index.teacher import load_teacher
from strop.index.versions import VersionStore, new_version_id
from strop.trainer.contract import JobSpec
from strop.trainer.data import EvalPair, Snapshot, assemble_pairs, eval_overrides, snapshot
from strop.trainer.mining import MiningStats, mine
from strop.trainer.teaching import (
    TeacherCache,
    denoise,
    pseudo_label,
    score_pairs,
    semantic_positives,
    teacher_fallback,
)
from strop.trainer.train import Cancelled, Progress, fine_tune, inference_encoder, load_model

log = logging.getLogger("strop.pipeline")


@dataclass
class Reporter:
    """Where a job writes stage, progress and details (the worker flushes it to the store)."""

    stage: str = "queued"
    progress: dict[str, Any] = field(default_factory=lambda: {"step": 0, "total_steps": 0, "loss": None, "eta_s": None})
    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] = lambda: False
    timings: dict[str, float] = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)

    def enter(self, stage: str) -> None:
        self.check()
        now = time.perf_counter()
        if self.stage not in ("queued", "waiting"):
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + now - self._t, 2)
        self.stage, self._t = stage, now
        self.details["stage_seconds"] = self.timings
        log.info("stage %s", stage)
        _fault_pause(stage, self.check)

    def check(self) -> None:
        if self.should_stop():
            raise Cancelled()

    def on_progress(self, p: Progress) -> None:
        self.progress = {"step": p.step, "total_steps": p.total_steps, "loss": p.loss, "eta_s": p.eta_s}

    def count(self, unit: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback for a stage that is not training steps (teacher scoring,
        reranking): progress in ``unit`` with an ETA from the rate since the first call, and a
        cancel check on each call. The stale training progress is replaced at once."""
        t0 = time.perf_counter()
        self.progress = {"step": 0, "total_steps": 0, "loss": None, "eta_s": None, "unit": unit}

        def update(done: int, total: int) -> None:
            elapsed = time.perf_counter() - t0
            eta = round(elapsed / done * (total - done), 1) if done and elapsed > 0 else None
            self.progress = {"step": done, "total_steps": total, "loss": None, "eta_s": eta, "unit": unit}
            self.check()

        return update


def _fault_pause(stage: str, check: Callable[[], None]) -> None:
    """Fault injection for tests and drills: ``STROP_FAULT_PAUSE="train=5,mine=2"`` sleeps on entering a
    stage; ``STROP_FAULT_FAIL=train`` raises there."""
    if os.environ.get("STROP_FAULT_FAIL", "") == stage:
        raise RuntimeError(f"fault injected at stage {stage} (STROP_FAULT_FAIL)")
    spec = os.environ.get("STROP_FAULT_PAUSE", "")
    for item in filter(None, spec.split(",")):
        name, _, secs = item.partition("=")
        if name.strip() == stage:
            end = time.monotonic() + float(secs or 0)
            while time.monotonic() < end:
                check()
                time.sleep(0.1)


@dataclass
class JobResult:
    state: str  # succeeded | rejected
    version: str | None
    metrics: dict[str, Any]


def encode_corpus(encoder: Encoder, texts: list[str], reporter: Reporter, what: str, batch: int = 128) -> np.ndarray:
    out = np.empty((len(texts), encoder.dim), np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        reporter.check()
        idx = order[start : start + batch]
        out[idx] = encoder.encode([texts[i] for i in idx]).vectors
        done = min(start + batch, len(texts))
        reporter.details[f"{what}_encoded"] = done
        rate = done / max(time.perf_counter() - t0, 1e-6)
        # longest texts come first, so this ETA errs on the long side
        reporter.progress = {"step": done, "total_steps": len(texts), "loss": None,
                             "eta_s": round((len(texts) - done) / rate, 1), "unit": f"{what} documents"}
    return out


def current_embeddings(store: DocumentStore, vstore: VersionStore, snap: Snapshot, encoder: Encoder,
                       reporter: Reporter) -> np.ndarray:
    """Corpus embeddings of the active version: from its index and vector table, encoding only what is missing."""
    found, vecs = version_vectors(store, vstore, snap.manifest, snap.rids)
    missing = np.flatnonzero(~found)
    if missing.size:
        vecs[missing] = encode_corpus(encoder, [snap.texts[i] for i in missing], reporter, "corpus")
    reporter.details["corpus_reused"] = int(found.sum())
    return vecs


def mining_corpus(corpus: np.ndarray, snap: Snapshot, texts: list[str], encoder: Encoder,
                  reporter: Reporter) -> np.ndarray:
    """The corpus as training sees it. Docstring jobs re-embed documented functions without their
    docstrings: ranked with them, a candidate's own docstring decides its rank and the positive's
    score (the margin's yardstick) is inflated by the query's own words, so the margin lets
    false negatives through (docs/benchmarks.md, the docstrings row: 233 vs 1,425 queries left
    without a negative on the same pairs)."""
    if snap.train_texts is None:
        return corpus
    rows = [i for i, (a, b) in enumerate(zip(snap.texts, texts, strict=True)) if a != b]
    reporter.details["mining_reencoded"] = len(rows)
    if not rows:
        return corpus
    out = corpus.copy()
    out[rows] = encode_corpus(encoder, [texts[i] for i in rows], reporter, "mining")
    return out


def with_overrides(corpus: np.ndarray, overrides: dict[int, str], encoder: Encoder) -> np.ndarray:
    """The corpus with some rows re-embedded from other text (docstring jobs: held-out code without docstrings)."""
    if not overrides:
        return corpus
    out = corpus.copy()
    rows = sorted(overrides)
    out[rows] = encoder.encode([overrides[r] for r in rows]).vectors
    return out


def evaluate(encoder: Encoder, corpus_emb: np.ndarray, snap: Snapshot, evals: list[EvalPair], k: int = 10) -> dict:
    import faiss

    q = encoder.encode([e.query for e in evals]).vectors
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, np.float32))
    _, rows = index.search(q, min(k, len(snap.ids)))
    rankings = [[snap.ids[r] for r in row if r >= 0] for row in rows]
    positives = [[snap.ids[r] for r in e.positives] for e in evals]
    return evaluate_rankings(rankings, positives, k=k)


def snapshot_and_pairs(reporter: Reporter, store: DocumentStore, data_dir: str, collection: str,
                       spec: JobSpec) -> tuple[Snapshot, list, list[EvalPair]]:
    """Stages 1-2 of every text job: freeze the corpus at a watermark, then build train and eval pairs."""
    reporter.enter("snapshot")
    snap = snapshot(store, data_dir, collection)
    reporter.details["snapshot"] = {"version": snap.version, "watermark": snap.watermark, "documents": len(snap.ids)}
    reporter.enter("pairs")
    pairs, evals, info = assemble_pairs(spec, store, snap)
    reporter.details["pairs"] = info
    return snap, pairs, evals


def run_encoder_job(
    job_id: str, collection: str, spec: JobSpec, store: DocumentStore, data_dir: str | Path,
    reporter: Reporter, device: str = "cpu", announce: Callable[[str, str], None] | None = None,
) -> JobResult:
    data_dir = str(data_dir)
    vstore = VersionStore(data_dir, collection)

    snap, pairs, evals = snapshot_and_pairs(reporter, store, data_dir, collection, spec)
    texts = snap.train_texts or snap.texts  # what training and the teacher see
    # the batch grouping this collection's modality defaults to, unless the job chose one
    spec = spec.model_copy(update={"mining": spec.mining.model_copy(
        update={"neighbour_group": spec.mining.group_for(snap.modality)})})

    reporter.enter("evaluate_before")
    model = load_model(snap.encoder_source, device, spec.max_seq_length)
    enc0 = inference_encoder(model, "base", device)
    corpus0 = current_embeddings(store, vstore, snap, enc0, reporter)
    overrides = eval_overrides(evals)
    before = evaluate(enc0, with_overrides(corpus0, overrides, enc0), snap, evals)
    reporter.metrics = {"before": before}

    reporter.enter("mine")
    stats = MiningStats()
    mine_corpus = mining_corpus(corpus0, snap, texts, enc0, reporter)
    fallback: dict[int, list[int]] = {}
    negatives: list[list[int]] = []
    if pairs:  # none when the job has only train.queries, which the teacher labels below
        q0 = enc0.encode([p.query for p in pairs]).vectors
        negatives, s = mine(q0, mine_corpus, texts, pairs, spec.mining, fallback=fallback)
        stats.add(s)
    reporter.details["mining"] = stats.summary()
    del enc0

    cache = None
    if spec.needs_teacher():
        reporter.enter("teacher")
        teacher_spec = spec.teacher or snap.teacher
        if not teacher_spec:
            raise ValueError("this job needs a teacher (mining.denoise / mining.fallback 'teacher' / "
                             "positives.semantic / distill): give 'teacher' or train one with a "
                             "{\"kind\": \"teacher\"} job")
        # the API's precision setting, so both processes share one on-disk embedding cache per teacher
        cache = TeacherCache(load_teacher(teacher_spec, device, os.environ.get("STROP_PRECISION", "auto"),
                                          cache_dir=Path(data_dir) / TEACHER_CACHE_DIR))
        reporter.details["teacher"] = {"name": teacher_spec, "kind": cache.teacher.kind}

        round_start = [time.perf_counter(), 0]  # when this scoring round began, and its progress so far

        def tprog(done: int, total: int) -> None:
            now = time.perf_counter()
            if done < round_start[1]:  # a new round (semantic positives, denoise, distillation scores)
                round_start[0] = now
            round_start[1] = done
            elapsed = now - round_start[0]
            eta = round(elapsed / done * (total - done), 1) if done and elapsed > 0 else None
            reporter.details["teacher"]["scored"] = cache.scored if cache else 0
            disk = getattr(cache.teacher, "disk", None) if cache else None
            if disk is not None:  # documents read from the shared on-disk cache / embedded afresh
                reporter.details["teacher"]["disk_cache"] = {"hits": disk.hits, "misses": disk.misses}
            reporter.progress = {"step": done, "total_steps": total, "loss": None, "eta_s": eta,
                                 "unit": "teacher pairs"}
            reporter.check()

        def extend(added: list, q_add: np.ndarray) -> None:
            """Append new pairs and mine their negatives like the others'."""
            nonlocal pairs, negatives
            more_fallback: dict[int, list[int]] = {}
            more, s3 = mine(q_add, mine_corpus, texts, added, spec.mining, fallback=more_fallback)
            fallback.update({len(negatives) + i: rows for i, rows in more_fallback.items()})
            pairs, negatives = pairs + added, negatives + more
            stats.add(s3)

        if spec.train.queries:
            queries = list(dict.fromkeys(spec.train.queries))
            qv = inference_encoder(model, "base", device).encode(queries).vectors
            added, info_pl = pseudo_label(cache, queries, qv, mine_corpus, texts, spec, len(pairs),
                                          {p.query for p in pairs} | {e.query for e in evals}, tprog)
            info_pl["duplicates"] = len(spec.train.queries) - len(queries)
            reporter.details["pseudo_labels"] = info_pl
            if added:
                row_of = {q: j for j, q in enumerate(queries)}
                extend(added, qv[[row_of[p.query] for p in added]])
        if spec.positives.semantic:
            added, info_sp = semantic_positives(cache, pairs, mine_corpus, texts, spec, tprog)
            reporter.details["semantic_positives"] = info_sp
            if added:
                extend(added, inference_encoder(model, "base", device).encode([p.query for p in added]).vectors)
        if spec.mining.denoise:
            negatives = denoise(cache, pairs, negatives, texts, spec.mining.denoise_threshold, stats, tprog)
        if fallback:
            negatives = teacher_fallback(cache, pairs, negatives, fallback, texts, spec.mining.denoise_threshold,
                                         stats, tprog)
        reporter.details["mining"] = stats.summary()
        if spec.distill:
            score_pairs(cache, pairs, negatives, texts, tprog)

    def refresh(current_model: Any) -> list[list[int]]:
        """ANCE: re-encode the corpus with the current weights and re-mine."""
        enc = inference_encoder(current_model, "refresh", device)
        corpus = encode_corpus(enc, texts, reporter, "refresh")  # what training sees
        qv = enc.encode([p.query for p in pairs]).vectors
        more_fallback: dict[int, list[int]] = {}
        negs, s2 = mine(qv, corpus, texts, pairs, spec.mining, fallback=more_fallback)
        stats.add(s2)
        if cache is not None and spec.mining.denoise:
            negs = denoise(cache, pairs, negs, texts, spec.mining.denoise_threshold, stats)
        if cache is not None and more_fallback:
            negs = teacher_fallback(cache, pairs, negs, more_fallback, texts, spec.mining.denoise_threshold, stats)
        if cache is not None and spec.distill:
            score_pairs(cache, pairs, negs, texts)
        reporter.details["mining"] = stats.summary()
        return negs

    reporter.enter("train")
    summary = fine_tune(model, pairs, texts, negatives, spec,
                        refresh=refresh if spec.mining.negatives_per_query and spec.mining.refresh_every else None,
                        teacher_scores=(lambda: cache.scores) if cache is not None and spec.distill else None,
                        # one call per batch: each query is embedded once, its documents come from the cache
                        teacher_ensure=(lambda keys: cache.ensure(keys, pairs, texts, batch=max(64, len(keys))))
                        if cache is not None and spec.distill and spec.distill.loss == "listwise" else None,
                        teacher_kind=cache.teacher.kind if cache is not None else "cross-encoder",
                        on_progress=reporter.on_progress, should_stop=reporter.should_stop, device=device,
                        positive_vectors=mine_corpus[[p.positive for p in pairs]] if spec.mining.neighbour_group
                        and spec.mining.neighbour_group > 1 else None)
    reporter.details["train"] = summary
    if cache is not None:  # the listwise loss scores each batch's pairs as it goes
        reporter.details["teacher"]["scored"] = cache.scored

    reporter.enter("evaluate_after")
    enc1 = inference_encoder(model, "student", device)
    corpus1 = encode_corpus(enc1, snap.texts, reporter, "reencode")
    after = evaluate(enc1, with_overrides(corpus1, overrides, enc1), snap, evals)
    passed = apply_gate(spec, before, after, reporter)

    reporter.enter("publish")
    vid = publish(store, vstore, snap, model, enc1, corpus1, job_id, reporter.metrics, reporter)
    return finish(reporter, vstore, vid, passed and spec.activate, passed, collection, announce)


def apply_gate(spec: JobSpec, before: dict[str, Any], after: dict[str, Any], reporter: Reporter) -> bool:
    """Record before/after and the gate's verdict in the job's metrics; True when it passed."""
    metric = spec.gate.metric
    delta = after[metric] - before[metric]
    passed = delta >= spec.gate.min_delta
    reporter.metrics = {"before": before, "after": after,
                        "gate": {"metric": metric, "delta": round(delta, 5), "min_delta": spec.gate.min_delta,
                                 "passed": passed}}
    return passed


def finish(reporter: Reporter, vstore: VersionStore, vid: str, activate: bool, passed: bool, collection: str,
           announce: Callable[[str, str], None] | None) -> JobResult:
    """Activate the written version when asked (and tell the API processes), then close the job."""
    if activate:
        reporter.check()
        vstore.activate(vid)
        if announce:
            announce(collection, vid)
    reporter.details["activated"] = activate
    reporter.enter("done")
    return JobResult("succeeded" if passed else "rejected", vid, reporter.metrics)


def save_model(model: Any, path: Path) -> None:
    """Save with the serving sequence length (training may have used a shorter one)."""
    train_len = model.max_seq_length
    model.max_seq_length = getattr(model, "serving_max_seq_length", train_len)
    try:
        model.save(str(path))
    finally:
        model.max_seq_length = train_len


def publish(store: DocumentStore, vstore: VersionStore, snap: Snapshot, model: Any, encoder: Encoder,
            corpus: np.ndarray, job_id: str, metrics: dict, reporter: Reporter,
            save_encoder: Callable[[Path], None] | None = None) -> str:
    """Catch up on writes past the snapshot, build the index, write the version (not yet active)."""
    rids = list(snap.rids)
    vecs = [corpus]
    # writes acknowledged while the job ran: apply them so the version starts current
    watermark = store.watermark()
    live = store.live_rids(snap.collection)
    live_set = set(live.values())
    keep = np.array([int(r) in live_set for r in snap.rids], bool)
    new_rids = sorted(live_set - set(int(r) for r in snap.rids))
    docs = store.by_rids(new_rids, with_image=True)
    new_rids = [r for r in new_rids if r in docs]
    rid_arr = np.asarray(rids, np.int64)[keep]
    mat = corpus[keep]
    if new_rids:
        extra = encode_corpus(encoder, [doc_text(docs[r]) for r in new_rids], reporter, "catch_up")
        rid_arr = np.concatenate([rid_arr, np.asarray(new_rids, np.int64)])
        mat = np.vstack([mat, extra])
    reporter.details["catch_up"] = {"added": len(new_rids), "removed": int((~keep).sum())}
    del vecs
    spec = IndexSpec.from_dict(snap.index_spec)
    vid = new_version_id(store.next_version_number(snap.collection))
    reporter.check()
    write_version(vstore, vid, rid_arr, mat, encoder.dim, spec, watermark,
                  encoder_ref=snap.base_encoder, save_encoder=save_encoder or (lambda p: save_model(model, p)),
                  parent=snap.version, job=job_id, metrics=metrics)
    return vid
