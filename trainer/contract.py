"""The job contract shared by the service and the trainer: payload models and queue names.

The service imports only this module of ``trainer`` (no torch code). Defaults are
the measured best (docs/benchmarks.md); every field is validated at submission
so an impossible job is a 4xx, not a failed job later.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JOB_FUNCTION = "strop.trainer.worker.run_job"
TERMINAL = ("succeeded", "rejected", "failed", "cancelled")

log = logging.getLogger("strop.jobs")


# One epoch of the stdlib benchmark, MRR@10 on all functions (docs/benchmarks.md): in-batch 0.425 /
# 0.435 / 0.434 and one mined negative 0.434 / 0.450 / 0.459 at 2e-5 / 5e-5 / 1e-4; mining's lead
# grows with the rate (+0.9 / +1.5 / +2.5 points).
ENCODER_LR = 1e-4
# A teacher starts from a bi-encoder checkpoint with a fresh pooler-side head. bench/teacherknobs.py
# (Debian, 60 steps): 2e-5 (the sentence-transformers CrossEncoder default) left the loss at chance
# (1.38) and reranked at 0.205 MRR@10; with the head at 1e-3, 1e-4 reached loss 1.02 and 0.394, and
# 2e-4 reached 0.93 and 0.562 (higher rates not yet screened).
TEACHER_LR = 2e-4
TEACHER_HEAD_LR = 1e-3  # pooler + classifier, which the packaged encoder never trained
# mining.neighbour_group when a job gives none (docs/experiments.md, "Batches of neighbouring positives"): on
# the stdlib code benchmark, groups of 8 plus one mined negative reached 0.4541 MRR@10 on all functions over
# three seeds, against random batches' 0.4502 and in-batch only's 0.4328; on Debian descriptions (prose, one
# seed) they scored 0.7691 against random batches' 0.7776. So code collections group, text ones do not.
NEIGHBOUR_GROUP = {"code": 8, "text": 0}


def queue_name(prefix: str) -> str:
    return f"{prefix}-jobs"


def events_channel(prefix: str) -> str:
    return f"{prefix}:events"


def cancel_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:cancel:{job_id}"


def lock_key(prefix: str, collection: str) -> str:
    return f"{prefix}:lock:{collection}"


def announce(r: Any, prefix: str, collection: str, version: str) -> None:
    """Tell every API process that ``collection`` now serves ``version`` (Redis pub/sub; a missed
    message is covered by their polling of the active pointer)."""
    import redis

    try:
        r.publish(events_channel(prefix), json.dumps({"collection": collection, "version": version}))
    except redis.RedisError:
        log.warning("could not announce %s/%s; other processes will poll", collection, version)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainPair(Strict):
    """A labelled training example: a query and the id of a document that answers it."""

    query: str = Field(..., min_length=1, description="the query text, as users type it")
    positive_id: str = Field(..., min_length=1, description="id of a document in the collection that answers it")
    negative_ids: list[str] = Field(default_factory=list, max_length=64, description=(
        "documents shown for the query that did not answer it (from feedback); trained on as extra negatives"))


class TrainSpec(Strict):
    pairs: list[TrainPair] | None = Field(None, description="explicit (query, positive_id) pairs")
    source: Literal["pairs", "feedback", "docstrings", "views"] | None = Field(
        None, description="where pairs come from instead of 'pairs': 'feedback' (the collection's feedback log, "
                          "POST /collections/{c}/feedback), 'docstrings' (code collections: each documented "
                          "function's docstring summary as the query for its code), 'views' (image collections: "
                          "augmented views of each reference image)")
    queries: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, max_length=200_000, description=(
            "unlabelled queries (a search log's, say), with or without labelled pairs: the teacher ranks each "
            "one's top candidates from the live index and the ones it is sure of become training pairs "
            "(GPL-style pseudo-labels, options in 'pseudo'; needs a teacher). Use it when you have real "
            "queries but few labels, and a teacher that ranks better than the encoder"))

    @model_validator(mode="after")
    def _one(self) -> TrainSpec:
        if self.pairs is not None and self.source not in (None, "pairs"):
            raise ValueError("give either train.pairs or train.source, not both")
        if self.queries is not None and not self.queries:
            raise ValueError("train.queries is empty: leave it out or give at least one query")
        if self.queries and self.source == "views":
            raise ValueError("train.queries are text queries: image collections train from views")
        if self.pairs is None and self.source in (None, "pairs") and not self.queries:
            raise ValueError("train needs 'pairs' (a non-empty list), 'source' or 'queries'")
        if self.pairs is not None and not self.pairs:
            raise ValueError("train.pairs is empty: give at least one {query, positive_id}")
        return self


class EvalPair(Strict):
    """A judged query: every id in positive_ids counts as a correct answer."""

    query: str = Field(..., min_length=1, description="the query text")
    positive_ids: list[str] = Field(..., min_length=1, description="ids of the documents that answer it")


class EvalSpec(Strict):
    """The yardstick the gate reads: fixed pairs, or a held-out share of the training pairs."""

    pairs: list[EvalPair] | None = Field(None, description="fixed evaluation pairs (never trained on)")
    holdout: float | None = Field(None, gt=0.0, lt=1.0, description="fraction of training pairs held out")
    group_by: str | None = Field(None, description=(
        "metadata key of the positive to split held-out groups by (e.g. 'path' for code), so near-duplicates "
        "of a held-out document are not trained on"))

    @model_validator(mode="after")
    def _one(self) -> EvalSpec:
        if (self.pairs is None) == (self.holdout is None):
            raise ValueError("eval needs exactly one of 'pairs' or 'holdout'")
        if self.pairs is not None and not self.pairs:
            raise ValueError("eval.pairs is empty")
        return self


class MiningSpec(Strict):
    negatives_per_query: int = Field(1, ge=0, le=64, description="mined hard negatives per query (0 = in-batch only)")
    range_min: int = Field(0, ge=0, description="skip this many top-ranked candidates (they are the likeliest "
                                                "unlabelled positives)")
    range_max: int = Field(50, ge=1, le=1000, description="consider candidates up to this rank")
    relative_margin: float = Field(0.05, ge=0.0, lt=1.0, description=(
        "drop candidates scoring above (1 - margin) x the positive's score: positive-aware mining "
        "(TopK-PercPos), which keeps likely false negatives out; lower it when many queries get no negative"))
    refresh_every: int = Field(0, ge=0, description=(
        "re-encode the corpus with the weights being trained and re-mine every N steps (ANCE-style refresh; "
        "0 = never). Costs a corpus encode per refresh; pays on long jobs whose negatives go stale"))
    denoise: bool = Field(False, description=(
        "drop mined negatives the teacher scores at or above the query's positive: they are likely unlabelled "
        "positives (RocketQA denoising; needs a teacher). Use it with a teacher that ranks well on this "
        "collection, even one that ranks below the fine-tuned encoder"))
    neighbour_group: int | None = Field(None, ge=0, le=1024, description=(
        "fill each batch with groups of this many training pairs whose positives are nearest neighbours "
        "in the live index, so in-batch negatives are hard ones (TAS-style batch mining; 0 or 1 = random "
        "batches; capped at batch_size). Costs no encoding: the positives' vectors come from the mining round. "
        f"Default by collection modality: {NEIGHBOUR_GROUP}; it helps on code, not on prose"))

    def group_for(self, modality: str) -> int:
        """The neighbour group a job on a ``modality`` collection uses."""
        return self.neighbour_group if self.neighbour_group is not None else NEIGHBOUR_GROUP.get(modality, 0)

    @model_validator(mode="after")
    def _window(self) -> MiningSpec:
        if self.range_min >= self.range_max:
            raise ValueError(f"mining.range_min ({self.range_min}) must be below range_max ({self.range_max})")
        return self


class LossSpec(Strict):
    """The contrastive loss."""

    temperature: float = Field(0.05, gt=0.0, le=1.0, description="InfoNCE temperature (cosine / temperature "
                                                                  "are the logits)")


class AugmentSpec(Strict):
    """CoCoSoDa-style soft augmentation of code documents during training."""

    rate: float = Field(0.1, ge=0.0, le=0.9, description="fraction of identifiers changed per document")
    mode: Literal["mask", "type", "both"] = Field("both", description="mask = [MASK]; type = a token for its kind")


class MomentumQueueSpec(Strict):
    """A momentum copy of the encoder feeding a queue of document embeddings used as extra negatives."""

    size: int = Field(1024, ge=32, le=65536, description="document embeddings kept as extra negatives")
    momentum: float = Field(0.999, ge=0.0, lt=1.0, description="how slowly the momentum copy follows the encoder")


class SemanticPositivesSpec(Strict):
    """SRA-CL: the positive's index neighbours that the teacher confirms become extra positives."""

    semantic: bool = Field(False, description=(
        "add index neighbours of each positive that the teacher confirms as extra positives (needs a "
        "teacher); use it when documents near-duplicate each other and labels name only one"))
    max_per_query: int = Field(1, ge=1, le=16, description="extra positives added per query at most")
    neighbours: int = Field(10, ge=1, le=200, description="neighbours of the positive to check")
    min_ratio: float = Field(0.9, gt=0.0, le=2.0,
                             description="confirm when the teacher finds the neighbour at least min_ratio times as "
                                         "likely an answer as the positive: exp(t(q, neighbour) - t(q, positive)) >= "
                                         "min_ratio, with t in logits (a bi-encoder teacher's cosine / "
                                         "loss.temperature); 0.9 asks for a cosine within 0.005 of the positive's")


