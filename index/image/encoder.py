"""The image collections' encoder: a :class:`strop.index.image.logo.LogoModel` behind the text encoders' interface.

The service's micro-batcher, version builder and catch-up code all call
``encoder.encode(items)`` and read ``encoder.dim``; this adapter lets them drive a logo model
unchanged. Items are

* ``(image bytes or PIL image, text)``: a gallery document (its image and its brand text),
  embedded as the packed reference row ``[v, t]`` (``strop.index.image.logo.pack_gallery``);
* an image alone (bytes or PIL): a query, embedded as ``[w_visual v, w_text t]``
  (``strop.index.image.logo.pack_query``) so the index's inner product is the fused score.

Specs: ``"efficientnet-lite0"`` (also ``"logo"``, ``"image"``, ``"default"``) is the pretrained
ImageNet EfficientNet-Lite0 from its package with no learned head (the frozen baseline an image
collection starts from), the packaged MiniLM for the text view and rapidocr for OCR. A
directory holding ``logo.json`` is a trained model (a version written by a ``views`` job).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from strop.index.encoder import Encoder, EncodeResult
from strop.index.image.decode import decode_image

log = logging.getLogger("strop.image_encoder")

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
_ALIASES = {"efficientnet-lite0", "logo", "image", "default"}
# Fusion and open-set defaults of the untrained base model (the frozen backbone), which no job has
# calibrated yet: an even split of the two views, and a threshold between what a blank image
# (0.30) and a rotated JPEG of a reference (0.92) score against the test logos. Every views job
# fits its own w_text and calibrates its own threshold on held-out views.
BASE_W_TEXT = 0.5
BASE_THRESHOLD = 0.55

_text_encoders: dict[tuple[str, str], Encoder] = {}
_text_lock = threading.Lock()


def is_image_spec(spec: str | None) -> bool:
    """True for the image aliases and for directories holding a saved logo model."""
    if not spec:
        return False
    if spec.lower() in _ALIASES - {"default"}:
        return True
    p = Path(spec).expanduser()
    return (p / "logo.json").is_file()


def shared_text_encoder(spec: str | None, precision: str, device: str) -> Encoder:
    """One text encoder per (spec, precision) in the process, shared by every logo model version."""
    key = (spec or "default", precision)
    with _text_lock:
        enc = _text_encoders.get(key)
        if enc is None:
            enc = Encoder.load(spec, precision=precision, device=device)
            _text_encoders[key] = enc
        return enc


def as_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_image(bytes(item))
    raise TypeError(f"expected image bytes or a PIL image, got {type(item).__name__}")


class ImageEncoder:
    """Encoder-compatible wrapper of a LogoModel (not re-entrant, like ``Encoder``)."""

    precision = "fp32"
    max_seq_length = 0

    def __init__(self, model: Any, name: str):
        self.model = model
        self.name = name
        self.dim = int(model.dim)
        self.dim_visual = int(model.dim_visual)
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, spec: str | None, precision: str = "auto", device: str = "cpu") -> ImageEncoder:
        from strop.index.image.logo import Fusion, LogoModel, OcrReader, VisualConfig, VisualEncoder

        if spec is None or spec.lower() in _ALIASES:
            visual = VisualEncoder(VisualConfig(head="identity"))
            text = shared_text_encoder(None, precision, device)
            model = LogoModel(visual, text, OcrReader(), Fusion(w_text=BASE_W_TEXT, threshold=BASE_THRESHOLD))
            return cls(model, DEFAULT_IMAGE_ENCODER)
        d = Path(spec).expanduser()
        meta = json.loads((d / "logo.json").read_text())
        text = shared_text_encoder(meta.get("text_encoder"), precision, device) if meta.get("text_encoder") else None
        model = LogoModel.load(d, text_encoder=text)
        return cls(model, str(d))

    # -- the Encoder interface ----------------------------------------------------------
    @property
    def n_crops(self) -> int:
        """Rows per query: 1, or the number of crops a multi-crop model embeds a query as."""
        return int(getattr(self.model, "n_crops", 1))

    def encode(self, items: Sequence[Any], batch_size: int = 32) -> EncodeResult:
        """``(n, dim)`` rows; a multi-crop model's queries come back as ``(n, crops, dim)``.

        References and queries of a multi-crop model go in separate calls (their shapes differ).
        """
        refs = [i for i, it in enumerate(items) if isinstance(it, tuple)]
        queries = [i for i, it in enumerate(items) if not isinstance(it, tuple)]
        c = self.n_crops
        if c > 1 and refs and queries:
            raise ValueError("a multi-crop logo model encodes references and queries in separate calls")
        out = np.zeros((len(items), c, self.dim) if c > 1 and queries else (len(items), self.dim), np.float32)
        with self._lock:
            if refs:
                imgs = [as_image(items[i][0]) for i in refs]
                emb = self.model.embed_references(imgs, [items[i][1] or None for i in refs])
                out[refs] = self.model.pack_gallery(emb)
            if queries:
                emb = self.model.embed_queries([as_image(items[i]) for i in queries])
                out[queries] = self.model.pack_query(emb)
        return EncodeResult(out, 0)

    def count_truncated(self, items: Sequence[Any]) -> int:
        return 0

    def fingerprint(self) -> str:
        return f"{self.name}:{self.precision}"

    # -- search-side helpers ------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.model.fusion.threshold)

    @property
    def verify_threshold(self) -> float:
        """Open-set threshold of verified scores: calibrated by a views job, else the fused threshold."""
        t = self.model.fusion.verify_threshold
        return float(self.model.fusion.threshold if t is None else t)

    @property
    def verify_config(self) -> Any:
        return self.model.verify

    @property
    def w_text(self) -> float:
        return float(self.model.fusion.w_text)

    def split(self, query_rows: np.ndarray, doc_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-hit ``(visual cosine, text cosine)`` from a packed query (one row, or one per crop) and gallery rows.

        A query row is ``[w_v v, w_t t]`` (or ``[v, 0]`` without OCR text), so the unit views are
        recovered by dividing the weights back out. With crops, the visual cosine is the best crop's
        (every crop carries the same text part, so that crop also has the best fused score).
        """
        q = np.asarray(query_rows, np.float32).reshape(-1, self.dim)
        dv = self.dim_visual
        qv, qt = q[:, :dv], q[0, dv:]
        has_text = bool(np.any(qt))
        wv = (1.0 - self.w_text) if has_text else 1.0
        wt = self.w_text if has_text else 0.0
        vis = (doc_rows[:, :dv] @ (qv / wv if wv > 0 else qv).T).max(axis=1)
        txt = doc_rows[:, dv:] @ (qt / wt) if wt > 0 else np.zeros(len(doc_rows), np.float32)
        return vis.astype(np.float32), txt.astype(np.float32)

    def search_crops(self, search: Any, query_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rids)`` of a query given as one row or several crop rows.

        ``search(rows, k)`` is the live index's search. Each crop is searched for its own top ``k``
        and a document keeps its best crop's score: exact, because a document in the best-crop top
        ``k`` is in the top ``k`` of the crop where it scores best.
        """
        rows = np.asarray(query_rows, np.float32).reshape(-1, self.dim)
        scores, rids = search(rows, k)
        best: dict[int, float] = {}
        for s, r in zip(scores.ravel().tolist(), rids.ravel().tolist(), strict=True):
            if r >= 0 and s > best.get(r, -np.inf):
                best[r] = s
        top = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return (np.array([s for _, s in top], np.float32), np.array([r for r, _ in top], np.int64))


def encode_image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
