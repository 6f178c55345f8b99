"""The autopilot policy of a collection: when a round starts, what it trains, what it is judged on.

Validated at ``PUT /collections/{c}/autopilot`` (a 422 there, never a failed round later): the job
template must make a job the contract accepts once the autopilot fills in the pairs, the yardstick
and the replay.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from strop.trainer.contract import EvalPair, JobSpec, Strict

# Fields of a round's job that the autopilot sets itself: a template that sets them is refused.
OWNED = {"train": ("pairs", "queries"), "eval": None, "replay": None, "gate": ("regression_sets",),
         "kind": None, "activate": None}


class Triggers(Strict):
    """Any trigger that is met starts a round (at least one must be set)."""

    min_feedback: int | None = Field(None, ge=1, le=10_000_000, description=(
        "feedback events (POST /collections/{c}/feedback, clicks reported with a search_id) since the last round"))
    min_documents: int | None = Field(None, ge=1, le=100_000_000, description=(
        "documents written, rewritten or deleted since the last round"))
    interval_s: float | None = Field(None, ge=1.0, le=365 * 86400.0, description=(
        "seconds since the last round (or since the policy was set), once there is any new feedback or "
        "document change to learn from"))

    @model_validator(mode="after")
    def _some(self) -> Triggers:
        if self.min_feedback is None and self.min_documents is None and self.interval_s is None:
            raise ValueError("every trigger is off: set min_feedback, min_documents or interval_s")
        return self


class Yardstick(Strict):
    """What each round is judged on, kept fixed: given pairs, or a share of the feedback frozen the first time
    it is seen (a feedback event is on the yardstick side or the training side for good, by a hash of its
    query)."""

    pairs: list[EvalPair] | None = Field(None, min_length=1, max_length=100_000, description=(
        "fixed evaluation pairs, the same for every round"))
    holdout: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "share of feedback queries held out as the yardstick of the round that first sees them (default 0.2 "
        "when no pairs are given); every later round must keep it (gate.max_regression)"))

    @model_validator(mode="after")
    def _one(self) -> Yardstick:
        if self.pairs is not None and self.holdout is not None:
            raise ValueError("give yardstick.pairs or yardstick.holdout, not both")
        if self.pairs is None and self.holdout is None:
            self.holdout = 0.2
        return self


class ReplayPolicy(Strict):
    """What keeps a round from forgetting earlier ones."""

    max_pairs: int = Field(2000, ge=0, le=200_000, description=(
        "most pairs learnt in earlier rounds replayed in a round (0 = no replay)"))
    ratio: float = Field(1.0, ge=0.0, le=100.0, description="replayed pairs per new training pair")
    distill_weight: float = Field(1.0, ge=0.0, le=100.0, description=(
        "keep the new encoder close to the one it starts from on replayed queries (KL over in-batch "
        "similarities; 0 = replay with InfoNCE only)"))


class AutopilotPolicy(Strict):
    """``PUT /collections/{c}/autopilot``."""

    enabled: bool = Field(True, description="false keeps the policy and its history but starts no round")
    triggers: Triggers = Field(..., description="when a round starts")
    job: dict[str, Any] = Field(default_factory=dict, description=(
        "the round's job: any field of a training job (epochs, mining, loss, learning_rate, gate.min_delta, "
        "gate.max_regression...) except those the autopilot fills in (train.pairs, train.queries, eval, replay, "
        "gate.regression_sets, kind, activate). train.source: 'feedback' (default) or 'docstrings' (code "
        "collections; needs yardstick.pairs)"))
    yardstick: Yardstick = Field(default_factory=Yardstick, description="what every round is judged on")
    replay: ReplayPolicy = Field(default_factory=ReplayPolicy, description="what keeps earlier rounds' gains")
    backoff_s: float = Field(300.0, ge=1.0, le=86400.0, description=(
        "after a failed round, wait this long before the next (doubling with each failure in a row, at most "
        "6 hours)"))

    def source(self) -> Literal["feedback", "docstrings"]:
        train = self.job.get("train")
        return (train.get("source") if isinstance(train, dict) else None) or "feedback"  # type: ignore[return-value]

    @model_validator(mode="after")
    def _template(self) -> AutopilotPolicy:
        for key in ("train", "gate"):
            if key in self.job and not isinstance(self.job[key], dict):
                raise ValueError(f"job.{key} must be an object")
        for key, sub in OWNED.items():
            if key not in self.job:
                continue
            value = self.job[key]
            if sub is None:
                raise ValueError(f"job.{key} is set by the autopilot for every round: leave it out")
            for s in sub:
                if isinstance(value, dict) and s in value:
                    raise ValueError(f"job.{key}.{s} is set by the autopilot for every round: leave it out")
        source = self.source()
        if source not in ("feedback", "docstrings"):
            raise ValueError("autopilot rounds learn from train.source 'feedback' or 'docstrings'")
        if source == "docstrings" and self.yardstick.pairs is None:
            raise ValueError("a docstrings autopilot is judged on fixed pairs: give yardstick.pairs")
        try:
            template_spec(self, [{"query": "q", "positive_id": "d"}], [{"query": "q", "positive_ids": ["d"]}])
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"job template: {where}: {first['msg']}") from None
        return self


def template_spec(policy: AutopilotPolicy, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]],
                  replay: list[dict[str, Any]] | None = None,
                  regression_sets: list[dict[str, Any]] | None = None) -> JobSpec:
    """A round's job: the template with the round's pairs, yardstick, replay and regression sets."""
    body = {k: v for k, v in policy.job.items()}
    train = dict(body.get("train") or {})
    if policy.source() == "feedback":
        train.pop("source", None)
        train["pairs"] = train_pairs
    body["train"] = train
    body["eval"] = {"pairs": eval_pairs}
    gate = dict(body.get("gate") or {})
    gate["regression_sets"] = regression_sets or []
    body["gate"] = gate
    if replay:
        body["replay"] = {"pairs": replay, "distill_weight": policy.replay.distill_weight}
    body["kind"] = "encoder"
    return JobSpec.model_validate(body)
