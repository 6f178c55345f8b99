"""The teacher job (RocketQA recipe): train a cross-encoder for a collection.

Initialised from the collection's base encoder (a packaged transformer, classification head
fresh), trained listwise on each labelled pair against negatives the current bi-encoder mines
from the live index, evaluated as a reranker of the bi-encoder's top ``rerank_depth`` on
held-out pairs, and stored as the collection's teacher when it beats the bi-encoder alone.

The teacher is the live bi-encoder plus a learned correction: its
score is cos / temperature of the bi-encoder it was trained over (a copy is stored with it) plus
w x the cross-encoder's logit, whose head starts at zero. It starts as exactly the bi-encoder's
ranking, and the cross-encoder's training steps go into what the bi-encoder gets wrong instead
of relearning what it already ranks well. The weight w is chosen on the held-out pairs, and the
metrics the gate reads are cross-fitted (each half scored with the weight chosen on the other)
(docs/experiments.md, "A trained cross-encoder").

With ``fuse`` nothing is trained: a stronger bi-encoder's cosine takes the cross-encoder's place
as the correction, with its weight fitted the same way (``strop.index.teacher.FusedScorer``). With
``fuse`` and ``folds`` the prior is cross-fitted instead of the live bi-encoder: K bi-encoders are
fine-tuned from the live one, each on the training pairs outside its fold, and a query is scored
over its own fold's (``strop.index.teacher.FoldedScorer``), so the teacher has not seen the pairs it
scores for distillation. ``tune_fuse`` fine-tunes a copy of the stronger bi-encoder in each fold too.
``tune_fuse`` without ``folds`` fine-tunes one copy of each on every training pair: no cross-fitting, so
not a teacher to distil on those pairs, but the strongest one for queries that have no label (pseudo-labels,
rerank searches).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from strop.index.metrics import evaluate_rankings
from strop.index.store import DocumentStore
from strop.index.teacher import (
    BiEncoderScorer,
    CrossEncoderScorer,
    FoldedScorer,
    FusedScorer,
    Scorer,
    fold_of,
    load_teacher,
)
from strop.trainer.contract import TEACHER_HEAD_LR, JobSpec
from strop.trainer.data import EvalPair, Snapshot, positive_text
from strop.trainer.mining import mine
from strop.trainer.pipeline import (
    JobContext,
    JobResult,
    Reporter,
    apply_gate,
    current_embeddings,
    mining_corpus,
    save_model,
    snapshot_and_pairs,
)
from strop.trainer.train import Cancelled, Progress, fine_tune, inference_encoder, load_model, make_batches

# the weights a teacher with a prior may give its correction (score = prior + w x logit), chosen on held-out
# pairs: on stdlib code the correction learned in 125 CPU steps hurt at full weight; a tune_fuse teacher picked
# 4 (docs/benchmarks.md)
LOGIT_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def top_candidates(q_emb: np.ndarray, corpus: np.ndarray, depth: int) -> list[list[int]]:
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, np.float32))
    _, rows = index.search(np.ascontiguousarray(q_emb, np.float32), min(depth, len(corpus)))
    return [[int(r) for r in row if r >= 0] for row in rows]


def rerank_metrics(teacher: Scorer | None, q_emb: np.ndarray, corpus: np.ndarray, snap: Snapshot,
                   evals: list[EvalPair], depth: int,
                   progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Metrics of the bi-encoder's top ``depth`` (reranked by ``teacher`` when given). ``progress``
    is called with (queries reranked, all of them) and may raise to cancel."""
    rankings = []
    for n, (e, cands) in enumerate(zip(evals, top_candidates(q_emb, corpus, depth), strict=True)):
        if teacher is not None and cands:
            progress(n, len(evals))
            scores = teacher.score([(e.query, snap.texts[r]) for r in cands])
            cands = [cands[i] for i in np.argsort(-scores, kind="stable")]
        rankings.append([snap.ids[r] for r in cands])
    if teacher is not None:
        progress(len(evals), len(evals))
    return evaluate_rankings(rankings, [[snap.ids[r] for r in e.positives] for e in evals], k=10)


