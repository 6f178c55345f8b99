"""Logo views: deterministic augmentation families, the multi-view trainer's hooks, metrics and calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from strop.index.image.logo import VisualConfig, VisualEncoder
from strop.trainer.image.views import (
    BACKGROUNDS,
    auroc,
    calibrate_threshold,
    far_at_tar,
    foreground,
    make_view,
    make_views,
    open_set_metrics,
    supcon_loss,
    topk_accuracy,
    train_views,
    view_rng,
)


def _logo(colour: tuple[int, int, int], kind: int) -> Image.Image:
    img = Image.new("RGB", (120, 120), "white")
    d = ImageDraw.Draw(img)
    if kind == 0:
        d.ellipse([20, 30, 100, 90], fill=colour)
    elif kind == 1:
        d.rectangle([20, 30, 100, 90], fill=colour)
    elif kind == 2:
        d.chord([20, 30, 100, 90], 0, 300, fill=colour)
    else:
        d.polygon([(60, 20), (100, 100), (20, 100)], fill=colour)
    return img


def test_make_view_is_deterministic_sized_and_families_differ() -> None:
    ref = _logo((200, 30, 30), 0)
    a = make_view(ref, view_rng(0, 1, 2, "train"), "train", 96)
    b = make_view(ref, view_rng(0, 1, 2, "train"), "train", 96)
    assert a.size == (96, 96) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert make_view(ref, view_rng(0, 1, 3, "train"), "train", 96).tobytes() != a.tobytes()
    assert make_view(ref, view_rng(0, 1, 2, "wild"), "wild", 96).tobytes() != a.tobytes()
    assert not set(BACKGROUNDS["train"]) & set(BACKGROUNDS["wild"])  # wild backgrounds are never trained on
    with pytest.raises(ValueError):
        make_view(ref, view_rng(0, 0, 0), "cartoon")


def test_foreground_finds_the_mark_on_a_plain_background() -> None:
    fg = foreground(_logo((0, 0, 200), 1))
    assert fg.mode == "RGBA"
    alpha = np.asarray(fg.getchannel("A"))
    assert 80 <= fg.width <= 90 and alpha.max() == 255 and alpha[0, 0] == 0


def test_supcon_loss_prefers_grouped_embeddings() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.99, 0.1], [0, 1.0], [0.1, 0.99]]), dim=1)
    bad = good[[0, 2, 1, 3]]
    assert supcon_loss(good, labels, 0.1) < supcon_loss(bad, labels, 0.1)


def test_metrics_and_calibration() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.4, 0.8], [0.2, 0.7, 0.6]])
    labels = np.array([0, 1, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 2) == 1.0
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5
    known = np.linspace(0.5, 1.0, 100)
    unknown = np.linspace(0.0, 0.6, 100)
    far, thr = far_at_tar(known, unknown, 0.95)
    assert (known >= thr).mean() >= 0.95 and far == pytest.approx((unknown >= thr).mean())
    cal = calibrate_threshold(known, unknown, max_false_accept=0.05)
    assert cal["false_accept"] <= 0.05 and cal["true_accept"] > 0.8
    assert calibrate_threshold(known, unknown, 0.0)["false_accept"] == 0.0
    m = open_set_metrics(scores, labels, np.array([[0.1, 0.2, 0.3]]), threshold=0.5)
    assert m["top1"] == pytest.approx(2 / 3) and m["false_accept"] == 0.0 and m["true_accept"] == 1.0


def test_train_views_reports_progress_and_stops_when_asked() -> None:
    refs = [_logo(c, k) for k, c in enumerate([(200, 0, 0), (0, 150, 0), (0, 0, 200), (90, 90, 0)])]
    enc = VisualEncoder(VisualConfig(dim=16, image_size=64, train_blocks=1), seed=0)
    before = enc.head.weight.detach().clone()
    calls: list[tuple[int, int, float]] = []

    def stop() -> bool:
        return len(calls) >= 2

    rep = train_views(enc, refs, views_per_ref=2, epochs=5, batch_size=2, views_per_step=2, group=2,
                      view_size=64, progress_cb=lambda s, t, loss: calls.append((s, t, loss)), should_stop=stop)
    assert rep.stopped and rep.steps == 2 and [c[0] for c in calls] == [1, 2] and calls[0][1] == 10
    assert np.isfinite(rep.losses).all()
    assert not torch.equal(before, enc.head.weight)  # it did learn
    cancelled_early = train_views(enc, refs, views_per_ref=2, epochs=1, view_size=64, should_stop=lambda: True)
    assert cancelled_early.stopped and cancelled_early.steps == 0


def test_fresh_views_render_new_views_every_epoch() -> None:
    refs = [_logo(c, k) for k, c in enumerate([(200, 0, 0), (0, 150, 0), (0, 0, 200)])]
    later = make_views(refs, 2, seed=0, size=64, first=2)  # the stream continues where the first K stop
    four = make_views(refs, 4, seed=0, size=64)
    pairs = [(a, b) for i in range(3) for a, b in zip(later[i], four[i][2:], strict=True)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    assert not np.array_equal(np.asarray(four[0][0]), np.asarray(four[0][2]))

    enc = VisualEncoder(VisualConfig(dim=16, image_size=64, train_blocks=1), seed=0)
    cached = train_views(enc, refs, views_per_ref=2, epochs=3, batch_size=3, views_per_step=2, view_size=64)
    assert cached.views_rendered == 3 * 2 and cached.device == "cpu"
    enc = VisualEncoder(VisualConfig(dim=16, image_size=64, train_blocks=1), seed=0)
    fresh = train_views(enc, refs, views_per_ref=2, epochs=3, batch_size=3, views_per_step=2, view_size=64,
                        fresh_views=True, device="cpu")
    assert fresh.views_rendered == 3 * 2 * 3 and fresh.steps == 3 and np.isfinite(fresh.losses).all()
    assert fresh.losses != cached.losses  # later epochs saw other views
    assert enc.device.type == "cpu" and not enc.training
    stopped = train_views(enc, refs, views_per_ref=2, epochs=3, view_size=64, fresh_views=True,
                          should_stop=lambda: True)
    assert stopped.stopped and stopped.steps == 0
