"""Logo views: synthetic photos of a reference, multi-view training, fusion fitting and calibration.

One-shot identification has one clean image per brand and must recognise photos of it. The
trainer manufactures those photos: :func:`make_view` warps, recolours, occludes and pastes the
mark onto procedural backgrounds and degrades it like a camera would (blur, noise, JPEG).
Two disjoint families exist so evaluation is honest:

* ``"train"``: linear gradients, smooth value noise, random-shape clutter and flat noisy
  colour backgrounds; Gaussian blur; moderate geometry.
* ``"wild"`` (benchmark queries and held-out calibration views only): background generators the
  training never uses (sinusoid plasma, woven/striped textile, bokeh discs, a horizon "scene"),
  uneven illumination, motion blur, stronger perspective and harsher JPEG.

:func:`train_views` fine-tunes the visual encoder with multi-view InfoNCE (supervised
contrastive form): every batch holds, for a set of brands, the clean reference and several
views; all items of one brand are positives of each other, everything else is a negative.
Hard negatives come from batch composition: each epoch the references are embedded with the
current weights and batches are filled with groups of mutually nearest brands, so a batch asks
the model to tell look-alikes apart. CPU cost is kept low by caching: the K views per brand are
rendered once and pushed once through the frozen trunk (``VisualEncoder.trunk``); each step then
runs only the trainable tail (last MBConv blocks, head conv, projection) on the cached maps.

:func:`fit_fusion` picks ``w_text`` on held-out views, :func:`calibrate_threshold` picks the
open-set threshold at a target false-accept rate, and :func:`open_set_metrics` reports top-1,
top-5, AUROC and the false-accept rate at 95% true-accept.

Open-set definitions used throughout: a query is *accepted* when its best fused score is >= the
threshold. True-accept rate = accepted known-brand queries / known-brand queries; false-accept
rate = accepted unseen-brand queries / unseen-brand queries; AUROC separates the best scores of
the two groups. (An accepted known query can still name the wrong brand; top-1 measures that.)
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from index.logo import crop_to_content
from trainer.mining import neighbour_batches

log = logging.getLogger("strop.views")

FAMILIES = ("train", "wild")


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewParams:
    scale: tuple[float, float]  # logo's longer side / canvas side
    rotate: float  # max |degrees|
    perspective: float  # max corner jitter, fraction of the logo side
    recolour_p: float
    plate_p: float  # paste the reference with its own background plate (a sign, a sticker)
    occlude_p: float
    occlude_max: float  # occluder area / logo area
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    saturation: tuple[float, float]
    hue: float
    blur_p: float
    blur: tuple[float, float]
    noise_p: float
    noise: tuple[float, float]
    jpeg_p: float
    jpeg: tuple[int, int]
    out_of_frame: float  # max fraction of the logo allowed outside the canvas
    light_p: float = 0.0  # uneven illumination (wild only)


PARAMS = {
    "train": ViewParams(scale=(0.4, 0.95), rotate=20, perspective=0.10, recolour_p=0.2, plate_p=0.3,
                        occlude_p=0.3, occlude_max=0.2, brightness=(0.7, 1.3), contrast=(0.7, 1.3),
                        saturation=(0.6, 1.4), hue=0.04, blur_p=0.4, blur=(0.3, 1.4), noise_p=0.4,
                        noise=(2, 10), jpeg_p=0.5, jpeg=(35, 90), out_of_frame=0.12),
    "wild": ViewParams(scale=(0.35, 0.85), rotate=25, perspective=0.14, recolour_p=0.1, plate_p=0.3,
                       occlude_p=0.3, occlude_max=0.2, brightness=(0.65, 1.35), contrast=(0.6, 1.3),
                       saturation=(0.5, 1.5), hue=0.05, blur_p=0.5, blur=(0.6, 1.8), noise_p=0.5,
                       noise=(3, 12), jpeg_p=0.7, jpeg=(25, 75), out_of_frame=0.15, light_p=0.6),
}


def foreground(img: Image.Image) -> Image.Image:
    """RGBA crop of the mark: alpha from the image, or from the difference to its border colour."""
    if img.mode in ("RGBA", "LA") and np.asarray(img.getchannel("A")).min() < 250:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A")).astype(np.float32) / 255.0
    else:
        rgba = img.convert("RGBA")
        a = np.asarray(img.convert("RGB")).astype(np.int16)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        bg = np.median(border, axis=0)
        diff = np.abs(a - bg).max(axis=2).astype(np.float32)
        alpha = np.clip((diff - 16.0) / 48.0, 0.0, 1.0)
    ys, xs = np.nonzero(alpha > 0.1)
    if len(ys) == 0:  # blank image: the whole thing is the "mark"
        return img.convert("RGBA")
    arr = np.asarray(rgba).copy()
    arr[:, :, 3] = (alpha * 255).astype(np.uint8)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = max(2, int(0.04 * max(y1 - y0, x1 - x0)))
    h, w = alpha.shape
    y0, y1, x0, x1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
    return Image.fromarray(arr[y0:y1, x0:x1], "RGBA")


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` back to input points ``src``."""
    a, b = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.asarray(a, float), np.asarray(b, float)).tolist()


