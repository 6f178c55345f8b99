"""Synthetic photos of a logo: the augmentation behind training views, held-out views and gallery prototypes.

One-shot identification has one clean image per brand and must recognise photos of it.
:func:`make_view` warps, recolours, occludes and pastes the mark onto procedural backgrounds
and degrades it like a camera would (blur, noise, JPEG). Two disjoint families exist so
evaluation is honest:

* ``"train"``: linear gradients, smooth value noise, random-shape clutter and flat noisy
  colour backgrounds; Gaussian blur; moderate geometry. Training views, the views jobs'
  held-out views, and the views a gallery prototype averages (``strop.index.image.logo.LogoModel``).
* ``"wild"`` (benchmark queries and held-out calibration views only): background generators the
  training never uses (sinusoid plasma, woven/striped textile, bokeh discs, a horizon "scene"),
  uneven illumination, motion blur, stronger perspective and harsher JPEG.

It lives in ``index`` because serving uses it too: a model with ``gallery_views`` embeds each
reference as the mean of the reference and some of its train-family views.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from strop.index.cancel import Cancelled
from strop.index.image.logo import crop_to_content

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
               size: int = 224, should_stop: Callable[[], bool] | None = None,
               first: int = 0) -> list[list[Image.Image]]:
    """``k`` views of each image: views ``first .. first + k - 1`` of its stream (:func:`view_rng`)."""
    out = []
    for i, img in enumerate(images):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled while rendering views")
        fg = foreground(img)
        out.append([make_view(img, view_rng(seed, i, v, family), family, size, fg=fg) for v in range(first, first + k)])
    return out
