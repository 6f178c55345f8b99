"""The encoder job: snapshot -> pairs -> evaluate before -> mine -> train -> evaluate after -> gate -> publish.

Each stage is a plain function (``strop.trainer.data``, ``strop.trainer.mining``,
``strop.trainer.train``, below); ``run_encoder_job`` chains them and reports stage and
progress through a ``Reporter``. Nothing becomes visible to the service until
``publish`` renames a complete version into place and replaces the active pointer.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.index.artifacts import open_remote
from strop.index.collection import Sidecar, doc_text, version_vectors, write_version
from strop.index.encoder import Encoder
from strop.index.faiss_index import IndexSpec
from strop.index.metrics import evaluate_rankings
from strop.index.retention import prune_versions
from strop.index.settings import Settings
from strop.index.store import DocumentStore
from strop.index.teacher import load_teacher
from strop.index.versions import Remote, VersionStore, new_version_id
from strop.trainer.contract import JobSpec
from strop.trainer.data import (
    EvalPair,
    Pair,
    RegressionEval,
    Snapshot,
    assemble_pairs,
    eval_overrides,
    regression_evals,
    snapshot,
)
from strop.trainer.mining import MiningStats, mine
from strop.trainer.teaching import TeacherCache, denoise, pseudo_label, score_pairs, semantic_positives
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
    fault_pause: str = ""  # Settings.fault_pause / fault_fail: drills that pause or fail a job at a stage
    fault_fail: str = ""
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
        _fault_pause(stage, self.check, self.fault_pause, self.fault_fail)

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


def _fault_pause(stage: str, check: Callable[[], None], pause: str, fail: str) -> None:
    """Fault drills: ``pause="train=5,mine=2"`` sleeps on entering a stage (cancel still works);
    ``fail="train"`` raises there."""
    if fail == stage:
        raise RuntimeError(f"fault injected at stage {stage} (STROP_FAULT_FAIL)")
    for item in filter(None, pause.split(",")):
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


def evaluate_set(encoder: Encoder, corpus_emb: np.ndarray, snap: Snapshot, evals: list[EvalPair]) -> dict:
    """Metrics on one evaluation set with its own text overrides (empty sets score nothing)."""
    if not evals:
        return {}
    return evaluate(encoder, with_overrides(corpus_emb, eval_overrides(evals), encoder), snap, evals)


def evaluate(encoder: Encoder, corpus_emb: np.ndarray, snap: Snapshot, evals: list[EvalPair], k: int = 10) -> dict:
    import faiss

    q = encoder.encode([e.query for e in evals]).vectors
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb, np.float32))
    _, rows = index.search(q, min(k, len(snap.ids)))
    rankings = [[snap.ids[r] for r in row if r >= 0] for row in rows]
    positives = [[snap.ids[r] for r in e.positives] for e in evals]
    return evaluate_rankings(rankings, positives, k=k)


@dataclass
class JobContext:
    """What every job runner receives: the job, where it writes progress, and the worker's settings."""

    job_id: str
    collection: str
    spec: JobSpec
    store: DocumentStore
    settings: Settings
    reporter: Reporter
    announce: Callable[[str, str], None] | None = None
    redis: Any = None  # the queue's Redis: shard tasks of a large re-encode go there

    @property
    def data_dir(self) -> str:
        return str(self.settings.data_dir)

    @property
    def device(self) -> str:
        return self.settings.resolved_device()

    @functools.cached_property
    def remote(self) -> Remote | None:
        return open_remote(self.settings, self.store)

    @property
    def vstore(self) -> VersionStore:
        return VersionStore(self.data_dir, self.collection, self.remote)