class DistillSpec(Strict):
    """Distillation from the teacher's scores, added to InfoNCE (needs a teacher that ranks better than the
    encoder on pairs it did not train on; otherwise use the teacher for denoising only)."""

    loss: Literal["margin_mse", "cprd", "listwise"] = Field(
        "cprd", description="margin_mse: the teacher's margin between the positive and each mined negative; cprd: "
                            "the teacher's order among the mined negatives only; listwise: the teacher's softmax "
                            "over every document in the batch (all in-batch positives and mined negatives), scored "
                            "lazily per batch and cached (cheap for a bi-encoder or fused teacher, whose document "
                            "embeddings are cached; a cross-encoder scores B x (B + negatives) pairs per step)")
    weight: float = Field(1.0, ge=0.0, le=100.0, description="weight of the distillation loss against InfoNCE")
    teacher_temperature: float = Field(1.0, gt=0.0, description="cprd and listwise: softmax temperature on teacher logits (a bi-encoder teacher's cosines count as cos / loss.temperature, like the student's)")


class PseudoSpec(Strict):
    """How the teacher labels ``train.queries`` (GPL: generative pseudo-labelling, without the generator)."""

    candidates: int = Field(20, ge=2, le=200, description=(
        "the live bi-encoder's top candidates per query that the teacher ranks; its best becomes the positive"))
    min_confidence: float = Field(0.5, gt=0.0, le=1.0, description=(
        "keep a query only when the teacher's softmax over its candidates (logits: a bi-encoder teacher's "
        "cosine / loss.temperature) gives its best document at least this probability; documents with the "
        "same text count as one"))


