"""Teachers: models that score (query, document) pairs more carefully than the bi-encoder.

* ``CrossEncoderScorer``: a Hugging Face sequence-classification model with one logit
  (what strop's teacher jobs train, RocketQA-style; also loads any such model by path or hub name).
  A teacher job's cross-encoder may carry a *prior*: a frozen copy of the bi-encoder it was trained
  over, whose cosine / temperature is added to the logit, so the cross-encoder learns only a
  correction to the bi-encoder's ranking (``prior`` below).
* ``BiEncoderScorer``: a (stronger) sentence-transformers bi-encoder used as a scorer (cosine),
  e.g. all-mpnet-base-v2 from its split wheels.
* ``FusedScorer``: such a bi-encoder fused with a frozen copy of the collection's own, with a
  weight fitted on held-out pairs (a teacher job with ``fuse``).
* ``FoldedScorer``: K fused teachers whose bi-encoders were each fine-tuned on the other folds'
  training pairs; a query is scored by its own fold's teacher (a teacher job with ``fuse`` and
  ``folds``), so no training pair is scored by a model that was trained on it.

``load_teacher`` picks by what the directory holds. Scorers expose ``score(pairs)`` and an
``encode``-compatible adapter so the service can run them through the same micro-batching
thread as query encoding (one thread owns each model's forward pass).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strop.index.embcache import DiskCache, EmbeddingCache, model_fingerprint, text_key
from strop.index.encoder import EncodeResult, bf16_supported, resolve_spec

DOC_CACHE_SIZE = 20_000  # document embeddings a bi-encoder teacher keeps in memory (LRU)


class CrossEncoderScorer:
    kind = "cross-encoder"

    def __init__(self, model: Any, tokenizer: Any, name: str, device: str = "cpu", max_length: int = 256,
                 prior: BiEncoderScorer | None = None, prior_scale: float = 0.0, logit_weight: float = 1.0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.max_length = max_length
        # score = logit + prior_scale x cos(prior(q), prior(d)); the prior is the bi-encoder the teacher
        # was trained over (a copy kept with the teacher, so a later encoder version does not change it)
        self.prior = prior
        self.prior_scale = prior_scale if prior is not None else 0.0
        # with a prior: how much of the learned correction to add (fitted on held-out pairs by the job)
        self.logit_weight = logit_weight
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str, device: str = "cpu", precision: str = "auto", max_length: int = 256,
             disk_cache: DiskCache | None = None) -> CrossEncoderScorer:
        """A sequence-classification model by path or hub name; a strop teacher directory's
        ``strop_teacher.json`` adds its sequence length and its prior (``disk_cache``: where the prior
        keeps document embeddings on disk, as a bi-encoder teacher does)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta_file = Path(path) / "strop_teacher.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device)
        if precision in ("auto", "bf16") and bf16_supported(device):
            model = model.to(torch.bfloat16)
        prior = None
        if meta.get("prior"):
            prior_dir = Path(path) / meta["prior"]
            if not (prior_dir / "modules.json").exists():
                raise ValueError(f"teacher {path}: its prior bi-encoder {prior_dir} is missing")
            prior = BiEncoderScorer.load(str(prior_dir), device, precision, disk_cache)
        return cls(model, AutoTokenizer.from_pretrained(path), str(path), device, meta.get("max_length", max_length),
                   prior, float(meta.get("prior_scale", 0.0)), float(meta.get("logit_weight", 1.0)))

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

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        logits, prior = self.score_parts(pairs, batch_size)
        return logits if prior is None else self.logit_weight * logits + prior

    @torch.inference_mode()
    def score_parts(self, pairs: Sequence[tuple[str, str]],
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """(the cross-encoder's logits, prior_scale x the prior's cosines or None without a prior)."""
        out = np.empty(len(pairs), np.float32)
        with self._lock:
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                out[i : i + len(chunk)] = self.logits([q for q, _ in chunk], [d for _, d in chunk]).cpu().numpy()
        if self.prior is None:
            return out, None
        prior = self.prior.score(pairs, batch_size) if len(pairs) else np.empty(0, np.float32)
        return out, (self.prior_scale * prior).astype(np.float32)

    def unit(self, scores: np.ndarray) -> np.ndarray:
        """Scores on [0, 1]: the sigmoid of a logit; with a prior, (score / prior_scale + 1) / 2 clipped
        (cos plus the weighted correction, on a bi-encoder teacher's scale; a sigmoid of cos /
        temperature would saturate)."""
        scores = np.asarray(scores, np.float32)
        if self.prior is not None:
            return np.clip((scores / self.prior_scale + 1.0) / 2.0, 0.0, 1.0)
        return unit_scores(scores, self.kind)

    def zero_head(self) -> None:
        """Make the logit 0 for every pair (the classifier's last linear layer zeroed), so a teacher
        with a prior starts as exactly its bi-encoder and training learns only the correction."""
        head = getattr(self.model, "classifier", None)
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if head is not None else []
        if not linears:
            raise ValueError(f"{self.name}: no linear classifier to zero")
        last = linears[-1]
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()

    def save(self, path: str | Path, save_prior: Callable[[Path], None] | None = None) -> None:
        """``save_prior(directory)`` writes the prior bi-encoder (a sentence-transformers model) there."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        meta: dict[str, Any] = {"kind": self.kind, "max_length": self.max_length}
        if self.prior is not None:
            if save_prior is None:
                raise ValueError("a teacher with a prior needs save_prior to be saved")
            save_prior(Path(path) / "prior")
            meta.update(prior="prior", prior_scale=self.prior_scale, logit_weight=self.logit_weight)
        (Path(path) / "strop_teacher.json").write_text(json.dumps(meta))


class BiEncoderScorer:
    """A sentence-transformers bi-encoder as a scorer: the cosine of query and document.

    Document embeddings are kept in a bounded LRU cache keyed by a hash of the text (``cache_size``
    entries; 20,000 x 768-d float32 is about 60 MB). Reranking scores the same documents for many
    queries (every candidate list of an evaluation over one corpus, a job's mining rounds), so the
    teacher embeds each document once instead of once per (query, document) pair. An edited
    document has a new text and so a new key; the stale entry simply ages out. With ``disk`` (what
    ``load(..., disk_cache=...)`` sets up) a miss in memory is looked up in the on-disk cache shared by
    all processes before anything is embedded, so a new job or a restarted API does not pay the cold
    pass again.
    """

    kind = "bi-encoder"

    def __init__(self, encoder: Any, name: str, cache_size: int = DOC_CACHE_SIZE, disk: EmbeddingCache | None = None):
        self.encoder = encoder
        self.name = name
        self.cache_size = cache_size
        self.disk = disk
        self._docs: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, device: str = "cpu", precision: str = "auto",
             disk_cache: DiskCache | None = None) -> BiEncoderScorer:
        """``disk_cache``: keep document embeddings on disk there too (``strop.index.embcache``), shared with
        every other process that loads the same weights at the same precision."""
        from strop.index.encoder import Encoder

        encoder = Encoder.load(spec, precision=precision, device=device)
        disk = None
        if disk_cache is not None and disk_cache.max_entries > 0:
            fp = model_fingerprint(resolve_spec(spec), encoder.precision, encoder.max_seq_length, device)
            disk = EmbeddingCache(disk_cache.dir / f"{fp}.sqlite", encoder.dim, disk_cache.max_entries)
        return cls(encoder, spec, disk=disk)

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Cosine of each pair. Every distinct query is embedded once per call, every distinct
        document once per call at most and not at all when the cache holds it."""
        if not pairs:
            return np.empty(0, np.float32)
        queries = {q: i for i, q in enumerate(dict.fromkeys(p[0] for p in pairs))}
        keys = {d: text_key(d) for d in dict.fromkeys(p[1] for p in pairs)}
        q = self.encoder.encode(list(queries), batch_size).vectors
        with self._lock:
            found = {d: self._docs[k] for d, k in keys.items() if k in self._docs}
            for d in found:
                self._docs.move_to_end(keys[d])
        missing = [d for d in keys if d not in found]
        if missing and self.disk is not None:
            on_disk = self.disk.get([keys[d] for d in missing])
            if on_disk:
                loaded = [(d, on_disk[keys[d]]) for d in missing if keys[d] in on_disk]
                found.update(loaded)
                self._remember(keys, loaded)
                missing = [d for d in missing if d not in found]
        if missing:
            vecs = self.encoder.encode(missing, batch_size).vectors
            fresh = list(zip(missing, vecs, strict=True))
            found.update(fresh)
            self._remember(keys, fresh)
            if self.disk is not None:
                self.disk.put((keys[d], v) for d, v in fresh)
        qi = np.fromiter((queries[p[0]] for p in pairs), np.int64, len(pairs))
        d = np.stack([found[p[1]] for p in pairs])
        return (q[qi] * d).sum(axis=1).astype(np.float32)

    def unit(self, scores: np.ndarray) -> np.ndarray:
        return unit_scores(scores, self.kind)

    def _remember(self, keys: dict[str, bytes], items: list[tuple[str, np.ndarray]]) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            for d, v in items:
                self._docs[keys[d]] = v
            while len(self._docs) > self.cache_size:
                self._docs.popitem(last=False)

    @property
    def cached(self) -> int:
        return len(self._docs)


def unit_scores(scores: np.ndarray, kind: str) -> np.ndarray:
    """Teacher scores on [0, 1]: sigmoid of cross-encoder logits, (cos + 1) / 2 for bi-encoders.

    One scale for both kinds, so a denoise threshold or a fusion weight means the same thing
    whichever teacher a collection names. Prefer a scorer's own ``unit`` (a cross-encoder with a
    prior has its own scale)."""
    scores = np.asarray(scores, np.float32)
    return 1.0 / (1.0 + np.exp(-scores)) if kind == "cross-encoder" else (scores + 1.0) / 2.0


class FusedScorer:
    """A stronger bi-encoder fused with a frozen copy of the collection's own: the score is
    ``prior_scale`` x (cos of the prior + ``logit_weight`` x cos of the scorer) / (1 + ``logit_weight``),
    the weighted mean cosine over the InfoNCE temperature: logits on the student's own scale, so
    MarginMSE asks for margins the student can have and CPRD's softmax is as sharp as the student's
    (a plain sum would double both at w = 1). What a ``fuse`` teacher job stores: it needs no training,
    and the weight is fitted on held-out pairs. all-mpnet-base-v2 alone ranks below a fine-tuned
    MiniLM on both benchmark sets, but fused with it ranked 2.8 MRR@10 points above it on stdlib
    (docs/benchmarks.md), so the fusion, not mpnet, is the teacher that out-ranks the student."""

    kind = "fused"

    def __init__(self, prior: BiEncoderScorer, scorer: BiEncoderScorer, prior_scale: float, logit_weight: float = 1.0,
                 scorer_spec: str | None = None):
        self.prior = prior
        self.scorer = scorer
        self.scorer_spec = scorer_spec or scorer.name
        self.prior_scale = prior_scale
        self.logit_weight = logit_weight
        self.name = f"{scorer.name}+{prior.name}"

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "auto",
             disk_cache: DiskCache | None = None) -> FusedScorer:
        meta = json.loads((Path(path) / "strop_teacher.json").read_text())
        prior_dir = Path(path) / meta["prior"]
        if not (prior_dir / "modules.json").exists():
            raise ValueError(f"teacher {path}: its prior bi-encoder {prior_dir} is missing")
        if meta.get("scorer_dir"):  # tune_fuse: its own fine-tuned copy of the stronger bi-encoder
            scorer_dir = Path(path) / meta["scorer_dir"]
            if not (scorer_dir / "modules.json").exists():
                raise ValueError(f"teacher {path}: its fine-tuned scorer {scorer_dir} is missing")
            scorer = BiEncoderScorer.load(str(scorer_dir), device, precision, disk_cache)
        else:
            scorer = _stored_scorer(path, meta, device, precision, disk_cache)
        prior = BiEncoderScorer.load(str(prior_dir), device, precision, disk_cache)
        out = cls(prior, scorer, float(meta["prior_scale"]), float(meta.get("logit_weight", 1.0)), meta["scorer"])
        out.name = str(path)
        return out

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        other, prior = self.score_parts(pairs, batch_size)
        return ((prior + self.logit_weight * other) / (1.0 + self.logit_weight)).astype(np.float32)

    def score_parts(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(prior_scale x the scorer's cosines, prior_scale x the prior's): the split a weight is fitted on."""
        return (self.prior_scale * self.scorer.score(pairs, batch_size),
                self.prior_scale * self.prior.score(pairs, batch_size))

    def unit(self, scores: np.ndarray) -> np.ndarray:
        """The weighted mean cosine, as (cos + 1) / 2: a bi-encoder teacher's scale."""
        cos = np.asarray(scores, np.float32) / self.prior_scale
        return np.clip((cos + 1.0) / 2.0, 0.0, 1.0)

    def save(self, path: str | Path, save_prior: Callable[[Path], None],
             save_scorer: Callable[[Path], None] | None = None) -> None:
        """``save_prior(directory)`` writes the prior bi-encoder there; ``save_scorer(directory)`` the
        stronger one, when it was fine-tuned (``tune_fuse``) and so cannot be named by its spec."""
        Path(path).mkdir(parents=True, exist_ok=True)
        save_prior(Path(path) / "prior")
        meta = {"kind": self.kind, "prior": "prior", "prior_scale": self.prior_scale,
                "logit_weight": self.logit_weight, "scorer": self.scorer_spec}
        if save_scorer is not None:
            save_scorer(Path(path) / "scorer")
            meta["scorer_dir"] = "scorer"
        (Path(path) / "strop_teacher.json").write_text(json.dumps(meta))


def _stored_scorer(path: str | Path, meta: dict, device: str, precision: str,
                   disk_cache: DiskCache | None) -> BiEncoderScorer:
    """The stronger bi-encoder a fused teacher's metadata names (it is not copied into the teacher)."""
    try:
        return BiEncoderScorer.load(meta["scorer"], device, precision, disk_cache)
    except (OSError, ValueError) as exc:
        raise ValueError(f"teacher {path}: its scorer {meta['scorer']!r} cannot be loaded ({exc})") from exc


def query_digest(query: str) -> bytes:
    """A stable 8-byte hash of a query's text, the same in every process and run."""
    return hashlib.blake2b(query.encode("utf-8"), digest_size=8).digest()


def fold_of(query: str, folds: int) -> int:
    """The fold a query belongs to: a stable hash of its text, the same in every process and run, so
    a training pair is routed to the teacher that did not train on it without storing any split."""
    return int.from_bytes(query_digest(query), "big") % folds


class FoldedScorer:
    """Cross-fitted fused teachers (a ``fuse`` teacher job with ``folds``).

    A fused teacher over the fine-tuned student out-ranks it on held-out queries, but on the student's
    own training pairs half of its score comes from a model trained on them: it restates their labels
    and has nothing to teach (docs/benchmarks.md). Here fold f's prior is a bi-encoder fine-tuned on
    the training pairs of every *other* fold, and a query is scored by the teacher of its own fold
    (``fold_of``). Every training pair is then scored by a model that never saw it, the way a held-out
    query is. A query that no fold trained on (an unlabelled query to pseudo-label, a held-out one,
    search with ``rerank``) is scored by every fold and gets the mean: each fold's model saw only
    (K-1)/K of the pairs, and the mean of K of them ranks better than any one (docs/benchmarks.md).
    That costs K forward passes for such queries. ``trained`` holds the training queries' digests
    (stored with the teacher); without it (teachers saved before it was kept) every query goes to its
    hash's fold, as they did then. The folds share one scorer (one copy of the stronger bi-encoder and its document cache) and
    one weight, fitted on the held-out pairs. With ``tune_fuse`` each fold has its own copy of the
    stronger bi-encoder too, fine-tuned on the same pairs as its prior (``tuned``)."""

    kind = "fused"

    def __init__(self, folds: list[FusedScorer], trained: Iterable[str] | None = None):
        if len(folds) < 2:
            raise ValueError("a folded teacher needs at least 2 folds")
        self.folds = folds
        self.trained = None if trained is None else {query_digest(q) for q in trained}
        self.tuned = any(f.scorer is not folds[0].scorer for f in folds[1:])
        self.scorer_spec = folds[0].scorer_spec
        self.prior_scale = folds[0].prior_scale
        self.name = f"{self.scorer_spec}+{len(folds)} folds" + (" (tuned)" if self.tuned else "")

    @property
    def logit_weight(self) -> float:
        return self.folds[0].logit_weight

    @logit_weight.setter
    def logit_weight(self, w: float) -> None:
        for f in self.folds:
            f.logit_weight = w

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "auto",
             disk_cache: DiskCache | None = None) -> FoldedScorer:
        meta = json.loads((Path(path) / "strop_teacher.json").read_text())
        tuned = meta.get("scorers")  # tune_fuse: one fine-tuned copy of the stronger bi-encoder per fold
        shared = None if tuned else _stored_scorer(path, meta, device, precision, disk_cache)

        def stored(name: str) -> BiEncoderScorer:
            fold_dir = Path(path) / name
            if not (fold_dir / "modules.json").exists():
                raise ValueError(f"teacher {path}: its fold bi-encoder {fold_dir} is missing")
            return BiEncoderScorer.load(str(fold_dir), device, precision, disk_cache)

        folds = []
        for f, name in enumerate(meta["folds"]):
            folds.append(FusedScorer(stored(name), stored(tuned[f]) if tuned else shared, float(meta["prior_scale"]),
                                     float(meta.get("logit_weight", 1.0)), meta["scorer"]))
        out = cls(folds)
        if "trained" in meta:
            out.trained = {bytes.fromhex(h) for h in meta["trained"]}
        out.name = str(path)
        return out

    def fold_for(self, query: str) -> int | None:
        """The one fold that scores ``query`` (the fold that did not train on it), or None: every fold
        scores it and the scores are averaged (no fold trained on it)."""
        digest = query_digest(query)
        if self.trained is not None and digest not in self.trained:
            return None
        return int.from_bytes(digest, "big") % len(self.folds)

    def _routed(self, pairs: Sequence[tuple[str, str]], fn: Callable[[FusedScorer, list], Any]) -> list[tuple[list[int], Any]]:
        by_fold: dict[int | None, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_fold.setdefault(self.fold_for(q), []).append(i)
        out = []
        for f, idx in by_fold.items():
            sub = [pairs[i] for i in idx]
            if f is not None:
                out.append((idx, fn(self.folds[f], sub)))
                continue
            runs = [fn(fold, sub) for fold in self.folds]  # arrays, or tuples of arrays (score_parts)
            if isinstance(runs[0], tuple):
                out.append((idx, tuple(np.mean(parts, axis=0) for parts in zip(*runs, strict=True))))
            else:
                out.append((idx, np.mean(runs, axis=0)))
        return out

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        out = np.empty(len(pairs), np.float32)
        for idx, scores in self._routed(pairs, lambda f, sub: f.score(sub, batch_size)):
            out[idx] = scores
        return out

    def score_parts(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        other, prior = np.empty(len(pairs), np.float32), np.empty(len(pairs), np.float32)
        for idx, (o, p) in self._routed(pairs, lambda f, sub: f.score_parts(sub, batch_size)):
            other[idx], prior[idx] = o, p
        return other, prior

    def unit(self, scores: np.ndarray) -> np.ndarray:
        return self.folds[0].unit(scores)

    def save(self, path: str | Path, save_fold: Callable[[int, Path], None],
             save_fuse: Callable[[int, Path], None] | None = None) -> None:
        """``save_fold(f, directory)`` writes fold f's bi-encoder (a sentence-transformers model) there;
        ``save_fuse(f, directory)`` its fine-tuned stronger one (required when the folds have their own)."""
        if self.tuned and save_fuse is None:
            raise ValueError("this folded teacher has a fine-tuned scorer per fold: pass save_fuse")
        Path(path).mkdir(parents=True, exist_ok=True)
        names = [f"fold-{f}" for f in range(len(self.folds))]
        for f, name in enumerate(names):
            save_fold(f, Path(path) / name)
        meta = {"kind": "folded", "folds": names, "prior_scale": self.prior_scale,
                "logit_weight": self.logit_weight, "scorer": self.scorer_spec}
        if self.trained is not None:
            meta["trained"] = sorted(d.hex() for d in self.trained)
        if self.tuned and save_fuse is not None:
            meta["scorers"] = [f"{name}-fuse" for name in names]
            for f, name in enumerate(meta["scorers"]):
                save_fuse(f, Path(path) / name)
        (Path(path) / "strop_teacher.json").write_text(json.dumps(meta))


Scorer = CrossEncoderScorer | BiEncoderScorer | FusedScorer | FoldedScorer


def load_teacher(spec: str, device: str = "cpu", precision: str = "auto", disk_cache: DiskCache | None = None) -> Scorer:
    """A cross-encoder directory (or hub name) or a sentence-transformers bi-encoder, by what it holds.
    ``disk_cache``: where (and how many) a bi-encoder (or a cross-encoder's prior) keeps its document embeddings on
    disk (a cross-encoder itself scores pairs, so there is nothing per document to keep)."""
    path = Path(resolve_spec(spec))
    if path.is_dir():
        meta_file = path / "strop_teacher.json"
        stored_kind = json.loads(meta_file.read_text()).get("kind") if meta_file.exists() else None
        if stored_kind == FusedScorer.kind:
            return FusedScorer.load(path, device, precision, disk_cache)
        if stored_kind == "folded":
            return FoldedScorer.load(path, device, precision, disk_cache)
        if (path / "modules.json").exists() and not (path / "strop_teacher.json").exists():
            return BiEncoderScorer.load(str(path), device, precision, disk_cache)
        cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", [])):
            return CrossEncoderScorer.load(str(path), device, precision, disk_cache=disk_cache)
        raise ValueError(f"{spec!r} holds neither a cross-encoder nor a sentence-transformers model")
    return CrossEncoderScorer.load(spec, device, precision)  # hub name (needs a network or the HF cache)


class ScorerAdapter:
    """Lets ``strop.service.batching.EncodeBatcher`` drive a teacher: items are (query, doc) pairs, output (n, 1)."""

    dim = 1

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.name = f"teacher:{scorer.name}"

    def encode(self, items: Sequence[Any], batch_size: int = 32) -> EncodeResult:
        scores = self.scorer.score([tuple(i) for i in items], batch_size)
        return EncodeResult(scores.reshape(-1, 1), 0)