def _warp(logo: Image.Image, rng: np.random.Generator, p: ViewParams) -> Image.Image:
    logo = logo.rotate(float(rng.uniform(-p.rotate, p.rotate)), resample=Image.Resampling.BICUBIC, expand=True)
    w, h = logo.size
    j = p.perspective * max(w, h)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    dst = src + rng.uniform(-j, j, size=(4, 2))
    dst -= dst.min(axis=0)
    ow, oh = int(math.ceil(dst[:, 0].max())) + 1, int(math.ceil(dst[:, 1].max())) + 1
    return logo.transform((ow, oh), Image.Transform.PERSPECTIVE, _perspective_coeffs(src, dst),
                          Image.Resampling.BICUBIC)


# -- backgrounds ----------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), "RGB")
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)).astype(np.float32)


def _bg_gradient(rng: np.random.Generator, n: int) -> np.ndarray:
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:n, 0:n] / n
    t = np.clip((np.cos(ang) * xx + np.sin(ang) * yy + 1) / 2, 0, 1)[..., None]
    return c0 * (1 - t) + c1 * t


def _bg_value_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    a = _smooth_noise(rng, n, int(rng.integers(3, 12)))
    return 0.6 * a + 0.4 * _smooth_noise(rng, n, int(rng.integers(12, 40)))


def _bg_clutter(rng: np.random.Generator, n: int) -> np.ndarray:
    img = Image.fromarray(_bg_gradient(rng, n).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        x0, y0 = rng.integers(-n // 4, n, 2)
        x1, y1 = x0 + rng.integers(8, n // 2), y0 + rng.integers(8, n // 2)
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=_colour(rng))
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], fill=_colour(rng))
        else:
            d.line([x0, y0, x1, y1], fill=_colour(rng), width=int(rng.integers(1, 6)))
    return np.asarray(img).astype(np.float32)


def _bg_flat(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array(_colour(rng), np.float32)[None, None, :] + rng.normal(0, rng.uniform(2, 20), (n, n, 3))


def _bg_plasma(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    out = np.zeros((n, n, 3), np.float32)
    for c in range(3):
        v = np.zeros((n, n))
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 2 * np.pi)
            v += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        out[..., c] = 128 + 40 * v * rng.uniform(0.5, 1.2)
    return out


def _bg_textile(rng: np.random.Generator, n: int) -> np.ndarray:
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(4, 18)
    u = np.cos(ang) * xx + np.sin(ang) * yy
    v = -np.sin(ang) * xx + np.cos(ang) * yy
    weave = (np.sin(2 * np.pi * u / period) > 0) ^ (np.sin(2 * np.pi * v / (period * rng.uniform(0.8, 2.5))) > 0)
    t = weave[..., None].astype(np.float32)
    return c0 * t + c1 * (1 - t) + rng.normal(0, 6, (n, n, 3))


def _bg_bokeh(rng: np.random.Generator, n: int) -> np.ndarray:
    base = _bg_gradient(rng, n) * 0.5
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    over = Image.new("RGB", (n, n), (0, 0, 0))
    d = ImageDraw.Draw(over)
    for _ in range(int(rng.integers(6, 20))):
        r = int(rng.integers(n // 20, n // 5))
        x, y = rng.integers(0, n, 2)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    over = over.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(3, 8))))
    return np.clip(np.asarray(img, np.float32) + 0.7 * np.asarray(over, np.float32), 0, 255)


def _bg_scene(rng: np.random.Generator, n: int) -> np.ndarray:
    sky = _bg_gradient(rng, n)
    ground = _bg_plasma(rng, n) * 0.5 + np.array(_colour(rng), np.float32) * 0.5
    yy, xx = np.mgrid[0:n, 0:n]
    horizon = n * rng.uniform(0.3, 0.7) + (xx - n / 2) * np.tan(rng.uniform(-0.3, 0.3))
    return np.where((yy > horizon)[..., None], ground, sky)


