"""Local-feature verification of logo candidates (real OpenCV SIFT) and the features a version stores."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from strop.index.collection import write_version
from strop.index.faiss_index import IndexSpec
from strop.index.image import verify as V
from strop.index.store import Document, DocumentStore
from strop.index.versions import VersionStore


def mark(kind: str, colour: str = "navy") -> Image.Image:
    """Flat marks with corners: a zig-zag 'W' band, or an 'L' with notches."""
    im = Image.new("RGB", (200, 160), "white")
    d = ImageDraw.Draw(im)
    if kind == "w":
        d.polygon([(10, 20), (45, 20), (62, 95), (85, 40), (115, 40), (138, 95), (155, 20), (190, 20), (160, 140),
                   (125, 140), (100, 80), (75, 140), (40, 140)], fill=colour)
    else:
        d.polygon([(20, 15), (70, 15), (70, 60), (95, 60), (95, 85), (70, 85), (70, 105), (180, 105), (180, 145),
                   (20, 145)], fill=colour)
        d.rectangle((120, 20, 170, 70), fill=colour)
    return im


def photo(img: Image.Image, angle: float = 12) -> Image.Image:
    """The mark on a grey card, rotated, smaller, through JPEG."""
    card = Image.new("RGB", (300, 260), (190, 185, 175))
    card.paste(img, (50, 50))
    buf = io.BytesIO()
    card.rotate(angle, fillcolor=(80, 80, 80)).resize((224, 194)).save(buf, "JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_the_true_mark_verifies_and_a_different_one_does_not() -> None:
    cfg = V.VerifyConfig()
    refs = [V.reference_features(mark("w"), cfg), V.reference_features(mark("l"), cfg)]
    inl = V.verify_candidates(V.query_features(photo(mark("w")), cfg), refs, cfg)
    assert inl[0] >= cfg.floor + 4 and inl[1] <= cfg.floor, inl
    # the bonus lifts the verified candidate past a look-alike that the embedding scored higher
    verified = V.combine(np.array([0.60, 0.66]), inl, cfg)
    assert verified[0] > verified[1]
    assert V.geometric_bonus(np.array([0, cfg.floor, cfg.floor + cfg.cap + 50]), cfg).tolist() == [0.0, 0.0, cfg.weight]
    # what RANSAC was given: at least the inliers; the inlier ratio adds to a verified candidate only
    inl2, matches = V.match_candidates(V.query_features(photo(mark("w")), cfg), refs, cfg)
    assert inl2.tolist() == inl.tolist() and (matches >= inl).all() and matches[0] > 0
    rcfg = V.VerifyConfig(ratio_weight=0.2)
    bonus = V.geometric_bonus(np.array([cfg.floor + 8, cfg.floor]), rcfg, np.array([(cfg.floor + 8) * 2, 4]))
    assert bonus.tolist() == pytest.approx([rcfg.weight + 0.1, 0.0])
    assert V.geometric_bonus(np.array([cfg.floor + 8]), rcfg).tolist() == [rcfg.weight]  # no matches, no ratio


def test_colour_and_polarity_do_not_decide() -> None:
    """A light mark on a dark card (the reference is dark on light) and a recoloured one still verify."""
    cfg = V.VerifyConfig()
    refs = [V.reference_features(mark("w"), cfg), V.reference_features(mark("l"), cfg)]
    inverted = ImageOps.invert(mark("w", "navy"))
    for q in (inverted, mark("w", "orange")):
        inl = V.verify_candidates(V.query_features(photo(q, -8), cfg), refs, cfg)
        assert inl[0] > cfg.floor and inl[0] > inl[1], inl


def test_no_features_no_inliers() -> None:
    cfg = V.VerifyConfig()
    blank = V.query_features(Image.new("RGB", (128, 128), (120, 120, 120)), cfg)
    ref = V.reference_features(mark("w"), cfg)
    assert blank.n == 0 and V.verify_candidates(blank, [ref, None], cfg).tolist() == [0, 0]
    assert V.verify_candidates(V.query_features(photo(mark("w")), cfg), [None], cfg).tolist() == [0]


def test_features_are_stored_with_the_version(tmp_path: Path) -> None:
    """Written into the version directory by its sidecar, covered by the manifest's checksums, read back
    by the served table; rows written later are computed from the stored image on first use."""
    cfg = V.VerifyConfig()
    store = DocumentStore(tmp_path / "strop.db")
    store.create_collection("logos", "image", "efficientnet-lite0", {})

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    docs = store.upsert("logos", [Document(id="w", image=png(mark("w"))), Document(id="l", image=png(mark("l")))])
    vstore = VersionStore(tmp_path, "logos")
    rids = np.array([docs[0].rid], np.int64)
    m = write_version(vstore, "v0001", rids, np.eye(1, 4, dtype=np.float32), 4, IndexSpec.from_dict({}), 0,
                      sidecar=V.reference_sidecar(store, cfg))
    path = vstore.path("v0001") / V.LOCAL_FEATURES_FILE
    assert V.LOCAL_FEATURES_FILE in m["checksums"] and vstore.verify("v0001")
    table = V.FeatureTable(path, cfg)
    assert len(table) == 1
    stored = table.get([docs[0].rid])[docs[0].rid]
    fresh = V.reference_features(mark("w"), cfg)
    assert stored.n == fresh.n and np.allclose(stored.xy, fresh.xy)
    assert np.abs(stored.desc - fresh.desc).max() < 1e-2  # float16 on disk
    assert docs[1].rid not in table.get([docs[1].rid])  # written after the version: not stored ...
    assert table.get([docs[1].rid], store)[docs[1].rid].n > 0  # ... computed from the stored image once
    assert len(table) == 2