def snapshot_and_pairs(reporter: Reporter, store: DocumentStore, data_dir: str, collection: str,
                       spec: JobSpec, job_id: str | None = None,
                       remote: Remote | None = None) -> tuple[Snapshot, list, list[EvalPair]]:
    """Stages 1-2 of every text job: freeze the corpus at a watermark, then build train and eval pairs."""
    reporter.enter("snapshot")
    snap = snapshot(store, data_dir, collection, job_id, remote)  # pinned for the job: retention keeps it
    reporter.details["snapshot"] = {"version": snap.version, "watermark": snap.watermark, "documents": len(snap.ids)}
    reporter.enter("pairs")
    pairs, evals, info = assemble_pairs(spec, store, snap)
    reporter.details["pairs"] = info
    return snap, pairs, evals


@dataclass
class EncoderRun:
    """The state an encoder job's stages hand to each other."""

    ctx: JobContext
    spec: JobSpec
    snap: Snapshot
    pairs: list[Pair]
    evals: list[EvalPair]
    texts: list[str]  # what training and the teacher see
    model: Any = None
    corpus: np.ndarray | None = None  # the active version's corpus embeddings, as mining sees them
    overrides: dict[int, str] = field(default_factory=dict)
    negatives: list[list[int]] = field(default_factory=list)
    stats: MiningStats = field(default_factory=MiningStats)
    cache: TeacherCache | None = None
    before: dict[str, Any] = field(default_factory=dict)
    regressions: list[RegressionEval] = field(default_factory=list)  # the gate's regression sets
    regress_before: list[dict[str, Any]] = field(default_factory=list)


def run_encoder_job(ctx: JobContext) -> JobResult:
    """snapshot -> pairs -> evaluate before -> mine -> teacher -> train -> evaluate after -> gate -> publish."""
    run = start_encoder_run(ctx)
    evaluate_before(run)
    mine_negatives(run)
    if run.spec.needs_teacher():
        apply_teacher(run)
    train_stage(run)
    return evaluate_gate_publish(run)


def start_encoder_run(ctx: JobContext) -> EncoderRun:
    snap, pairs, evals = snapshot_and_pairs(ctx.reporter, ctx.store, ctx.data_dir, ctx.collection, ctx.spec,
                                            ctx.job_id, ctx.remote)
    # the batch grouping this collection's modality defaults to, unless the job chose one
    spec = ctx.spec.model_copy(update={"mining": ctx.spec.mining.model_copy(
        update={"neighbour_group": ctx.spec.mining.group_for(snap.modality)})})
    return EncoderRun(ctx, spec, snap, pairs, evals, snap.train_texts or snap.texts)


def evaluate_before(run: EncoderRun) -> None:
    """Stage 3: the active version's metrics on the evaluation pairs, from its stored vectors."""
    ctx = run.ctx
    ctx.reporter.enter("evaluate_before")
    run.model = load_model(run.snap.encoder_source, ctx.device, run.spec.max_seq_length)
    enc0 = inference_encoder(run.model, "base", ctx.device)
    corpus0 = current_embeddings(ctx.store, ctx.vstore, run.snap, enc0, ctx.reporter)
    run.overrides = eval_overrides(run.evals)
    run.before = evaluate(enc0, with_overrides(corpus0, run.overrides, enc0), run.snap, run.evals)
    run.regressions = regression_evals(run.spec, run.snap)
    run.regress_before = [evaluate_set(enc0, corpus0, run.snap, r.evals) for r in run.regressions]
    ctx.reporter.metrics = {"before": run.before}
    run.corpus = mining_corpus(corpus0, run.snap, run.texts, enc0, ctx.reporter)


def mine_negatives(run: EncoderRun) -> None:
    """Stage 4: positive-aware hard negatives for every pair from the live index."""
    ctx = run.ctx
    ctx.reporter.enter("mine")
    assert run.corpus is not None
    if run.pairs:  # none when the job has only train.queries, which the teacher labels later
        q0 = inference_encoder(run.model, "base", ctx.device).encode([p.query for p in run.pairs]).vectors
        run.negatives, s = mine(q0, run.corpus, run.texts, run.pairs, run.spec.mining)
        run.stats.add(s)
    ctx.reporter.details["mining"] = run.stats.summary()


