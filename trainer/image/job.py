"""The views job of image collections: render views -> evaluate before -> train -> fit fusion and
threshold -> evaluate after -> gate -> publish.

One-shot logo identification has one reference image per brand, so the supervision is
synthetic: every reference yields K augmented views (``strop.trainer.image.views.make_views``) and the
visual encoder learns to map a brand's views onto its reference (multi-view InfoNCE, with
batches of mutually similar brands as hard negatives, ``strop.trainer.image.views.train_views``).

Held-out protocol, the same before and after training:

* a fraction ``views.holdout_brands`` of the references (at least one) is left out of training
  and out of the evaluation gallery: views of these are the *unknown* side (brands not in the
  gallery) for the open-set threshold;
* the other references are the training brands and the evaluation gallery; ``views.eval_views``
  held-out views of each (rendered with seeds training never uses) are the *known* queries.

On those views the job measures identification (``mrr@10``, ``recall@1`` = top-1,
``recall@10``, ``top5``) and open-set quality (AUROC, false accepts at 95% true accepts), fits
the fusion weight ``w_text`` and calibrates the threshold to ``open_set.max_false_accept``. The
gate compares ``spec.gate.metric`` before and after. The published version indexes every
reference, the held-out ones included (the encoder generalises across brands; they were only
withheld to measure that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from strop.index.image.decode import ImageError, decode_image
from strop.index.image.encoder import ImageEncoder
from strop.index.image.logo import Embedded, LogoModel, VisualConfig, VisualEncoder, fused_scores
from strop.index.image.verify import (
    Features,
    reference_features,
    reference_sidecar,
    verified_matrix,
    verify_top,
)
from strop.index.metrics import evaluate_rankings
from strop.trainer.data import snapshot
from strop.trainer.image.views import (
    calibrate_threshold,
    fit_fusion,
    make_views,
    open_set_metrics,
    train_views,
)
from strop.trainer.pipeline import JobContext, JobResult, Reporter, apply_gate, finish, publish
from strop.trainer.train import Cancelled, Progress

log = logging.getLogger("strop.views_job")

EVAL_SEED_OFFSET = 10_007  # held-out views never share a seed with training views


def _subset(e: Embedded, idx: np.ndarray) -> Embedded:
    return Embedded(e.visual[idx], e.text[idx], e.has_text[idx], [e.texts[i] for i in idx])


def _concat(parts: list[Embedded]) -> Embedded:
    return Embedded(np.vstack([p.visual for p in parts]), np.vstack([p.text for p in parts]),
                    np.concatenate([p.has_text for p in parts]), [t for p in parts for t in p.texts])


def measure(model: LogoModel, gallery: Embedded, known: Embedded, labels: np.ndarray, unknown: Embedded,
            w_text: float, max_false_accept: float) -> dict[str, Any]:
    """Identification and open-set metrics of ``model``'s embeddings at fusion weight ``w_text``."""
    # float64: a threshold just above a float32 score must not round back onto it
    fk = fused_scores(gallery, known, w_text)[0].astype(np.float64)
    fu = fused_scores(gallery, unknown, w_text)[0].astype(np.float64)
    cal = calibrate_threshold(fk.max(axis=1), fu.max(axis=1), max_false_accept)
    osm = open_set_metrics(fk, labels, fu, cal["threshold"])
    rankings = [list(np.argsort(-row, kind="stable")[:10]) for row in fk]
    ir = evaluate_rankings(rankings, [[int(lab)] for lab in labels], k=10)
    out = {k: ir[k] for k in ("mrr@10", "recall@1", "recall@10", "ndcg@10", "n")}
    out.update({"top5": osm["top5"], "auroc": osm["auroc"], "far_at_95tar": osm["far_at_95tar"],
                "threshold": cal["threshold"], "false_accept": cal["false_accept"],
                "true_accept": cal["true_accept"], "w_text": w_text})
    return {k: (round(float(v), 5) if isinstance(v, float) else v) for k, v in out.items()}


