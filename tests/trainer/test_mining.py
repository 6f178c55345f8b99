"""Positive-aware mining (strop.trainer.mining.mine) on hand-placed unit vectors and real FAISS.

Each corpus row gets a chosen cosine to the single query direction, so every filter's
effect is known exactly: positives out, the rank window, the relative margin against
the positive's score, candidates whose text equals the positive's.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from strop.trainer.contract import JobSpec, MiningSpec
from strop.trainer.data import Pair
from strop.trainer.mining import mine, neighbour_batches
from strop.trainer.train import fine_tune, load_model, make_batches


def _rows(cosines: list[float], dim: int = 16) -> np.ndarray:
    """Unit vectors whose cosine to e0 is each value (the rest of the mass on distinct axes)."""
    out = np.zeros((len(cosines), dim), np.float32)
    for i, c in enumerate(cosines):
        out[i, 0] = c
        out[i, 1 + i % (dim - 1)] = np.sqrt(max(0.0, 1.0 - c * c))
    return out


def _query(dim: int = 16) -> np.ndarray:
    q = np.zeros((1, dim), np.float32)
    q[0, 0] = 1.0
    return q


def test_filters_positive_window_margin_and_duplicate_text() -> None:
    # row 0 is the positive (0.80); 1 is above it (likely a false negative), 2 sits inside the 5% margin,
    # 3 repeats the positive's text, 4 and 5 are eligible, 6 is past the window
    cos = [0.80, 0.90, 0.78, 0.70, 0.60, 0.50, 0.40]
    texts = ["def f(): pass", "a", "b", "def f(): pass", "c", "d", "e"]
    spec = MiningSpec(negatives_per_query=2, range_min=0, range_max=5, relative_margin=0.05)
    negs, stats = mine(_query(), _rows(cos), texts, [Pair("q", 0)], spec)
    assert negs == [[4, 5]]
    assert stats.removed_positive == 1
    assert stats.removed_margin == 2  # rows 1 and 2
    assert stats.removed_duplicate_text == 1
    # only range_max + positives candidates are fetched: row 6 (the 6th non-positive) is never seen
    assert stats.candidates_seen == 6 and stats.removed_window == 0
    assert stats.kept == 2 and stats.queries_without_negatives == 0


def test_range_min_skips_the_top_ranks() -> None:
    cos = [0.95, 0.70, 0.60, 0.50, 0.40]
    spec = MiningSpec(negatives_per_query=1, range_min=2, range_max=10, relative_margin=0.0)
    negs, stats = mine(_query(), _rows(cos), list("pabcd"), [Pair("q", 0)], spec)
    assert negs == [[3]]
    assert stats.removed_window == 2


def test_positive_below_window_is_counted_and_explained() -> None:
    # the positive (row 0) ranks 4th among 5 candidates; with a window of 3 every candidate outscores it
    cos = [0.30, 0.90, 0.80, 0.70, 0.20]
    pairs = [Pair("q", 0) for _ in range(4)]
    spec = MiningSpec(negatives_per_query=1, range_min=0, range_max=3, relative_margin=0.05)
    negs, stats = mine(np.repeat(_query(), 4, 0), _rows(cos), list("pabcd"), pairs, spec)
    assert negs == [[], [], [], []]
    assert stats.queries_without_negatives == 4
    assert stats.without_negatives_positive_below_window == 4
    assert "4 queries" in stats.summary()["hint"] and "range_max" in stats.summary()["hint"]
    # a window that reaches under the positive finds the one candidate scoring below it
    wide = MiningSpec(negatives_per_query=1, range_min=0, range_max=10, relative_margin=0.05)
    negs, stats = mine(np.repeat(_query(), 4, 0), _rows(cos), list("pabcd"), pairs, wide)
    assert negs == [[4]] * 4
    assert stats.without_negatives_positive_below_window == 0 and "hint" not in stats.summary()


def test_margin_empties_queries_whose_positive_is_in_the_window() -> None:
    # the positive ranks first but every other row is within the margin: the hint points at the margin
    cos = [0.80, 0.79, 0.78, 0.77]
    spec = MiningSpec(negatives_per_query=1, range_min=0, range_max=10, relative_margin=0.05)
    negs, stats = mine(_query(), _rows(cos), list("pabc"), [Pair("q", 0)], spec)
    assert negs == [[]]
    assert stats.without_negatives_positive_below_window == 0
    assert "relative_margin" in stats.summary()["hint"]
    loose = MiningSpec(negatives_per_query=1, range_min=0, range_max=10, relative_margin=0.0)
    negs, _ = mine(_query(), _rows(cos), list("pabc"), [Pair("q", 0)], loose)
    assert negs == [[1]]


def test_zero_negatives_mines_nothing() -> None:
    negs, stats = mine(_query(), _rows([0.9, 0.5]), ["p", "a"], [Pair("q", 0)], MiningSpec(negatives_per_query=0))
    assert negs == [[]] and stats.candidates_seen == 0


def test_neighbour_batches_cover_every_item_once_and_group_look_alikes() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    emb = np.repeat(centers, 4, axis=0) + 0.01 * rng.normal(size=(16, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    batches = neighbour_batches(emb, batch_items=8, group=4, rng=rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(16))
    for b in batches:  # each group of 4 is one cluster
        for g in range(0, len(b), 4):
            assert len({int(i) // 4 for i in b[g : g + 4]}) == 1


def test_make_batches_keeps_a_given_order_and_still_splits_repeated_texts() -> None:
    texts = [f"doc {i}" for i in range(9)] + ["doc 0"]  # row 9 repeats row 0's text
    pairs = [Pair(f"q{i}", i) for i in range(10)]
    order = [3, 2, 0, 9, 1, 7, 6, 5, 4, 8]
    batches = make_batches(pairs, texts, 4, random.Random(0), order=order)
    # "doc 0" twice in one batch would be a false negative: row 9 waits for the next batch
    assert batches == [[3, 2, 0, 1], [9, 7, 6, 5], [4, 8]]
    with pytest.raises(ValueError):
        make_batches(pairs, texts, 4, random.Random(0), order=[0, 1, 2])


def test_a_neighbour_group_larger_than_the_batch_fills_whole_batches(tiny_encoder_path: str) -> None:
    # a group above batch_size (a code collection's default 8 with a batch of 4, say) is capped, not refused
    spec = JobSpec.model_validate({"train": {"pairs": [{"query": "q", "positive_id": "x"}]}, "batch_size": 4,
                                   "mining": {"negatives_per_query": 0, "neighbour_group": 16}})
    model = load_model(tiny_encoder_path, "cpu", 32)
    texts = [f"document number {i}" for i in range(12)]
    pairs = [Pair(f"query {i}", i) for i in range(12)]
    vecs = np.eye(12, dtype=np.float32)
    out = fine_tune(model, pairs, texts, [[] for _ in pairs], spec, positive_vectors=vecs)
    assert out["neighbour_group"] == 4 and out["steps"] == 3


def test_neighbour_group_defaults_by_modality() -> None:
    # no group given: code collections group by 8, text ones keep random batches (docs/benchmarks.md)
    base = {"train": {"pairs": [{"query": "q", "positive_id": "x"}]}}
    default = JobSpec.model_validate({**base, "batch_size": 4}).mining
    assert default.neighbour_group is None and default.group_for("code") == 8 and default.group_for("text") == 0
    assert JobSpec.model_validate({**base, "mining": {"neighbour_group": 0}}).mining.group_for("code") == 0
    assert JobSpec.model_validate({**base, "mining": {"neighbour_group": 4}}).mining.group_for("text") == 4