def _extend(run: EncoderRun, added: list[Pair], q_add: np.ndarray) -> None:
    """Append new pairs (pseudo-labels, semantic positives) and mine their negatives like the others'."""
    assert run.corpus is not None
    more, s = mine(q_add, run.corpus, run.texts, added, run.spec.mining)
    run.pairs, run.negatives = run.pairs + added, run.negatives + more
    run.stats.add(s)


def _teacher_progress(run: EncoderRun) -> Callable[[int, int], None]:
    """Progress of teacher scoring rounds, with the on-disk cache's hits and misses."""
    reporter = run.ctx.reporter
    round_start = [time.perf_counter(), 0]  # when this scoring round began, and its progress so far

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < round_start[1]:  # a new round (semantic positives, denoise, distillation scores)
            round_start[0] = now
        round_start[1] = done
        elapsed = now - round_start[0]
        eta = round(elapsed / done * (total - done), 1) if done and elapsed > 0 else None
        cache = run.cache
        reporter.details["teacher"]["scored"] = cache.scored if cache else 0
        disk = getattr(cache.teacher, "disk", None) if cache else None
        if disk is not None:  # documents read from the shared on-disk cache / embedded afresh
            reporter.details["teacher"]["disk_cache"] = {"hits": disk.hits, "misses": disk.misses}
        reporter.progress = {"step": done, "total_steps": total, "loss": None, "eta_s": eta, "unit": "teacher pairs"}
        reporter.check()

    return progress


def apply_teacher(run: EncoderRun) -> None:
    """Stages 4b-6: pseudo-labels, semantic positives, denoising and distillation scores."""
    ctx, spec = run.ctx, run.spec
    ctx.reporter.enter("teacher")
    teacher_spec = spec.teacher or run.snap.teacher
    if not teacher_spec:
        raise ValueError("this job needs a teacher (mining.denoise / positives.semantic / distill / "
                         "train.queries): give 'teacher' or train one with a {\"kind\": \"teacher\"} job")
    # the API's precision, so both processes share one on-disk embedding cache per teacher
    run.cache = cache = TeacherCache(load_teacher(teacher_spec, ctx.device, ctx.settings.precision,
                                                  ctx.settings.teacher_disk_cache()))
    ctx.reporter.details["teacher"] = {"name": teacher_spec, "kind": cache.teacher.kind}
    progress = _teacher_progress(run)
    assert run.corpus is not None
    if spec.train.queries:
        queries = list(dict.fromkeys(spec.train.queries))
        qv = inference_encoder(run.model, "base", ctx.device).encode(queries).vectors
        added, info = pseudo_label(cache, queries, qv, run.corpus, run.texts, spec, len(run.pairs),
                                   {p.query for p in run.pairs} | {e.query for e in run.evals}, progress)
        info["duplicates"] = len(spec.train.queries) - len(queries)
        ctx.reporter.details["pseudo_labels"] = info
        if added:
            row_of = {q: j for j, q in enumerate(queries)}
            _extend(run, added, qv[[row_of[p.query] for p in added]])
    if spec.positives.semantic:
        added, info = semantic_positives(cache, run.pairs, run.corpus, run.texts, spec, progress)
        ctx.reporter.details["semantic_positives"] = info
        if added:
            enc = inference_encoder(run.model, "base", ctx.device)
            _extend(run, added, enc.encode([p.query for p in added]).vectors)
    if spec.mining.denoise:
        run.negatives = denoise(cache, run.pairs, run.negatives, run.texts, run.stats, progress)
    ctx.reporter.details["mining"] = run.stats.summary()
    if spec.distill:
        score_pairs(cache, run.pairs, run.negatives, run.texts, progress)


