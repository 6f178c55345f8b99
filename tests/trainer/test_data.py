"""Pair assembly for ``train.source: "docstrings"`` (no model, no queue: the rules alone)."""

from __future__ import annotations

import textwrap

import numpy as np

from strop.index.code.parse import parse_source
from strop.trainer.contract import JobSpec
from strop.trainer.data import Snapshot, assemble_pairs

MODULES = {
    "pkg/geo.py": '''
        def haversine(a, b):
            """Great-circle distance between two points on a sphere."""
            return 0.0

        def bearing(a, b):
            """Initial compass direction from one point towards another."""
            return 1.0
        ''',
    "pkg/money.py": '''
        def add_tax(amount, rate):
            """Return the amount with value added tax applied."""
            return amount * (1 + rate)

        def fmt(amount):
            """Format an amount of money for display to a customer."""
            return f"{amount:.2f}"

        def undocumented(x):
            return x
        ''',
}


def snap() -> Snapshot:
    docs = []
    for path, src in MODULES.items():
        docs += parse_source(textwrap.dedent(src).lstrip("\n"), path[:-3].replace("/", "."), path)
    return Snapshot("lib", "code", "v1", {}, "enc", "enc", 0, [d.id for d in docs],
                    np.arange(len(docs), dtype=np.int64), [d.text for d in docs], [d.metadata for d in docs], {})


def test_docstrings_with_given_eval_pairs_drop_the_eval_modules_and_strip_docstrings():
    s = snap()
    spec = JobSpec.model_validate({
        "train": {"source": "docstrings"},
        "eval": {"pairs": [{"query": "distance on the globe", "positive_ids": ["pkg.geo.haversine"]}]},
    })
    train, evals, info = assemble_pairs(spec, None, s)
    # geo.py holds an eval positive: neither of its functions may train (bearing shares the module)
    assert sorted(s.ids[p.positive] for p in train) == ["pkg.money.add_tax", "pkg.money.fmt"]
    assert info["dropped_eval_group_pairs"] == 2 and info["train_pairs"] == 2
    # the eval positive is searched as code without its docstring
    (e,) = evals
    override = e.text_overrides[s.pos["pkg.geo.haversine"]]
    assert "Great-circle" not in override and "return 0.0" in override
    assert all("Great-circle" not in p.positive_text for p in train)
    # training sees every documented function without its docstring, negatives included
    assert s.train_texts is not None and not any('"""' in t for t in s.train_texts)
    assert s.train_texts[s.pos["pkg.money.undocumented"]] == s.texts[s.pos["pkg.money.undocumented"]]


def test_docstrings_holdout_splits_by_module():
    s = snap()
    spec = JobSpec.model_validate({"train": {"source": "docstrings"}, "eval": {"holdout": 0.5}})
    train, evals, info = assemble_pairs(spec, None, s)
    held = {s.metadata[r]["path"] for e in evals for r in e.positives}
    trained = {s.metadata[p.positive]["path"] for p in train}
    assert held and trained and not held & trained  # whole modules on one side
    assert "dropped_eval_group_pairs" not in info
    assert info["train_pairs"] + info["eval_pairs"] == 4  # undocumented() is a distractor only