class MixSpec(Strict):
    """MoCHi: synthetic hard negatives mixed in feature space from each query's hardest negatives."""

    count: int = Field(4, ge=1, le=64, description="synthetic negatives per query")
    hardest: int = Field(8, ge=2, le=128, description="mix among this many hardest negatives")


class ViewsSpec(Strict):
    """Image collections (``train.source: "views"``): multi-view training of the logo encoder.

    The defaults are the best configuration measured (docs/benchmarks.md). They replace the
    text-oriented ``epochs`` / ``batch_size`` / ``learning_rate`` for views jobs.
    """

    views_per_ref: int = Field(12, ge=1, le=64, description="augmented views rendered per reference (K)")
    epochs: int = Field(30, ge=1, le=200, description="passes over the rendered views")
    batch_size: int = Field(64, ge=2, le=4096, description="brands per step")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0, description="AdamW learning rate of the trained blocks "
                                                                   "and the projection head")
    hard_negatives: bool = Field(True, description="batch each brand with its nearest other brands")
    holdout_brands: float = Field(0.2, gt=0.0, lt=0.9,
                                  description="brands left out of training, as the unknown side of calibration")
    eval_views: int = Field(2, ge=1, le=16, description="held-out views per brand for metrics, fusion and threshold")
    query_crops: list[float] = Field(
        [1.0, 0.75, 0.5], min_length=1, max_length=4,
        description="scales at which the trained model embeds a query: the whole image (1.0) and grids of "
                    "overlapping crops; a query scores as its best crop. [1.0] embeds it whole")

    gallery_views: int = Field(
        8, ge=0, le=64,
        description="the trained model embeds each reference as the mean of it and this many synthetic "
                    "photos of it (train family); 0 = the reference alone")
    image_size: int | None = Field(
        None, ge=64, le=512, multiple_of=32,
        description="input side the encoder trains and serves at, in pixels (a multiple of 32); default the "
                    "served model's (160). 224 pays on a GPU worker")
    fresh_views: bool = Field(
        False, description="render new views of every reference each epoch instead of reusing the first "
                           "views_per_ref (a render and a trunk pass per view per epoch: for GPU workers)")

    @field_validator("query_crops")
    @classmethod
    def _crops(cls, v: list[float]) -> list[float]:
        from strop.index.image.decode import check_crops  # PIL only, no torch

        return list(check_crops(v))


class OpenSetSpec(Strict):
    """How the open-set threshold ("unknown" logo) is calibrated on held-out views."""

    max_false_accept: float = Field(0.05, gt=0.0, lt=1.0,
                                    description="target false-accept rate of the open-set threshold")


