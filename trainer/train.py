"""Stage 7: fine-tune the bi-encoder with InfoNCE over in-batch plus mined negatives.

Batches never hold the same text twice (a duplicate in a batch is a false
negative). Every ``refresh_every`` steps the caller's ``refresh`` re-encodes the
corpus with the current weights and re-mines (ANCE-style asynchronous refresh).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from strop.index.cancel import Cancelled
from strop.index.encoder import Encoder, bf16_supported
from strop.trainer.augment import augment_code
from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair, positive_text
from strop.trainer.distill import cprd, listwise_kl, margin_mse, mix_negatives
from strop.trainer.mining import neighbour_batches

log = logging.getLogger("strop.train")


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float
    eta_s: float | None


def load_model(source: str, device: str = "cpu", max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    from strop.index.encoder import resolve_spec

    model = SentenceTransformer(resolve_spec(source), device=device)
    model.serving_max_seq_length = model.max_seq_length  # restored before the model is saved
    if max_seq_length:
        model.max_seq_length = min(max_seq_length, model.max_seq_length or max_seq_length)
    return model


def inference_encoder(model, name: str = "student", device: str = "cpu") -> Encoder:
    """An encoder over a frozen copy of ``model`` (bf16 where supported: 4x faster corpus passes here).

    It embeds with the serving sequence length, so evaluation and the published index match what
    the service will compute.
    """
    frozen = copy.deepcopy(model).eval()
    frozen.max_seq_length = getattr(model, "serving_max_seq_length", model.max_seq_length)
    precision = "fp32"
    if bf16_supported(device):
        frozen = frozen.to(torch.bfloat16)
        precision = "bf16"
    return Encoder(frozen, name, precision, device)


def amp_dtype(device: str, bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of training steps: on CUDA, bf16 where the card has it, else fp16 (with a gradient
    scaler); on the CPU none: training stays fp32 there."""
    if not device.startswith("cuda"):
        return None
    if bf16 is None:
        bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return torch.bfloat16 if bf16 else torch.float16


def make_batches(pairs: Sequence[Pair], texts: Sequence[str], batch_size: int, rng: random.Random,
                 order: Sequence[int] | None = None) -> list[list[int]]:
    """Shuffle pair indices into batches with no repeated query or document text inside a batch.

    ``order`` (a permutation of the pair indices, e.g. neighbour groups laid end to end) replaces the
    shuffle; a pair that would repeat a text moves on to the next batch that can take it.
    """
    if order is None:
        order = list(range(len(pairs)))
        rng.shuffle(order)
    else:
        order = [int(i) for i in order]
        if sorted(order) != list(range(len(pairs))):
            raise ValueError("order must be a permutation of the pair indices")
    batches: list[list[int]] = []
    pending = order
    while pending:
        batch: list[int] = []
        seen: set[str] = set()
        rest: list[int] = []
        for i in pending:
            p = pairs[i]
            keys = {"q:" + p.query, "d:" + positive_text(p, texts)}
            if len(batch) < batch_size and not (keys & seen):
                batch.append(i)
                seen |= keys
            else:
                rest.append(i)
        if len(batch) < 2 and batches:
            batches[-1].extend(batch)  # a straggler: not worth a step of its own
        elif batch:
            batches.append(batch)
        pending = rest
    return batches