def fit_logit_weight(parts: list[tuple[np.ndarray, np.ndarray]], cands: list[list[int]], gold: list[set[int]],
                     metric: str = "mrr@10", weights: tuple[float, ...] = LOGIT_WEIGHTS) -> tuple[float, dict, dict]:
    """Choose how much of a prior teacher's correction to add, honestly.

    ``parts[i]`` = (logits, scaled prior scores) of query i's candidates ``cands[i]``; ``gold[i]`` its
    positives. The weight is chosen on the odd queries and scored on the even ones and the other way
    round, so the reported metrics are held out from the choice; the weight returned (for the stored
    teacher) is the one chosen on all queries. Returns (weight, cross-fitted metrics, details)."""

    def ranked(i: int, w: float) -> list[int]:
        logits, prior = parts[i]
        return [cands[i][j] for j in np.argsort(-(prior + w * logits), kind="stable")]

    def metrics(w_of: Callable[[int], float], idx: list[int]) -> dict:
        return evaluate_rankings([ranked(i, w_of(i)) for i in idx], [gold[i] for i in idx], k=10)

    n = len(parts)
    halves = ([i for i in range(n) if i % 2], [i for i in range(n) if not i % 2])
    chosen = [max(weights, key=lambda w, h=h: metrics(lambda _: w, h)[metric]) for h in halves]
    # each half is ranked with the weight chosen on the other half
    held_out = metrics(lambda i: chosen[0] if i % 2 == 0 else chosen[1], list(range(n)))
    final = max(weights, key=lambda w: metrics(lambda _: w, list(range(n)))[metric])
    by_weight = {f"{w:g}": round(metrics(lambda _, w=w: w, list(range(n)))[metric], 5) for w in weights}
    return final, held_out, {"chosen_per_half": chosen, metric + "_by_weight": by_weight}