def refresh_negatives(run: EncoderRun, current_model: Any) -> list[list[int]]:
    """ANCE: re-encode the corpus with the current weights and re-mine (denoised and scored as before)."""
    ctx, spec, cache = run.ctx, run.spec, run.cache
    enc = inference_encoder(current_model, "refresh", ctx.device)
    corpus = encode_corpus(enc, run.texts, ctx.reporter, "refresh")  # what training sees
    qv = enc.encode([p.query for p in run.pairs]).vectors
    negs, s = mine(qv, corpus, run.texts, run.pairs, spec.mining)
    run.stats.add(s)
    if cache is not None and spec.mining.denoise:
        negs = denoise(cache, run.pairs, negs, run.texts, run.stats)
    if cache is not None and spec.distill:
        score_pairs(cache, run.pairs, negs, run.texts)
    ctx.reporter.details["mining"] = run.stats.summary()
    return negs


def train_stage(run: EncoderRun) -> None:
    """Stage 7: fine-tune (InfoNCE over in-batch plus mined negatives, optional distillation)."""
    ctx, spec, cache, pairs = run.ctx, run.spec, run.cache, run.pairs
    ctx.reporter.enter("train")
    distill = cache is not None and spec.distill is not None
    assert run.corpus is not None
    summary = fine_tune(
        run.model, pairs, run.texts, run.negatives, spec,
        refresh=(lambda m: refresh_negatives(run, m))
        if spec.mining.negatives_per_query and spec.mining.refresh_every else None,
        teacher_scores=(lambda: cache.scores) if distill and cache is not None else None,
        # one call per batch: each query is embedded once, its documents come from the cache
        teacher_ensure=(lambda keys: cache.ensure(keys, run.pairs, run.texts, batch=max(64, len(keys))))
        if distill and cache is not None and spec.distill and spec.distill.loss == "listwise" else None,
        teacher_kind=cache.teacher.kind if cache is not None else "cross-encoder",
        on_progress=ctx.reporter.on_progress, should_stop=ctx.reporter.should_stop, device=ctx.device,
        positive_vectors=run.corpus[[p.positive for p in pairs]]
        if spec.mining.neighbour_group and spec.mining.neighbour_group > 1 else None)
    ctx.reporter.details["train"] = summary
    if cache is not None:  # the listwise loss scores each batch's pairs as it goes
        ctx.reporter.details["teacher"]["scored"] = cache.scored


def evaluate_gate_publish(run: EncoderRun) -> JobResult:
    """Stages 8-9: measure the new encoder, gate it, write the version and activate it if it passed."""
    ctx = run.ctx
    ctx.reporter.enter("evaluate_after")
    enc1 = inference_encoder(run.model, "student", ctx.device)
    corpus1 = reencode_corpus(run, enc1)
    after = evaluate(enc1, with_overrides(corpus1, run.overrides, enc1), run.snap, run.evals)
    regressions = [{"name": r.name, "reference": r.reference, "pairs": len(r.evals), "before": b,
                    "after": evaluate_set(enc1, corpus1, run.snap, r.evals)}
                   for r, b in zip(run.regressions, run.regress_before, strict=True)]
    passed = apply_gate(run.spec, run.before, after, ctx.reporter, len(run.evals), regressions=regressions)

    ctx.reporter.enter("publish")
    vid = publish(ctx.store, ctx.vstore, run.snap, run.model, enc1, corpus1, ctx.job_id, ctx.reporter.metrics,
                  ctx.reporter)
    return finish(ctx, vid, passed and run.spec.activate, passed)


