"""Mixed-precision training steps: the dtype chosen per device, and the autocast + gradient-scaler path run
for real on the CPU (the path CUDA takes), on the tiny encoder."""

from __future__ import annotations

import math

import pytest
import torch

from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair
from strop.trainer.train import amp_dtype, fine_tune, load_model


def test_amp_dtype_per_device() -> None:
    assert amp_dtype("cpu") is None
    assert amp_dtype("cuda", bf16=True) is torch.bfloat16
    assert amp_dtype("cuda:1", bf16=False) is torch.float16


@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16])
def test_steps_train_under_autocast(tiny_encoder_path: str, amp) -> None:
    texts = [f"manual of the {w} engine" for w in ("diesel", "petrol", "steam", "jet", "rotary", "electric")]
    pairs = [Pair(f"{t.split()[3]} engine", i) for i, t in enumerate(texts)]
    spec = JobSpec.model_validate({"train": {"pairs": [{"query": "q", "positive_id": "x"}]}, "batch_size": 6,
                                   "epochs": 3, "learning_rate": 3e-3, "mining": {"negatives_per_query": 0}})
    model = load_model(tiny_encoder_path, "cpu", 32)
    before = [p.detach().clone() for p in model.parameters()]
    out = fine_tune(model, pairs, texts, [[] for _ in pairs], spec, amp=amp)
    assert out["steps"] == 3 and math.isfinite(out["loss"])
    assert out["amp"] == {None: "fp32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[amp]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32: autocast casts ops
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