def prior_rerank(ce: CrossEncoderScorer | FusedScorer, q_emb: np.ndarray, corpus: np.ndarray, snap: Snapshot,
                 evals: list[EvalPair], depth: int, metric: str,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[float, dict, dict]:
    """Score the bi-encoder's top ``depth`` once with both parts of ``ce`` and fit its correction weight.
    ``progress`` as in ``rerank_metrics``."""
    cands = top_candidates(q_emb, corpus, depth)
    parts = []
    for n, (e, c) in enumerate(zip(evals, cands, strict=True)):
        progress(n, len(evals))
        logits, prior = ce.score_parts([(e.query, snap.texts[r]) for r in c])
        parts.append((logits, prior))
    progress(len(evals), len(evals))
    gold = [set(e.positives) for e in evals]
    return fit_logit_weight(parts, cands, gold, metric)


def head_parameters(model: torch.nn.Module) -> tuple[list, list]:
    """(body, head) parameters: the head is what a packaged bi-encoder does not train (pooler, classifier)."""
    body, head = [], []
    for name, param in model.named_parameters():
        (head if name.split(".")[0] in ("classifier", "pooler") or ".pooler." in name else body).append(param)
    return body, head


@dataclass
class PriorVectors:
    """The bi-encoder side of a teacher with a prior, from vectors the job already holds: the
    training queries, each pair's positive as trained (its ``positive_text`` when it has one) and
    the corpus, all embedded by the prior bi-encoder; ``scale`` turns cosines into logits."""

    queries: np.ndarray
    positives: np.ndarray
    corpus: np.ndarray
    scale: float


def prior_vectors(enc, q_vecs: np.ndarray, corpus: np.ndarray, pairs: list, texts: list[str],
                  scale: float) -> PriorVectors:
    positives = corpus[[p.positive for p in pairs]].copy()
    own = [i for i, p in enumerate(pairs) if p.positive_text is not None]
    if own:
        positives[own] = enc.encode([pairs[i].positive_text for i in own]).vectors
    return PriorVectors(q_vecs, positives, corpus, scale)


def train_cross_encoder(ce: CrossEncoderScorer, pairs: list, texts: list[str], negatives: list[list[int]],
                        spec: JobSpec, on_progress: Callable[[Progress], None],
                        should_stop: Callable[[], bool], head_lr: float | None = None,
                        prior: PriorVectors | None = None) -> dict:
    """Listwise: each query's positive against its mined negatives. With ``prior`` the logit is added
    to the prior's scaled cosine, so the loss trains the cross-encoder on the prior's mistakes."""
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    batches = [b for _ in range(spec.epochs) for b in make_batches(pairs, texts, max(2, spec.batch_size // 4), rng)]
    total = min(len(batches), spec.max_steps or len(batches))
    body, head = head_parameters(ce.model)
    opt = torch.optim.AdamW([{"params": body, "lr": spec.lr()}, {"params": head, "lr": head_lr or spec.lr()}],
                            weight_decay=0.01)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    ce.model.train()
    t0, ema = time.perf_counter(), None
    for step, batch in enumerate(batches[:total], start=1):
        if should_stop():
            raise Cancelled()
        # room for one in-batch negative even when no query of the batch has a mined one
        width = 1 + max(1, *(len(negatives[i]) for i in batch))
        qs, ds, valid = [], [], []
        prior_logits = np.zeros((len(batch), width), np.float32)
        for b, i in enumerate(batch):
            p = pairs[i]
            group = [positive_text(p, texts)] + [texts[r] for r in negatives[i]]
            vecs = [prior.positives[i]] + [prior.corpus[r] for r in negatives[i]] if prior is not None else []
            # in-batch: another query's positive is a cheap extra negative when mining found none
            if len(group) == 1:
                j = batch[(b + 1) % len(batch)]
                if pairs[j].positive != p.positive:
                    group.append(positive_text(pairs[j], texts))
                    if prior is not None:
                        vecs.append(prior.positives[j])
            if prior is not None:
                prior_logits[b, : len(vecs)] = prior.scale * (np.stack(vecs) @ prior.queries[i])
            group += [""] * (width - len(group))
            valid.append([bool(t) for t in group])
            qs += [p.query] * width
            ds += [t or "." for t in group]
        logits = ce.logits(qs, ds).view(len(batch), width)
        if prior is not None:
            logits = logits + torch.from_numpy(prior_logits).to(logits.device)
        logits = logits.masked_fill(~torch.tensor(valid, device=logits.device), float("-inf"))
        loss = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long, device=logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ce.model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = float(loss.detach())
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        el = time.perf_counter() - t0
        on_progress(Progress(step, total, round(ema, 5), round(el / step * (total - step), 1)))
    ce.model.eval()
    return {"steps": total, "loss": ema, "seconds": round(time.perf_counter() - t0, 2)}


def run_teacher_job(ctx: JobContext) -> JobResult:
    job_id, collection, spec, store, reporter = ctx.job_id, ctx.collection, ctx.spec, ctx.store, ctx.reporter
    data_dir, device, vstore = ctx.data_dir, ctx.device, ctx.vstore
    snap, pairs, evals = snapshot_and_pairs(reporter, store, data_dir, collection, spec, job_id, ctx.remote)

    reporter.enter("evaluate_before")
    student = load_model(snap.encoder_source, device, spec.max_seq_length)
    enc = inference_encoder(student, "bi-encoder", device)
    corpus = current_embeddings(store, vstore, snap, enc, reporter)
    q_eval = enc.encode([e.query for e in evals]).vectors
    depth = spec.rerank_depth
    before = rerank_metrics(None, q_eval, corpus, snap, evals, depth)
    reporter.metrics = {"before": before}

    if spec.fuse is not None:
        return _fuse_job(ctx, snap, student, enc, corpus,
                         q_eval, evals, before, pairs)

    reporter.enter("mine")
    q_train = enc.encode([p.query for p in pairs]).vectors
    mining = spec.mining.model_copy(update={"negatives_per_query": max(spec.mining.negatives_per_query, 3)})
    negatives, stats = mine(q_train, corpus, snap.texts, pairs, mining)
    reporter.details["mining"] = stats.summary()

    reporter.enter("train")
    ce = CrossEncoderScorer.init_from(snap.base_encoder, device, max_length=min(256, spec.max_seq_length or 256) * 2)
    # a correction over the live bi-encoder: the head starts at zero, so the teacher starts as the
    # bi-encoder's ranking and learns only what it gets wrong
    ce.zero_head()
    ce.prior, ce.prior_scale = BiEncoderScorer(enc, f"prior:{snap.version}"), 1.0 / spec.loss.temperature
    prior = prior_vectors(enc, q_train, corpus, pairs, snap.texts, ce.prior_scale)
    reporter.details["train"] = train_cross_encoder(ce, pairs, snap.texts, negatives, spec, reporter.on_progress,
                                                    reporter.should_stop, head_lr=TEACHER_HEAD_LR, prior=prior)
    reporter.details["train"]["prior"] = {"scale": ce.prior_scale}

    reporter.enter("evaluate_after")
    metric = spec.gate.metric
    ce.logit_weight, after, fit = prior_rerank(ce, q_eval, corpus, snap, evals, depth, metric,
                                               reporter.count("evaluation queries reranked"))
    reporter.details["train"]["prior"].update(logit_weight=ce.logit_weight, **fit)
    passed = apply_gate(spec, before, after, reporter, len(evals), rerank_depth=depth)

    return _publish(job_id, collection, spec, store, data_dir, reporter, ce, student, passed)


def _fuse_job(ctx: JobContext, snap: Snapshot, student, enc, corpus: np.ndarray, q_eval: np.ndarray,
              evals: list[EvalPair], before: dict, pairs: list) -> JobResult:
    """A teacher job with ``fuse``: the named bi-encoder fused with a copy of the live one, the weight
    fitted (and the metrics cross-fitted) on the held-out pairs. Nothing is trained unless ``folds``
    (a fine-tuned copy of the live one per fold) or ``tune_fuse`` (of the named one too) asks."""
    job_id, collection, spec, store, reporter = ctx.job_id, ctx.collection, ctx.spec, ctx.store, ctx.reporter
    data_dir, device, settings = ctx.data_dir, ctx.device, ctx.settings
    reporter.enter("load_scorer")
    try:
        scorer = BiEncoderScorer.load(spec.fuse, device, settings.precision, settings.teacher_disk_cache())
    except Exception as exc:  # a missing path or an unreachable hub name: a clear job error, not a traceback
        raise ValueError(f"fuse: {spec.fuse!r} cannot be loaded as a sentence-transformers bi-encoder ({exc})") from exc
    if spec.tune_fuse:  # loaded only to fail early on a bad name: each fold fine-tunes its own copy, so free it
        scorer = None
    scale = 1.0 / spec.loss.temperature
    if spec.folds or spec.tune_fuse:
        models = _train_folds(spec, snap, pairs, enc, corpus, reporter, device)
        tuned = models[0][1] is not None

        def fold_scorer(f: int, m, tuned_fuse) -> FusedScorer:
            prior = BiEncoderScorer(inference_encoder(m, f"fold{f}", device), f"fold{f}:{snap.version}")
            if tuned_fuse is None:
                return FusedScorer(prior, scorer, scale, scorer_spec=spec.fuse)
            own = BiEncoderScorer(inference_encoder(tuned_fuse, f"fuse-fold{f}", device), f"{spec.fuse}:fold{f}")
            return FusedScorer(prior, own, scale, scorer_spec=spec.fuse)

        # Stage the teacher on disk now and evaluate it as the service and later jobs will load it
        # (same precision, same on-disk embedding cache): the documents its models embed here are
        # then cached for the first rerank search or pseudo-label pass instead of embedded again.
        staged = _staging_dir(data_dir, collection, job_id)
        try:
            if spec.folds:
                folded = FoldedScorer([fold_scorer(f, m, t) for f, (m, t) in enumerate(models)],
                                      trained=[p.query for p in pairs])
                folded.save(staged, lambda f, path: save_model(models[f][0], path),
                            (lambda f, path: save_model(models[f][1], path)) if tuned else None)
                del folded
            else:  # tune_fuse alone: both bi-encoders fine-tuned on every training pair
                fold_scorer(0, *models[0]).save(staged, lambda path: save_model(models[0][0], path),
                                                lambda path: save_model(models[0][1], path))
            del models, scorer
            fused = load_teacher(str(staged), device, settings.precision, settings.teacher_disk_cache())
            assert isinstance(fused, FusedScorer | FoldedScorer)
            reporter.enter("evaluate_after")
            fused.logit_weight, after, fit = prior_rerank(fused, q_eval, corpus, snap, evals, spec.rerank_depth,
                                                          spec.gate.metric, reporter.count("evaluation queries reranked"))
            meta_path = staged / "strop_teacher.json"
            meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "logit_weight": fused.logit_weight}))
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return _finish_fuse(job_id, collection, spec, store, data_dir, reporter, fused, student, before, after, fit,
                            len(evals),
                            staged=staged)
    fused = FusedScorer(BiEncoderScorer(enc, f"prior:{snap.version}"), scorer, scale, scorer_spec=spec.fuse)
    reporter.enter("evaluate_after")
    fused.logit_weight, after, fit = prior_rerank(fused, q_eval, corpus, snap, evals, spec.rerank_depth,
                                                  spec.gate.metric, reporter.count("evaluation queries reranked"))
    return _finish_fuse(job_id, collection, spec, store, data_dir, reporter, fused, student, before, after, fit,
                        len(evals))


def _finish_fuse(job_id: str, collection: str, spec: JobSpec, store: DocumentStore, data_dir: str,
                 reporter: Reporter, fused: FusedScorer | FoldedScorer, student, before: dict, after: dict, fit: dict,
                 n_evals: int, staged: Path | None = None) -> JobResult:
    """Gate a fuse teacher on its held-out metrics and publish it (from ``staged`` when it is on disk already)."""
    reporter.details["train"] = {**reporter.details.get("train", {"steps": 0}), "fuse": spec.fuse,
                                 "prior": {"scale": fused.prior_scale, "logit_weight": fused.logit_weight, **fit}}
    passed = apply_gate(spec, before, after, reporter, n_evals, rerank_depth=spec.rerank_depth)
    return _publish(job_id, collection, spec, store, data_dir, reporter, fused, student, passed, staged=staged)


def _staging_dir(data_dir: str, collection: str, job_id: str) -> Path:
    """A fresh hidden directory beside the collection's teachers: written there, renamed into place."""
    teachers = Path(data_dir) / "collections" / collection / "teachers"
    teachers.mkdir(parents=True, exist_ok=True)
    return teachers / f".tmp-{job_id}-{uuid.uuid4().hex[:6]}"


def _train_folds(spec: JobSpec, snap: Snapshot, pairs: list, enc, corpus: np.ndarray, reporter: Reporter,
                 device: str) -> list[tuple]:
    """Fine-tune one bi-encoder per fold from the live one, on the training pairs outside that fold,
    as an encoder job with this job's epochs, batch size, steps, mining and learning rate would
    (negatives mined once by the live bi-encoder, the modality's batch grouping). With ``tune_fuse``
    a copy of the fuse bi-encoder is fine-tuned the same way on the same pairs. Without ``folds``
    (``tune_fuse`` alone) there is one "fold" that holds nothing out. Returns (the live model's fold
    copy, the fuse model's or None) per fold."""
    k = spec.folds or 1  # tune_fuse without folds: one run of each model on every pair
    espec = spec.model_copy(update={"kind": "encoder", "fuse": None, "folds": None, "distill": None,
                                    "mining": spec.mining.model_copy(update={
                                        "neighbour_group": spec.mining.group_for(snap.modality),
                                        "denoise": False, "refresh_every": 0})})
    fold = [fold_of(p.query, k) for p in pairs] if k > 1 else [-1] * len(pairs)  # -1: no pair is held out
    sizes = [fold.count(f) for f in range(k)]
    if k > 1 and min(sizes) == 0:
        raise ValueError(f"folds: {k} folds of {len(pairs)} training pairs leave fold {sizes.index(0)} empty; "
                         "use fewer folds or more pairs")
    reporter.enter("mine")
    texts = snap.train_texts or snap.texts
    mine_corpus = mining_corpus(corpus, snap, texts, enc, reporter)
    negatives, stats = mine(enc.encode([p.query for p in pairs]).vectors, mine_corpus, texts, pairs, espec.mining)
    reporter.details["mining"] = stats.summary()
    reporter.enter("train")
    group = espec.mining.neighbour_group or 0
    models, runs = [], []
    for f in range(k):
        idx = [i for i in range(len(pairs)) if fold[i] != f]
        trained = []
        for source, what in ((snap.encoder_source, ""), *(((spec.fuse, ", fuse model"),) if spec.tune_fuse else ())):
            model = load_model(source, device, spec.max_seq_length)

            def progress(p: Progress, f: int = f, what: str = what) -> None:
                reporter.on_progress(p)
                reporter.progress["unit"] = f"steps ({f'fold {f + 1} of {k}' if k > 1 else 'all pairs'}{what})"

            runs.append({"fold": f, "held_out": sizes[f], **({"model": "fuse"} if what else {}), **fine_tune(
                model, [pairs[i] for i in idx], texts, [negatives[i] for i in idx], espec, on_progress=progress,
                should_stop=reporter.should_stop, device=device,
                positive_vectors=mine_corpus[[pairs[i].positive for i in idx]] if group > 1 else None)})
            trained.append(model)
            reporter.details["train"] = {"steps": sum(r["steps"] for r in runs), "folds": runs}
        models.append((trained[0], trained[1] if spec.tune_fuse else None))
    return models


def _publish(job_id: str, collection: str, spec: JobSpec, store: DocumentStore, data_dir: str, reporter: Reporter,
             teacher: CrossEncoderScorer | FusedScorer | FoldedScorer, student, passed: bool,
             staged: Path | None = None) -> JobResult:
    """Write the teacher directory atomically (tmp, fsync, rename) and name it the collection's
    teacher when it passed the gate. ``staged``: the teacher is written there already."""
    tmp = staged if staged is not None else _staging_dir(data_dir, collection, job_id)
    final = tmp.parent / job_id
    try:
        reporter.enter("publish")  # a cancel here must not leave a staged teacher behind
        if staged is None:
            teacher.save(tmp, save_prior=lambda path: save_model(student, path))
        (tmp / "metrics.json").write_text(json.dumps(reporter.metrics))
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reporter.details["teacher_path"] = str(final)
    if passed and spec.activate:
        reporter.check()
        store.set_teacher(collection, str(final), {"job": job_id, **reporter.metrics})
    reporter.details["activated"] = bool(passed and spec.activate)
    reporter.enter("done")
    return JobResult("succeeded" if passed else "rejected", None, reporter.metrics)