class RegressionSet(Strict):
    """Evaluation pairs a new version must not lose on (an earlier autopilot round's yardstick, or any
    suite of queries a deployment promised to keep answering)."""

    name: str = Field(..., min_length=1, max_length=200, description="how the gate's report names this set")
    pairs: list[EvalPair] = Field(..., min_length=1, max_length=100_000, description="judged queries")
    reference: float | None = Field(None, ge=0.0, le=1.0, description=(
        "the metric this set reached when it was first met (an autopilot round's score right after it was "
        "activated); the gate measures the loss from the lower of it and the active version's score, so drift "
        "cannot pile up round after round. Default: the active version's score"))


class GateSpec(Strict):
    """When a job's new version is activated: the metric on the evaluation pairs must not drop."""

    metric: Literal["mrr@10", "recall@1", "recall@10", "ndcg@10"] = Field(
        "mrr@10", description="the metric compared before and after")
    min_delta: float = Field(0.0, ge=-1.0, le=1.0, description="activate only if after - before >= min_delta")
    min_pairs: int = Field(5, ge=1, le=100_000, description=(
        "evaluation queries the gate needs to judge at all: with fewer (one held-out pair moves MRR@10 by 0 or "
        "1) the job is rejected and its gate says why. Image collections count held-out brands"))
    regression_sets: list[RegressionSet] = Field(default_factory=list, max_length=1000, description=(
        "further evaluation sets measured before and after: the version is refused when any of them loses more "
        "than max_regression (autopilot rounds pass every earlier round's yardstick here)"))
    max_regression: float = Field(0.01, ge=0.0, le=1.0, description=(
        "the most the metric may fall on any regression set, from the lower of its reference and the active "
        "version's score"))


class ReplaySpec(Strict):
    """Continual training without forgetting: pairs earlier jobs learnt, trained on again beside the new ones,
    with the new encoder kept close to the one it starts from on them (Mod-X-style distillation of the
    starting encoder's in-batch similarities)."""

    pairs: list[TrainPair] = Field(..., min_length=1, max_length=200_000, description=(
        "pairs learnt earlier (autopilot: a sample of what earlier rounds trained on)"))
    distill_weight: float = Field(1.0, ge=0.0, le=100.0, description=(
        "weight of the KL divergence between the starting encoder's and the trained encoder's softmax over each "
        "replayed query's in-batch documents (0 = replay the pairs with InfoNCE only)"))
    temperature: float = Field(0.05, gt=0.0, le=1.0, description="softmax temperature of that distillation")