def reencode_corpus(run: EncoderRun, enc1: Encoder) -> np.ndarray:
    """The corpus under the trained encoder: here, or in shards shared with idle workers when the collection
    holds more than ``settings.shard_documents`` documents (strop.trainer.shards)."""
    ctx = run.ctx
    per = ctx.settings.shard_documents
    if not per or len(run.snap.texts) <= per or ctx.redis is None:
        return encode_corpus(enc1, run.snap.texts, ctx.reporter, "reencode")
    from rq import Queue

    from strop.trainer.contract import queue_name
    from strop.trainer.shards import Staging, reencode

    staging = Staging(ctx.data_dir, ctx.remote.artifacts if ctx.remote else None, ctx.collection, ctx.job_id)

    def progress(done: int, total: int) -> None:
        ctx.reporter.progress = {"step": done, "total_steps": total, "loss": None, "eta_s": None, "unit": "shards"}

    prefix = ctx.settings.redis_prefix
    out, info = reencode(ctx.store, ctx.redis, prefix, Queue(queue_name(prefix), connection=ctx.redis), staging,
                         enc1, ctx.collection, ctx.job_id, run.snap.rids, run.snap.texts, run.snap.watermark, per,
                         lambda p: save_model(run.model, p), progress, ctx.reporter.check)
    ctx.reporter.details["reencode"] = info
    return out


def apply_gate(spec: JobSpec, before: dict[str, Any], after: dict[str, Any], reporter: Reporter,
               pairs: int, regressions: list[dict[str, Any]] | None = None, **extra: Any) -> bool:
    """Record before/after and the gate's verdict in the job's metrics; True when it passed.

    ``pairs`` is how many evaluation queries the metrics stand on: below ``gate.min_pairs`` the gate
    cannot judge (one held-out pair moves MRR by 0 or 1), so the job is rejected and says why.
    ``regressions`` are the gate's regression sets measured before and after: each may lose at most
    ``gate.max_regression`` from the lower of its reference and its score before the job."""
    metric = spec.gate.metric
    delta = after[metric] - before[metric]
    judged = pairs >= spec.gate.min_pairs
    passed = judged and delta >= spec.gate.min_delta
    gate: dict[str, Any] = {"metric": metric, "delta": round(delta, 5), "min_delta": spec.gate.min_delta,
                            "pairs": pairs, "min_pairs": spec.gate.min_pairs, "judged": judged, "passed": passed}
    reasons = []
    if not judged:
        reasons.append(f"{pairs} evaluation pairs are too few to judge (gate.min_pairs={spec.gate.min_pairs}): "
                       "give eval.pairs, more training pairs to hold out, or lower gate.min_pairs")
    elif delta < spec.gate.min_delta:
        reasons.append(f"{metric} moved {delta:+.4f} on the evaluation pairs (gate.min_delta={spec.gate.min_delta})")
    checked = []
    for r in regressions or []:
        if not r["before"]:  # every positive of the set is gone from the collection
            checked.append({**r, "passed": True, "skipped": "no pair of the set is in the collection"})
            continue
        b, a = r["before"][metric], r["after"][metric]
        floor = b if r["reference"] is None else min(b, r["reference"])
        loss = floor - a
        ok = loss <= spec.gate.max_regression + 1e-9
        checked.append({**r, "loss": round(loss, 5), "passed": ok})
        if not ok:
            passed = False
            reasons.append(f"{metric} on regression set {r['name']!r} fell to {a:.4f} from {floor:.4f} "
                           f"(loss {loss:.4f} > gate.max_regression={spec.gate.max_regression})")
    if checked:
        gate["regressions"] = checked
        gate["max_regression"] = spec.gate.max_regression
    gate["passed"] = passed
    if reasons:
        gate["reason"] = "; ".join(reasons)
    reporter.metrics = {"before": before, "after": after, **extra, "gate": gate}
    return passed


def finish(ctx: JobContext, vid: str, activate: bool, passed: bool) -> JobResult:
    """Activate the written version when asked (and tell the API processes), then close the job."""
    reporter = ctx.reporter
    if activate:
        reporter.check()
        ctx.vstore.activate(vid)
        if ctx.announce:
            ctx.announce(ctx.collection, vid)
        prune_versions(ctx.store, ctx.vstore, ctx.settings.version_retention, release=ctx.job_id)
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
            save_encoder: Callable[[Path], None] | None = None, sidecar: Sidecar | None = None) -> str:
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
                  parent=snap.version, job=job_id, metrics=metrics, sidecar=sidecar)
    return vid
