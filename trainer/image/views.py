"""Logo views: multi-view training, fusion fitting and calibration.

One-shot identification has one clean image per brand and must recognise photos of it. The
trainer manufactures those photos with ``strop.index.image.views.make_view`` (re-exported here): the
``"train"`` family for training, the disjoint ``"wild"`` family for benchmark queries and
held-out calibration only.

:func:`train_views` fine-tunes the visual encoder with multi-view InfoNCE (supervised
contrastive form): every batch holds, for a set of brands, the clean reference and several
views; all items of one brand are positives of each other, everything else is a negative.
Hard negatives come from batch composition: each epoch the references are embedded with the
current weights and batches are filled with groups of mutually nearest brands, so a batch asks
the model to tell look-alikes apart. CPU cost is kept low by caching: the K views per brand are
rendered once and pushed once through the frozen trunk (``VisualEncoder.trunk``); each step then
runs only the trainable tail (last MBConv blocks, head conv, projection) on the cached maps.

On a GPU the same loop can afford more: ``device="cuda"`` trains there (under autocast), and
``fresh_views=True`` renders K new views of every brand each epoch and pushes them through the
trunk again, so no view is seen twice. That costs a render and a trunk pass per view per epoch,
which the CPU recipe avoids; the CPU recipe stays the default.

:func:`fit_fusion` picks ``w_text`` on held-out views, :func:`calibrate_threshold` picks the
open-set threshold at a target false-accept rate, and :func:`open_set_metrics` reports top-1,
top-5, AUROC and the false-accept rate at 95% true-accept.

Open-set definitions used throughout: a query is *accepted* when its best fused score is >= the
threshold. True-accept rate = accepted known-brand queries / known-brand queries; false-accept
rate = accepted unseen-brand queries / unseen-brand queries; AUROC separates the best scores of
the two groups. (An accepted known query can still name the wrong brand; top-1 measures that.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from strop.index.image.logo import crop_to_content
from strop.index.image.views import (  # noqa: F401 - the augmentation, re-exported for the trainer's callers
    BACKGROUNDS,
    FAMILIES,
    PARAMS,
    Cancelled,
    ViewParams,
    foreground,
    make_view,
    make_views,
    view_rng,
)
from strop.trainer.mining import neighbour_batches

log = logging.getLogger("strop.views")

# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    steps: int
    epochs: int
    seconds: float
    seconds_caching: float  # rendering views and pushing them through the trunk, every epoch included
    losses: list[float] = field(default_factory=list)
    stopped: bool = False
    views_rendered: int = 0
    device: str = "cpu"


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE: each item's positives are the other items with its label."""
    sim = z @ z.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim.log_softmax(dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    npos = pos.sum(1).clamp(min=1)
    return -(logp.masked_fill(~pos, 0.0).sum(1) / npos).mean()


def train_views(model: Any, references: Sequence[Image.Image], texts: Sequence[str | None] | None = None, *,
                views_per_ref: int = 8, epochs: int = 10, batch_size: int = 64, views_per_step: int = 3,
                lr: float = 1e-3, backbone_lr_scale: float = 0.3, temperature: float = 0.07,
                hard_negatives: bool = True, group: int = 8, seed: int = 0, view_size: int = 224,
                views: Sequence[Sequence[Image.Image]] | None = None, fresh_views: bool = False,
                device: str = "cpu",
                progress_cb: Callable[[int, int, float], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> TrainReport:
    """Fine-tune ``model`` (a ``VisualEncoder``) on augmented views of ``references``; in place.

    ``batch_size`` counts brands per step; each brand contributes its reference and
    ``views_per_step`` of its ``views_per_ref`` cached views. ``views`` may pass pre-rendered
    views (the benchmark caches them). ``texts`` is accepted for the job API's symmetry and unused
    (the text view is not trained). ``progress_cb(step, total, loss)`` is called after every step;
    ``should_stop()`` is polled between batches (also while rendering and caching), and training
    returns early with ``stopped=True``.

    ``fresh_views`` renders ``views_per_ref`` new views per brand before every epoch after the
    first (views ``epoch * K .. epoch * K + K - 1`` of each brand's stream, so none repeats).
    ``device`` is where training runs (``"cuda"``: autocast in bf16 or fp16); the model is back on
    the CPU when this returns.
    """
    del texts
    from strop.trainer.train import amp_dtype  # the text trainer's autocast choice

    t0 = time.perf_counter()
    stop = should_stop or (lambda: False)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(references)
    if n < 2:
        raise ValueError(f"training needs at least 2 references (brands), got {n}")
    report = TrainReport(0, 0, 0.0, 0.0, device=str(device))
    references = [crop_to_content(r) for r in references]  # as LogoModel.embed_references sees them
    model.to(device)
    try:
        return _train(model, references, report, t0, stop, rng, views_per_ref=views_per_ref, epochs=epochs,
                      batch_size=batch_size, views_per_step=views_per_step, lr=lr,
                      backbone_lr_scale=backbone_lr_scale, temperature=temperature,
                      hard_negatives=hard_negatives, group=group, seed=seed, view_size=view_size, views=views,
                      fresh_views=fresh_views, amp=amp_dtype(str(device)), progress_cb=progress_cb)
    finally:
        model.to("cpu")
        model.eval()


def _views_through_trunk(model: Any, references: list[Image.Image], k: int, *, seed: int, view_size: int,
                         first: int, views: Sequence[Sequence[Image.Image]] | None,
                         stop: Callable[[], bool]) -> torch.Tensor:
    """Trunk outputs ``(n, k, ...)`` of ``k`` views per reference (rendered here unless ``views`` are given)."""
    if views is None:
        views = make_views(references, k, seed=seed, family="train", size=view_size, should_stop=stop, first=first)
    cache = _cache_trunk(model, [im for vs in views for im in vs[:k]], stop)
    return cache.reshape(len(references), k, *cache.shape[1:])


def _train(model: Any, references: list[Image.Image], report: TrainReport, t0: float, stop: Callable[[], bool],
           rng: np.random.Generator, *, views_per_ref: int, epochs: int, batch_size: int, views_per_step: int,
           lr: float, backbone_lr_scale: float, temperature: float, hard_negatives: bool, group: int, seed: int,
           view_size: int, views: Sequence[Sequence[Image.Image]] | None, fresh_views: bool,
           amp: torch.dtype | None, progress_cb: Callable[[int, int, float], None] | None) -> TrainReport:
    n = len(references)
    dev = model.device
    try:
        k = min(len(v) for v in views) if views is not None else views_per_ref
        ref_cache = _cache_trunk(model, list(references), stop)
        view_cache = _views_through_trunk(model, references, k, seed=seed, view_size=view_size, first=0,
                                          views=views, stop=stop)
    except Cancelled:
        report.stopped = True
        report.seconds = time.perf_counter() - t0
        return report
    report.views_rendered = 0 if views is not None else n * k
    report.seconds_caching = time.perf_counter() - t0
    log.info("cached trunk features for %d references x %d views in %.1fs (%.0f MB, %s)", n, k,
             report.seconds_caching, (ref_cache.numel() + view_cache.numel()) * ref_cache.element_size() / 2**20,
             dev)

    head_params = list(model.head.parameters()) + ([model.gem_p] if model.gem_p.requires_grad else [])
    head_ids = {id(p) for p in head_params}
    bb_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": lr}]
    if bb_params:
        groups.append({"params": bb_params, "lr": lr * backbone_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    vps = min(views_per_step, k)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)  # pass-through unless fp16
    step = 0
    for epoch in range(epochs):
        if fresh_views and epoch > 0:
            t1 = time.perf_counter()
            try:
                view_cache = _views_through_trunk(model, references, k, seed=seed, view_size=view_size,
                                                  first=epoch * k, views=None, stop=stop)
            except Cancelled:
                report.stopped = True
                break
            report.views_rendered += n * k
            report.seconds_caching += time.perf_counter() - t1
        if hard_negatives and group > 1:
            ref_emb = _tail_embed(model, ref_cache)
            batches = neighbour_batches(ref_emb, batch_size, group, rng)
        else:
            perm = rng.permutation(n)
            batches = [perm[s : s + batch_size] for s in range(0, n, batch_size)]
        model.train()
        for b in batches:
            if stop():
                report.stopped = True
                break
            pick = torch.as_tensor(np.stack([rng.choice(k, vps, replace=False) for _ in b]), device=dev)
            bt = torch.as_tensor(b, device=dev)
            x = torch.cat([ref_cache[bt], view_cache[bt[:, None], pick].reshape(-1, *ref_cache.shape[1:])]).float()
            labels = torch.cat([bt, bt.repeat_interleave(vps)])
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                z = model.tail(x)
            loss = supcon_loss(z.float(), labels, temperature)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scale = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(opt)
            scaler.update()
            if scale is None or scaler.get_scale() >= scale:  # a step skipped on fp16 overflow leaves the LR
                sched.step()
            step += 1
            report.losses.append(loss.item())
            if progress_cb is not None:
                progress_cb(step, total, report.losses[-1])
        model.eval()
        report.epochs = epoch + 1
        if report.stopped:
            break
        log.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs,
                 float(np.mean(report.losses[-len(batches):])) if batches else float("nan"))
    report.steps = step
    report.seconds = time.perf_counter() - t0
    return report


def _cache_trunk(model: Any, images: list[Image.Image], stop: Callable[[], bool], chunk: int = 64) -> torch.Tensor:
    parts = []
    for s in range(0, len(images), chunk):
        if stop():
            raise Cancelled("cancelled while caching")
        parts.append(model.encode_trunk(images[s : s + chunk]))
    return torch.cat(parts)


@torch.inference_mode()
def _tail_embed(model: Any, cache: torch.Tensor, chunk: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model.tail(cache[s : s + chunk].float()) for s in range(0, len(cache), chunk)]).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# Metrics, fusion and calibration
# ------------------------------------------------------------------------------------------------
def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true column ``labels[i]`` is among the ``k`` highest scores."""
    if len(scores) == 0:
        return float("nan")
    true = scores[np.arange(len(scores)), labels]
    better = (scores > true[:, None]).sum(axis=1)
    return float((better < k).mean())


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of ``pos`` (should score high) vs ``neg`` (Mann-Whitney, ties = 1/2)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def far_at_tar(known_best: np.ndarray, unknown_best: np.ndarray, tar: float = 0.95) -> tuple[float, float]:
    """False-accept rate when the threshold accepts ``tar`` of known queries; returns ``(far, threshold)``."""
    if len(known_best) == 0 or len(unknown_best) == 0:
        return float("nan"), float("nan")
    thr = float(np.quantile(np.asarray(known_best), 1 - tar, method="lower"))
    return float((np.asarray(unknown_best) >= thr).mean()), thr


def calibrate_threshold(scores_known: np.ndarray, scores_unknown: np.ndarray,
                        max_false_accept: float = 0.05) -> dict[str, float]:
    """Lowest threshold whose false-accept rate on ``scores_unknown`` is <= ``max_false_accept``.

    ``scores_known`` are best scores of held-out views of gallery brands (ideally those whose
    top-1 is correct); they only report the true-accept rate the threshold keeps.
    """
    unk = np.sort(np.asarray(scores_unknown, float))[::-1]
    known = np.asarray(scores_known, float)
    if len(unk) == 0:
        thr = float(known.min()) if len(known) else 0.0
    else:
        allowed = int(math.floor(max_false_accept * len(unk) + 1e-9))
        # accept strictly above the (allowed+1)-th highest unknown score
        thr = float(np.nextafter(unk[allowed], np.inf)) if allowed < len(unk) else float(unk[-1])
    return {"threshold": thr,
            "false_accept": float((np.asarray(scores_unknown) >= thr).mean()) if len(unk) else 0.0,
            "true_accept": float((known >= thr).mean()) if len(known) else float("nan")}


def open_set_metrics(fused_known: np.ndarray, labels: np.ndarray, fused_unknown: np.ndarray,
                     threshold: float | None = None) -> dict[str, float]:
    """top-1/top-5 (known queries), AUROC and FAR at 95% TAR of best scores, and accept stats at ``threshold``."""
    kb = fused_known.max(axis=1) if len(fused_known) else np.empty(0)
    ub = fused_unknown.max(axis=1) if len(fused_unknown) else np.empty(0)
    far95, thr95 = far_at_tar(kb, ub, 0.95)
    out = {"top1": topk_accuracy(fused_known, labels, 1), "top5": topk_accuracy(fused_known, labels, 5),
           "auroc": auroc(kb, ub), "far_at_95tar": far95, "threshold_at_95tar": thr95,
           "n_known": int(len(kb)), "n_unknown": int(len(ub))}
    if threshold is not None and len(kb):
        correct = fused_known.argmax(axis=1) == labels
        out.update({"threshold": float(threshold), "true_accept": float((kb >= threshold).mean()),
                    "false_accept": float((ub >= threshold).mean()) if len(ub) else float("nan"),
                    "accepted_correct": float(((kb >= threshold) & correct).mean())})
    return out


def fit_fusion(gallery: Any, known: Any, labels: np.ndarray, unknown: Any | None = None, *,
               grid: Sequence[float] = tuple(np.round(np.linspace(0.0, 0.9, 10), 2)),
               objective: str = "top1") -> tuple[float, list[dict[str, float]]]:
    """Choose ``w_text`` on held-out views (``strop.index.image.logo.Embedded`` gallery/known/unknown).

    ``objective`` "top1" maximises top-1 (AUROC breaks ties), "auroc" the reverse. Returns the
    best weight and the whole grid's table.
    """
    from strop.index.image.logo import fused_scores

    table = []
    for w in grid:
        fk = fused_scores(gallery, known, float(w))[0]
        fu = fused_scores(gallery, unknown, float(w))[0] if unknown is not None and len(unknown) else np.empty((0, 0))
        m = open_set_metrics(fk, labels, fu)
        table.append({"w_text": float(w), **{k: m[k] for k in ("top1", "top5", "auroc", "far_at_95tar")}})
    key = (lambda r: (r["top1"], _nz(r["auroc"]))) if objective == "top1" else (lambda r: (_nz(r["auroc"]), r["top1"]))
    best = max(table, key=key)
    return best["w_text"], table


def _nz(x: float) -> float:
    return -1.0 if x != x else x  # NaN sorts last