def calibrate_verified(model: LogoModel, gallery: Embedded, known: Embedded, unknown: Embedded,
                       labels: np.ndarray, feats: list[Features], known_imgs: list[Any], unknown_imgs: list[Any],
                       max_false_accept: float) -> tuple[float, dict[str, Any]]:
    """The open-set threshold of verified scores (``strop.index.image.verify``), calibrated on the same
    held-out views as the fused threshold (``feats``: the gallery references' local features, in
    gallery order); returns it and the verified metrics."""
    cfg = model.verify
    w = model.fusion.w_text
    fk, fu = fused_scores(gallery, known, w)[0], fused_scores(gallery, unknown, w)[0]
    top_k, inl_k, mat_k, _ = verify_top(fk, known_imgs, feats, cfg)
    vk = verified_matrix(fk, top_k, inl_k, cfg, mat_k)
    top_u, inl_u, mat_u, ms = verify_top(fu, unknown_imgs, feats, cfg)
    vu = verified_matrix(fu, top_u, inl_u, cfg, mat_u)
    cal = calibrate_threshold(vk.max(axis=1), vu.max(axis=1), max_false_accept)
    osm = open_set_metrics(vk, labels, vu, cal["threshold"])
    out = {"recall@1": osm["top1"], "top5": osm["top5"], "auroc": osm["auroc"], "far_at_95tar": osm["far_at_95tar"],
           "threshold": cal["threshold"], "false_accept": cal["false_accept"], "true_accept": cal["true_accept"],
           "verify_ms": ms}
    rounded = {k: round(float(v), 5) for k, v in out.items()}
    return rounded["threshold"], rounded  # rounded as the fused threshold is (``measure``)