BACKGROUNDS: dict[str, list[Callable[[np.random.Generator, int], np.ndarray]]] = {
    "train": [_bg_gradient, _bg_value_noise, _bg_clutter, _bg_flat],
    "wild": [_bg_plasma, _bg_textile, _bg_bokeh, _bg_scene],
}


# -- photometric ----------------------------------------------------------------------------------
def _shift_hue(img: Image.Image, amount: float) -> Image.Image:
    if abs(amount) < 1e-3:
        return img
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(amount * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _motion_blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    k = np.zeros((5, 5), np.float32)
    if rng.random() < 0.5:
        k[2, :] = 1
    else:
        np.fill_diagonal(k, 1)
    if rng.random() < 0.5:
        k = k.T[::-1]
    return img.filter(ImageFilter.Kernel((5, 5), k.flatten().tolist(), scale=float(k.sum())))


def _shrink(img: Image.Image, side: int) -> Image.Image:
    """``img`` with its longer side at most ``side`` (the warp then works on a small image)."""
    s = side / max(img.size)
    if s >= 1.0:
        return img
    return img.resize((max(2, round(img.width * s)), max(2, round(img.height * s))), Image.Resampling.BICUBIC)


def make_view(img: Image.Image, rng: np.random.Generator, family: str = "train", size: int = 224, *,
              fg: Image.Image | None = None) -> Image.Image:
    """One synthetic photo of the logo in ``img`` (RGB ``size`` x ``size``), deterministic given ``rng``.

    ``fg`` may pass ``foreground(img)`` when many views of one image are made. The mark is shrunk
    to about the canvas side before it is warped (the final mark is at most 0.95 of the side), so
    a view costs the same whatever the reference's resolution.
    """
    if family not in PARAMS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    p = PARAMS[family]
    work = int(1.1 * size)
    logo = _shrink(fg if fg is not None else foreground(img), work)
    r = rng.random()
    if r < p.plate_p:  # the reference around the mark as an opaque plate (sign, sticker, label)
        logo = _shrink(crop_to_content(img, margin=float(rng.uniform(0.08, 0.3))), work).convert("RGBA")
    elif r < p.plate_p + p.recolour_p:  # the mark printed in another colour
        solid = Image.new("RGBA", logo.size, _colour(rng) + (255,))
        solid.putalpha(logo.getchannel("A"))
        logo = solid
    logo = _warp(logo, rng, p)
    side = _u(rng, p.scale) * size
    s = side / max(logo.size)
    logo = logo.resize((max(2, round(logo.width * s)), max(2, round(logo.height * s))), Image.Resampling.BICUBIC)
    bg_fn = BACKGROUNDS[family][int(rng.integers(len(BACKGROUNDS[family])))]
    canvas = Image.fromarray(np.clip(bg_fn(rng, size), 0, 255).astype(np.uint8), "RGB")
    mx, my = int(p.out_of_frame * logo.width), int(p.out_of_frame * logo.height)
    x = int(rng.integers(-mx, max(-mx + 1, size - logo.width + mx + 1)))
    y = int(rng.integers(-my, max(-my + 1, size - logo.height + my + 1)))
    canvas.paste(logo, (x, y), logo)
    if rng.random() < p.occlude_p:
        d = ImageDraw.Draw(canvas)
        area = rng.uniform(0.05, p.occlude_max) * logo.width * logo.height
        ow = int(np.sqrt(area * rng.uniform(0.3, 3)))
        oh = int(area / max(ow, 1))
        ox = x + int(rng.integers(0, max(1, logo.width - ow // 2)))
        oy = y + int(rng.integers(0, max(1, logo.height - oh // 2)))
        shape = d.rectangle if (family == "train") == (rng.random() < 0.7) else d.ellipse
        shape([ox, oy, ox + ow, oy + oh], fill=_colour(rng))
    canvas = ImageEnhance.Brightness(canvas).enhance(_u(rng, p.brightness))
    canvas = ImageEnhance.Contrast(canvas).enhance(_u(rng, p.contrast))
    canvas = ImageEnhance.Color(canvas).enhance(_u(rng, p.saturation))
    canvas = _shift_hue(canvas, float(rng.uniform(-p.hue, p.hue)))
    arr = np.asarray(canvas).astype(np.float32)
    if rng.random() < p.light_p:
        yy, xx = np.mgrid[0:size, 0:size] / size
        cx, cy = rng.uniform(0, 1, 2)
        light = 1.25 - rng.uniform(0.3, 0.7) * np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        arr = arr * light[..., None]
    if rng.random() < p.noise_p:
        arr = arr + rng.normal(0, _u(rng, p.noise), arr.shape)
    canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < p.blur_p:
        if family == "wild" and rng.random() < 0.5:
            canvas = _motion_blur(canvas, rng)
        else:
            canvas = canvas.filter(ImageFilter.GaussianBlur(radius=_u(rng, p.blur)))
    if rng.random() < p.jpeg_p:
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=int(rng.integers(p.jpeg[0], p.jpeg[1] + 1)))
        canvas = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return canvas


def view_rng(seed: int, ref: int, view: int, family: str = "train") -> np.random.Generator:
    """The generator for view ``view`` of reference ``ref``: views are reproducible one by one."""
    return np.random.default_rng([seed, ref, view, FAMILIES.index(family)])


def make_views(images: Sequence[Image.Image], k: int, *, seed: int = 0, family: str = "train",
               size: int = 224, should_stop: Callable[[], bool] | None = None) -> list[list[Image.Image]]:
    """``k`` views of each image."""
    out = []
    for i, img in enumerate(images):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled while rendering views")
        fg = foreground(img)
        out.append([make_view(img, view_rng(seed, i, v, family), family, size, fg=fg) for v in range(k)])
    return out


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
class Cancelled(Exception):
    """``should_stop()`` returned True."""


@dataclass
class TrainReport:
    steps: int
    epochs: int
    seconds: float
    seconds_caching: float
    losses: list[float] = field(default_factory=list)
    stopped: bool = False


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE: each item's positives are the other items with its label."""
    sim = z @ z.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim.log_softmax(dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    npos = pos.sum(1).clamp(min=1)
    return -(logp.masked_fill(~pos, 0.0).sum(1) / npos).mean()


def train_views(model: Any, references: Sequence[Image.Image], texts: Sequence[str | None] | None = None, *,
                views_per_ref: int = 8, epochs: int = 10, batch_size: int = 64, views_per_step: int = 3,
                lr: float = 1e-3, backbone_lr_scale: float = 0.3, temperature: float = 0.07,
                hard_negatives: bool = True, group: int = 8, seed: int = 0, view_size: int = 224,
                views: Sequence[Sequence[Image.Image]] | None = None,
                progress_cb: Callable[[int, int, float], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> TrainReport:
    """Fine-tune ``model`` (a ``VisualEncoder``) on augmented views of ``references``; in place.

    ``batch_size`` counts brands per step; each brand contributes its reference and
    ``views_per_step`` of its ``views_per_ref`` cached views. ``views`` may pass pre-rendered
    views (the benchmark caches them). ``texts`` is accepted for the job API's symmetry and unused
    (the text view is not trained). ``progress_cb(step, total, loss)`` is called after every step;
    ``should_stop()`` is polled between batches (also while rendering and caching), and training
    returns early with ``stopped=True``.
    """
    del texts
    t0 = time.perf_counter()
    stop = should_stop or (lambda: False)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(references)
    if n < 2:
        raise ValueError(f"training needs at least 2 references (brands), got {n}")
    report = TrainReport(0, 0, 0.0, 0.0)
    references = [crop_to_content(r) for r in references]  # as LogoModel.embed_references sees them
    try:
        if views is None:
            views = make_views(references, views_per_ref, seed=seed, family="train", size=view_size,
                               should_stop=stop)
        k = min(len(v) for v in views)
        ref_cache = _cache_trunk(model, list(references), stop)
        flat = [im for vs in views for im in vs[:k]]
        view_cache = _cache_trunk(model, flat, stop).reshape(n, k, *ref_cache.shape[1:])
    except Cancelled:
        report.stopped = True
        report.seconds = time.perf_counter() - t0
        return report
    report.seconds_caching = time.perf_counter() - t0
    log.info("cached trunk features for %d references x %d views in %.1fs (%.0f MB)", n, k,
             report.seconds_caching, (ref_cache.numel() + view_cache.numel()) * ref_cache.element_size() / 2**20)

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
    step = 0
    for epoch in range(epochs):
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
            pick = np.stack([rng.choice(k, vps, replace=False) for _ in b])
            x = torch.cat([ref_cache[b], view_cache[b[:, None], pick].reshape(-1, *ref_cache.shape[1:])]).float()
            labels = torch.cat([torch.as_tensor(b), torch.as_tensor(np.repeat(b, vps))])
            z = model.tail(x)
            loss = supcon_loss(z, labels, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
    return torch.cat([model.tail(cache[s : s + chunk].float()) for s in range(0, len(cache), chunk)]).numpy()


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
    """Choose ``w_text`` on held-out views (``index.logo.Embedded`` gallery/known/unknown).

    ``objective`` "top1" maximises top-1 (AUROC breaks ties), "auroc" the reverse. Returns the
    best weight and the whole grid's table.
    """
    from index.logo import fused_scores

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