class JobSpec(Strict):
    """A training job for one collection. Only ``train`` is required; every default is the configuration
    measured best for the common case (docs/training.md)."""

    kind: Literal["encoder", "teacher"] = Field(
        "encoder", description="'encoder' fine-tunes the collection's encoder and publishes a version; "
                               "'teacher' trains the collection's teacher (a reranker for rerank searches, "
                               "denoising and distillation)")
    train: TrainSpec = Field(..., description="what to train on")
    eval: EvalSpec | None = Field(None, description="what the gate measures; default: holdout 0.2 of the "
                                                    "training pairs")
    mining: MiningSpec = Field(default_factory=MiningSpec, description="hard negatives mined from the live index")
    loss: LossSpec = Field(default_factory=LossSpec, description="the contrastive loss")
    epochs: int = Field(1, ge=1, le=100, description="passes over the training pairs")
    batch_size: int = Field(32, ge=2, le=1024, description="pairs per step; every other pair's positive is an "
                                                          "in-batch negative")
    learning_rate: float | None = Field(None, gt=0.0, le=1.0, description=(
        f"default: {ENCODER_LR:g} for encoder jobs, {TEACHER_LR:g} for teacher jobs"))
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (default: the epochs' steps)")
    max_seq_length: int | None = Field(128, ge=8, le=8192, description=(
        "truncate texts to this many tokens while training (serving keeps the encoder's own limit); 256 "
        "trains slower and can score higher on long documents such as code"))
    seed: int = Field(42, description="seeds batching, augmentation and initialisation: repeat a run exactly")
    augment: AugmentSpec | None = Field(None, description="code collections: CoCoSoDa soft augmentation (off)")
    momentum_queue: MomentumQueueSpec | None = Field(None, description="a momentum encoder's queue of extra "
                                                                       "negatives (off)")
    teacher: str | None = Field(None, description="teacher path or name; default: the collection's teacher")
    positives: SemanticPositivesSpec = Field(default_factory=SemanticPositivesSpec,
                                             description="extra positives the teacher confirms (SRA-CL)")
    distill: DistillSpec | None = Field(None, description="distil the teacher's scores (off)")
    pseudo: PseudoSpec = Field(default_factory=PseudoSpec, description="train.queries: the teacher's pseudo-labels")
    mix_hard_negatives: MixSpec | None = Field(None, description="MoCHi synthetic negatives (off)")
    rerank_depth: int = Field(50, ge=2, le=1000, description="teacher jobs: candidates reranked in evaluation")
    fuse: str | None = Field(None, min_length=1, max_length=1000, description=(
        "teacher jobs: instead of training a cross-encoder, fuse this bi-encoder (a path or packaged name, e.g. "
        "all-mpnet-base-v2) with a copy of the live one: score = (cos_live + w x cos_fuse) / loss.temperature, "
        "w fitted on the held-out pairs. Trains nothing by default: the quickest teacher, and a strong one when "
        "the named model ranks differently from the fine-tuned encoder"))
    folds: int | None = Field(None, ge=2, le=10, description=(
        "teacher jobs with fuse: cross-fit the teacher. The training pairs are split into this many folds (by a "
        "hash of the query) and a bi-encoder is fine-tuned from the live one on each fold's complement, as an "
        "encoder job with this job's epochs, batch size, mining and learning rate would train it; fold f's "
        "queries are scored by the fusion over fold f's bi-encoder, which never trained on them. Without it the "
        "prior is the live bi-encoder, which after a job has trained on those very pairs. Use it when the "
        "teacher will be distilled on the same labelled pairs"))
    tune_fuse: bool = Field(False, description=(
        "teacher jobs with fuse: fine-tune a copy of the fuse bi-encoder as well, on the same pairs and in the "
        "same way as the copy of the live one. With folds, one per fold, so the stronger model has learnt the "
        "collection too without seeing the queries it will score. Without folds, a copy of each is fine-tuned on "
        "every training pair: the strongest teacher for queries without a label (train.queries pseudo-labels, "
        "rerank searches), but it has seen every labelled pair, so distilling it on them restates their labels. "
        "It costs one fine-tune of the bigger model per fold and a copy of it per fold in memory wherever the "
        "teacher is loaded"))
    views: ViewsSpec = Field(default_factory=ViewsSpec, description="image collections (train.source views)")
    open_set: OpenSetSpec = Field(default_factory=OpenSetSpec, description="image collections")
    replay: ReplaySpec | None = Field(None, description=(
        "encoder jobs: earlier pairs replayed with distillation from the starting encoder, so what it learnt "
        "is kept (autopilot rounds set it; off)"))
    gate: GateSpec = Field(default_factory=GateSpec, description="when the new version is activated")
    activate: bool = Field(True, description="activate the new version when it passes the gate; false keeps "
                                             "it for a manual POST .../versions/{id}/activate")

    @model_validator(mode="after")
    def _fuse(self) -> JobSpec:
        if self.fuse is not None and self.kind != "teacher":
            raise ValueError("fuse is for teacher jobs (\"kind\": \"teacher\")")
        if self.folds is not None and self.fuse is None:
            raise ValueError("folds cross-fits a fused teacher: give fuse (a stronger bi-encoder) too")
        if self.tune_fuse and self.fuse is None:
            raise ValueError("tune_fuse fine-tunes the fuse bi-encoder: give fuse (a stronger bi-encoder) too")
        if self.pseudo != PseudoSpec() and not self.train.queries:  # (a stored spec carries the defaults)
            raise ValueError("pseudo sets how the teacher labels train.queries: give train.queries "
                             "(unlabelled queries), or leave pseudo out")
        if self.replay is not None and (self.kind != "encoder" or self.train.source == "views"):
            raise ValueError("replay is for encoder jobs on text and code collections")
        if self.gate.regression_sets and (self.kind != "encoder" or self.train.source == "views"):
            raise ValueError("gate.regression_sets are for encoder jobs on text and code collections")
        if self.train.queries and self.kind != "encoder":
            raise ValueError("train.queries (pseudo-labelled by the teacher) is for encoder jobs")
        if self.train.queries and self.train.pairs is None and self.train.source in (None, "pairs") \
                and (self.eval is None or self.eval.pairs is None):
            raise ValueError("a job with train.queries alone has no labelled pairs to hold out: give eval.pairs")
        return self

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return TEACHER_LR if self.kind == "teacher" else ENCODER_LR

    def needs_teacher(self) -> bool:
        return bool(self.mining.denoise or self.positives.semantic
                    or self.distill or self.train.queries)