def run_views_job(ctx: JobContext) -> JobResult:
    """render views -> evaluate before -> train -> fit fusion and threshold -> evaluate after -> gate -> publish."""
    job_id, collection, spec, store, reporter = ctx.job_id, ctx.collection, ctx.spec, ctx.store, ctx.reporter
    data_dir, device, vstore = ctx.data_dir, ctx.device, ctx.vstore
    vs = spec.views

    reporter.enter("snapshot")
    snap = snapshot(store, data_dir, collection, job_id, ctx.remote)  # pinned for the job: retention keeps it
    docs = list(store.iter_documents(collection, max_seq=snap.watermark))
    images, texts, keep = [], [], []
    for i, d in enumerate(docs):
        try:
            images.append(decode_image(d.image or b""))
        except ImageError:
            continue  # stored before a stricter limit: it stays served as it was, untrained on
        texts.append(d.text)
        keep.append(i)
    n = len(images)
    reporter.details["snapshot"] = {"version": snap.version, "watermark": snap.watermark, "documents": len(docs),
                                    "usable_images": n}
    if n < 3:
        raise ValueError(f"a views job needs at least 3 decodable reference images, found {n}")

    reporter.enter("pairs")
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(n)
    n_out = max(1, int(round(vs.holdout_brands * n)))
    n_out = min(n_out, n - 2)
    held, train_idx = np.sort(perm[:n_out]), np.sort(perm[n_out:])
    stop = reporter.should_stop
    base = ImageEncoder.load(snap.encoder_source, device=device).model
    eval_views = make_views(images, vs.eval_views, seed=spec.seed + EVAL_SEED_OFFSET, family="train",
                            size=VisualConfig().image_size, should_stop=stop)
    known_imgs = [v for i in train_idx for v in eval_views[i]]
    labels = np.repeat(np.arange(len(train_idx)), vs.eval_views)
    unknown_imgs = [v for i in held for v in eval_views[i]]
    reporter.details["pairs"] = {"train_brands": len(train_idx), "held_out_brands": len(held),
                                 "known_views": len(known_imgs), "unknown_views": len(unknown_imgs)}

    reporter.enter("evaluate_before")
    # OCR depends only on the pixels: read every reference and held-out view once, reuse for both models.
    q_imgs = known_imgs + unknown_imgs
    ocr = chunked(lambda lo, hi: base._ocr((images + q_imgs)[lo:hi], None), len(images) + len(q_imgs),
                  reporter, "ocr")
    ref_ocr, q_ocr = ocr[: len(images)], ocr[len(images):]

    def embed(model: LogoModel) -> tuple[Embedded, Embedded, Embedded, Embedded]:
        refs = _concat(chunked(lambda lo, hi: [model.embed_references(images[lo:hi], texts[lo:hi],
                                                                      ocr_texts=ref_ocr[lo:hi])],
                               len(images), reporter, "references"))
        qs = _concat(chunked(lambda lo, hi: [model.embed_queries(q_imgs[lo:hi], ocr_texts=q_ocr[lo:hi])],
                             len(q_imgs), reporter, "views"))
        known = _subset(qs, np.arange(len(known_imgs)))
        unknown = _subset(qs, np.arange(len(known_imgs), len(q_imgs)))
        return refs, _subset(refs, train_idx), known, unknown

    _, gal0, known0, unknown0 = embed(base)
    before = measure(base, gal0, known0, labels, unknown0, base.fusion.w_text, spec.open_set.max_false_accept)
    reporter.metrics = {"before": before}

    reporter.enter("train")
    if base.visual.config.head == "linear":
        visual = base.visual  # continue from the served version's weights (a convolutional trunk: any size)
        if vs.image_size is not None:
            visual.config = replace(visual.config, image_size=vs.image_size)
    else:
        visual = VisualEncoder(VisualConfig(image_size=vs.image_size or VisualConfig.image_size), seed=spec.seed)

    rep = train_views(visual, [images[i] for i in train_idx], [texts[i] for i in train_idx],
                      views_per_ref=vs.views_per_ref, epochs=vs.epochs, batch_size=vs.batch_size,
                      lr=vs.learning_rate, hard_negatives=vs.hard_negatives, seed=spec.seed,
                      view_size=visual.config.image_size, fresh_views=vs.fresh_views, device=device,
                      progress_cb=_progress(reporter), should_stop=stop)
    if rep.stopped:
        raise Cancelled()
    reporter.details["train"] = {"steps": rep.steps, "epochs": rep.epochs, "seconds": round(rep.seconds, 2),
                                 "seconds_caching": round(rep.seconds_caching, 2),
                                 "device": rep.device, "views_rendered": rep.views_rendered,
                                 "image_size": visual.config.image_size,
                                 "loss": round(rep.losses[-1], 5) if rep.losses else None,
                                 "query_crops": list(vs.query_crops), "gallery_views": vs.gallery_views}

    reporter.enter("evaluate_after")
    model = LogoModel(visual, base.text_encoder, base.ocr, query_crops=vs.query_crops,
                      gallery_views=vs.gallery_views, verify=base.verify)
    refs1, gal1, known1, unknown1 = embed(model)
    w_text, grid = fit_fusion(gal1, known1, labels, unknown1) if model.text_encoder is not None else (0.0, [])
    after = measure(model, gal1, known1, labels, unknown1, w_text, spec.open_set.max_false_accept)
    model.fusion.w_text = w_text
    model.fusion.threshold = after["threshold"]
    # Local features of every reference, once: the gallery's calibrate the verified threshold, and all
    # are stored with the version.
    local = chunked(lambda lo, hi: [reference_features(im, model.verify) for im in images[lo:hi]], len(images),
                    reporter, "local features")
    model.fusion.verify_threshold, reporter.details["verified"] = calibrate_verified(
        model, gal1, known1, unknown1, labels, [local[i] for i in train_idx], known_imgs, unknown_imgs,
        spec.open_set.max_false_accept)
    model.fusion.metrics = after
    passed = apply_gate(spec, before, after, reporter, len(train_idx))  # held-out views per known brand
    reporter.details["fusion_grid"] = grid

    reporter.enter("publish")
    encoder = ImageEncoder(model, "views")
    snap.rids = np.asarray([docs[i].rid for i in keep], np.int64)  # the rows of refs1, in order
    vid = publish(store, vstore, snap, model, encoder, model.pack_gallery(refs1), job_id, reporter.metrics,
                  reporter, save_encoder=model.save,
                  sidecar=reference_sidecar(store, model.verify,
                                            known=dict(zip(snap.rids.tolist(), local, strict=True))))
    return finish(ctx, vid, passed and spec.activate, passed)


def chunked(fn: Callable[[int, int], list[Any]], n: int, reporter: Reporter, unit: str,
            chunk: int = 64) -> list[Any]:
    """``fn(lo, hi)`` over ``[0, n)`` in chunks, with progress and a cancel check between chunks."""
    out: list[Any] = []
    t0 = time.perf_counter()
    for lo in range(0, n, chunk):
        reporter.check()
        out.extend(fn(lo, min(n, lo + chunk)))
        done = min(n, lo + chunk)
        rate = done / max(time.perf_counter() - t0, 1e-6)
        reporter.progress = {"step": done, "total_steps": n, "loss": None, "eta_s": round((n - done) / rate, 1),
                             "unit": unit}
    return out


def _progress(reporter: Reporter) -> Callable[[int, int, float], None]:
    t0 = time.perf_counter()

    def cb(step: int, total: int, loss: float) -> None:
        elapsed = time.perf_counter() - t0
        reporter.on_progress(Progress(step, total, round(loss, 5), round(elapsed / max(step, 1) * (total - step), 1)))

    return cb
