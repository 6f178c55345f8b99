"""Replay with distillation from the starting encoder (job field ``replay``), on the tiny real encoder."""

from __future__ import annotations

import numpy as np
import torch

from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair
from strop.trainer.train import _embed, fine_tune, load_model

OLD = [f"recipe for {w} bread" for w in ("rye", "spelt", "corn", "oat", "barley", "wheat", "potato", "soda")]
NEW = [f"tuning a {w} engine" for w in ("diesel", "petrol", "steam", "jet", "rotary", "electric", "hybrid", "turbo")]


def _spec(weight: float | None) -> JobSpec:
    body = {"train": {"pairs": [{"query": "q", "positive_id": "x"}]}, "batch_size": 8, "epochs": 6,
            "learning_rate": 3e-3, "mining": {"negatives_per_query": 0}}
    if weight is not None:
        body["replay"] = {"pairs": [{"query": "q", "positive_id": "x"}], "distill_weight": weight}
    return JobSpec.model_validate(body)


def _drift(tiny_encoder_path: str, weight: float | None) -> float:
    """Mean 1 - cosine between each old query's similarities to the corpus before and after training on new
    pairs (with the old pairs replayed when ``weight`` is given)."""
    texts = [f"how to bake {q.split()[2]} bread at home" for q in OLD] + \
            [f"service manual of the {q.split()[2]} engine" for q in NEW]
    pairs = [Pair(q, 8 + i) for i, q in enumerate(NEW)]
    if weight is not None:
        pairs += [Pair(q, i, replay=True) for i, q in enumerate(OLD)]
    model = load_model(tiny_encoder_path, "cpu", 32)

    def sims() -> np.ndarray:
        with torch.no_grad():
            q = torch.nn.functional.normalize(_embed(model.eval(), OLD, "cpu"), dim=-1)
            d = torch.nn.functional.normalize(_embed(model.eval(), texts, "cpu"), dim=-1)
        return (q @ d.T).numpy()

    before = sims()
    fine_tune(model, pairs, texts, [[] for _ in pairs], _spec(weight))
    after = sims()
    return float(np.mean(np.abs(after - before)))


def test_distilling_the_starting_encoder_keeps_replayed_queries_in_place(tiny_encoder_path: str) -> None:
    replay_only = _drift(tiny_encoder_path, 0.0)
    distilled = _drift(tiny_encoder_path, 20.0)
    assert distilled < 0.8 * replay_only, (distilled, replay_only)


def test_replay_is_for_text_encoder_jobs() -> None:
    import pytest
    from pydantic import ValidationError

    base = {"train": {"pairs": [{"query": "q", "positive_id": "x"}]},
            "replay": {"pairs": [{"query": "q", "positive_id": "x"}]}}
    assert JobSpec.model_validate(base).replay is not None
    with pytest.raises(ValidationError, match="replay is for encoder jobs"):
        JobSpec.model_validate({**base, "kind": "teacher"})
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**base, "replay": {"pairs": []}})