def fine_tune(
    model,
    pairs: list[Pair],
    texts: list[str],
    negatives: list[list[int]],
    spec: JobSpec,
    *,
    refresh: Callable[[object], list[list[int]]] | None = None,
    teacher_scores: Callable[[], dict[tuple[int, int], float] | None] | None = None,
    teacher_ensure: Callable[[list[tuple[int, int]]], None] | None = None,
    teacher_kind: str = "cross-encoder",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    device: str = "cpu",
    positive_vectors: np.ndarray | None = None,
    amp: torch.dtype | None | str = "auto",
) -> dict:
    """Train ``model`` in place; returns a summary (steps, final loss, seconds, refreshes).

    ``amp``: the autocast dtype of the steps; ``"auto"`` is :func:`amp_dtype` (mixed precision on CUDA,
    fp32 on the CPU). fp16 steps go through a gradient scaler.

    ``positive_vectors`` (one row per pair: its positive's vector in the live index) lets
    ``mining.neighbour_group`` build each epoch's batches from groups of pairs with neighbouring
    positives; without it, or with the option off, batches are random. ``teacher_ensure`` scores
    (pair index, corpus row) keys the teacher has not seen into ``teacher_scores()``: the listwise
    loss needs every (query, document) of each batch, known only once the batch is drawn.
    """
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed % (2**32))
    group = min(spec.mining.neighbour_group or 0, spec.batch_size)
    if group >= 2 and positive_vectors is not None:
        if len(positive_vectors) != len(pairs):
            raise ValueError(f"positive_vectors has {len(positive_vectors)} rows for {len(pairs)} pairs")
        grng = np.random.default_rng(spec.seed)
        epochs_batches = [
            make_batches(pairs, texts, spec.batch_size, rng,
                         order=np.concatenate(neighbour_batches(positive_vectors, spec.batch_size, group, grng)))
            for _ in range(spec.epochs)]
    else:
        epochs_batches = [make_batches(pairs, texts, spec.batch_size, rng) for _ in range(spec.epochs)]
    total = sum(len(b) for b in epochs_batches)
    if spec.max_steps:
        total = min(total, spec.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr(), weight_decay=0.01)
    warmup = max(1, int(0.1 * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    if amp == "auto":
        amp = amp_dtype(device)
    assert amp is None or isinstance(amp, torch.dtype)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp is torch.float16)  # pass-through unless fp16
    queue = MomentumQueue(model, spec.momentum_queue.size, spec.momentum_queue.momentum) \
        if spec.momentum_queue else None
    aug_rng = random.Random(spec.seed + 1)
    augment = (lambda t: augment_code(t, spec.augment.rate, spec.augment.mode, aug_rng)) if spec.augment else None
    gen = torch.Generator().manual_seed(spec.seed)
    extras = StepExtras(
        distill_loss=spec.distill.loss if spec.distill else "cprd",
        distill_weight=spec.distill.weight if spec.distill else 0.0,
        teacher_temperature=spec.distill.teacher_temperature if spec.distill else 1.0,
        # a bi-encoder teacher's cosines become logits the way the student's do (cos / temperature); a
        # cross-encoder's scores already are logits
        teacher_scale=1.0 / spec.loss.temperature if teacher_kind == "bi-encoder" else 1.0,
        mix_count=spec.mix_hard_negatives.count if spec.mix_hard_negatives else 0,
        mix_hardest=spec.mix_hard_negatives.hardest if spec.mix_hard_negatives else 8,
        generator=gen,
        ensure=teacher_ensure,
    )
    if spec.replay is not None and spec.replay.distill_weight > 0 and any(p.replay for p in pairs):
        # the encoder the job starts from, frozen: replayed queries keep its in-batch similarities
        extras.anchor = frozen_copy(model)
        extras.anchor_weight = spec.replay.distill_weight
        extras.anchor_temperature = spec.replay.temperature
    model.train()
    step = 0
    ema: float | None = None
    t0 = time.perf_counter()
    refreshes = 0
    refresh_every = spec.mining.refresh_every
    for batches in epochs_batches:
        for batch in batches:
            if step >= total:
                break
            if should_stop():
                raise Cancelled()
            if refresh is not None and refresh_every and step > 0 and step % refresh_every == 0:
                model.eval()
                negatives = refresh(model)
                model.train()
                refreshes += 1
            extras.teacher = teacher_scores() if teacher_scores is not None else None
            with torch.autocast(device_type=device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
                loss = _step(model, pairs, texts, negatives, batch, spec.loss.temperature, device, augment, queue,
                             extras)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(opt)
            scaler.update()
            if not scaler.is_enabled() or scaler.get_scale() >= scale:  # an fp16 overflow skips the step
                sched.step()
            if queue is not None:
                queue.update(model)
            step += 1
            val = float(loss.detach())
            ema = val if ema is None else 0.9 * ema + 0.1 * val
            if on_progress:
                elapsed = time.perf_counter() - t0
                on_progress(Progress(step, total, round(ema, 5), round(elapsed / step * (total - step), 1)))
    model.eval()
    return {"steps": step, "loss": ema, "seconds": round(time.perf_counter() - t0, 2), "refreshes": refreshes,
            "amp": str(amp).removeprefix("torch.") if amp is not None else "fp32",
            "total_steps": total, "neighbour_group": group if group >= 2 and positive_vectors is not None else 0}


@dataclass
class StepExtras:
    """Optional teacher-assisted parts of a step."""

    teacher: dict[tuple[int, int], float] | None = None  # (pair index, corpus row) -> teacher score
    distill_loss: str = "cprd"
    distill_weight: float = 0.0
    teacher_temperature: float = 1.0
    teacher_scale: float = 1.0  # teacher score -> logit units
    mix_count: int = 0
    mix_hardest: int = 8
    generator: torch.Generator | None = None
    ensure: Callable[[list[tuple[int, int]]], None] | None = None  # listwise: score missing keys into teacher
    anchor: object | None = None  # replay: the starting encoder, frozen
    anchor_weight: float = 0.0
    anchor_temperature: float = 0.05


def _step(model, pairs: list[Pair], texts: list[str], negatives: list[list[int]], batch: list[int],
          temperature: float, device: str, augment: Callable[[str], str] | None = None,
          queue: MomentumQueue | None = None, extras: StepExtras | None = None) -> torch.Tensor:
    queries = [pairs[i].query for i in batch]
    doc_rows = [pairs[i].positive for i in batch]
    for i in batch:
        for r in negatives[i] + pairs[i].negatives:
            doc_rows.append(r)
    # de-duplicate documents after the positives (a mined negative may repeat across queries)
    col: dict[int, int] = {}
    uniq: list[int] = []
    for r in doc_rows:
        if r not in col or len(uniq) < len(batch):
            col.setdefault(r, len(uniq))
            uniq.append(r)
    doc_texts = [positive_text(pairs[batch[b]], texts) if b < len(batch) else texts[r] for b, r in enumerate(uniq)]
    if augment is not None:
        doc_texts = [augment(t) for t in doc_texts]
    q = F.normalize(_embed(model, queries, device), dim=-1)
    d = F.normalize(_embed(model, doc_texts, device), dim=-1)
    mask = torch.zeros((len(batch), len(uniq)), dtype=torch.bool)
    for a, i in enumerate(batch):
        p = pairs[i]
        relevant = {p.positive, *p.extra_positives}
        pos_text = texts[p.positive]
        for b, r in enumerate(uniq):
            if b != a and (r in relevant or texts[r] == pos_text):
                mask[a, b] = True
    mask = mask.to(q.device)
    raw = q @ d.T / temperature
    logits = raw.masked_fill(mask, float("-inf"))
    if queue is not None:  # momentum queue: extra negatives from earlier batches, encoded by the slow copy
        q_rows = torch.tensor([pairs[i].positive for i in batch])
        extra, extra_rows = queue.negatives()
        if extra is not None:
            qmask = (extra_rows[None, :] == q_rows[:, None]).to(q.device)
            logits = torch.cat([logits, (q @ extra.to(q.device).T / temperature).masked_fill(qmask, float("-inf"))], 1)
    if extras is not None and extras.mix_count:
        synth = mix_negatives(q, d, mask, extras.mix_count, extras.mix_hardest, extras.generator)
        logits = torch.cat([logits, (q[:, None, :] * synth.to(q.device)).sum(-1) / temperature], 1)
    target = torch.arange(len(batch), device=q.device)
    loss = F.cross_entropy(logits, target)
    if extras is not None and extras.teacher is not None and extras.distill_weight > 0:
        if extras.distill_loss == "listwise":
            loss = loss + extras.distill_weight * _distill_listwise(raw, batch, uniq, mask, extras)
        else:
            loss = loss + extras.distill_weight * _distill(raw, batch, pairs, negatives, col, extras)
    if extras is not None and extras.anchor is not None:
        rows = [a for a, i in enumerate(batch) if pairs[i].replay]
        if rows:
            loss = loss + extras.anchor_weight * _anchor_kl(extras, q[rows], d, [queries[a] for a in rows],
                                                            doc_texts, mask[rows], device)
    if queue is not None:
        queue.enqueue(doc_texts[: len(batch)], torch.tensor([pairs[i].positive for i in batch]), device)
    return loss


def frozen_copy(model):
    """A copy of ``model`` that takes no gradient (the anchor of replay distillation)."""
    anchor = copy.deepcopy(model).eval()
    for p in anchor.parameters():
        p.requires_grad_(False)
    return anchor


def _anchor_kl(extras: StepExtras, q: torch.Tensor, d: torch.Tensor, queries: list[str], doc_texts: list[str],
               mask: torch.Tensor, device: str) -> torch.Tensor:
    """KL(anchor || student) over replayed queries' in-batch documents: Mod-X-style distillation that keeps
    how the starting encoder related each earlier query to every document of the batch, not only its
    positive (masked cells, other copies of a relevant document, are left out)."""
    with torch.no_grad():
        qa = F.normalize(_embed(extras.anchor, queries, device), dim=-1)
        da = F.normalize(_embed(extras.anchor, doc_texts, device), dim=-1)
    t = extras.anchor_temperature
    return listwise_kl(q @ d.T / t, qa @ da.T / t, ~mask)


def _distill_listwise(raw: torch.Tensor, batch: list[int], uniq: list[int], mask: torch.Tensor,
                      extras: StepExtras) -> torch.Tensor:
    """KL(teacher || student) over each query's whole batch row: its positive, the other queries'
    positives and every mined negative, i.e. the documents InfoNCE already ranks. Unlike cprd
    (the mined negatives only) the teacher also grades the positive against them, and every
    in-batch document adds a comparison for free. Masked cells (another copy of a relevant
    document) are left out of both softmaxes."""
    assert extras.teacher is not None
    keys = [(i, r) for i in batch for r in dict.fromkeys(uniq)]
    if extras.ensure is not None:
        extras.ensure(keys)
    t = torch.tensor([[extras.teacher.get((i, r), float("nan")) for r in uniq] for i in batch],
                     dtype=raw.dtype, device=raw.device) * extras.teacher_scale
    return listwise_kl(raw, t, ~mask & ~torch.isnan(t), extras.teacher_temperature)


def _distill(raw: torch.Tensor, batch: list[int], pairs: list[Pair], negatives: list[list[int]],
             col: dict[int, int], extras: StepExtras) -> torch.Tensor:
    """Teacher distillation over each query's own mined negatives (scores cached per mining round)."""
    assert extras.teacher is not None
    width = max((len(negatives[i]) for i in batch), default=0)
    if width == 0:
        return raw.sum() * 0.0
    b = len(batch)
    s_neg = torch.zeros((b, width), device=raw.device)
    t_neg = torch.zeros((b, width), device=raw.device)
    valid = torch.zeros((b, width), dtype=torch.bool, device=raw.device)
    t_pos = torch.zeros(b, device=raw.device)
    for a, i in enumerate(batch):
        t_pos[a] = extras.teacher.get((i, pairs[i].positive), 0.0)
        for n, r in enumerate(negatives[i]):
            t = extras.teacher.get((i, r))
            if t is None:
                continue
            s_neg[a, n] = raw[a, col[r]]
            t_neg[a, n] = t
            valid[a, n] = True
    s_pos = raw[torch.arange(b), torch.arange(b)]
    t_pos, t_neg = t_pos * extras.teacher_scale, t_neg * extras.teacher_scale
    if extras.distill_loss == "margin_mse":
        return margin_mse(s_pos, s_neg, t_pos, t_neg, valid)
    return cprd(s_neg, t_neg, valid, extras.teacher_temperature)


class MomentumQueue:
    """MoCo-style: a momentum copy of the encoder embeds each batch's positives into a FIFO queue
    that later batches use as extra negatives (rows of the same document are masked)."""

    def __init__(self, model, size: int, momentum: float):
        self.encoder = copy.deepcopy(model).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.size = size
        self.m = momentum
        self.vecs: torch.Tensor | None = None
        self.rows = torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def update(self, model) -> None:
        for pm, p in zip(self.encoder.parameters(), model.parameters(), strict=True):
            pm.mul_(self.m).add_(p.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, doc_texts: list[str], rows: torch.Tensor, device: str) -> None:
        v = torch.nn.functional.normalize(_embed(self.encoder, doc_texts, device), dim=-1).cpu()
        self.vecs = v if self.vecs is None else torch.cat([v, self.vecs])[: self.size]
        self.rows = torch.cat([rows, self.rows])[: self.size]

    def negatives(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return self.vecs, self.rows


def _embed(model, texts: list[str], device: str) -> torch.Tensor:
    features = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    features = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
    return model(features)["sentence_embedding"]


def lr_schedule_steps(n_pairs: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n_pairs / batch_size)
