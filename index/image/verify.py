"""Geometric verification of logo candidates with local features (OpenCV).

The embedding ranks the whole gallery; verification re-checks only its top candidates. A
query and a reference are matched by local features (SIFT keypoints, RootSIFT descriptors),
Lowe's ratio test keeps the distinctive matches, and RANSAC fits one transform to them (a
similarity by default: rotation, scale and shift). The number of matches that transform
explains (*inliers*) says whether the query shows that mark: a different logo that merely looks
alike, or a logo that is not in the gallery, leaves only the few inliers chance gives.

References are rendered for matching once, when they are indexed (:func:`reference_features`):
the mark (cut out as :func:`strop.index.image.views.foreground` does) is drawn at several sizes
on a light and on a dark background, so neither the mark's colour nor its polarity in the query
decides. All renderings' keypoints share the mark's own frame, and a query keypoint matches one
reference keypoint at most, so one physical corner seen in two renderings never counts twice.

:func:`combine` adds a bonus to the fused embedding score,
``score = fused + weight * min(max(inliers - floor, 0), cap) / cap``, so that many inliers lift a
candidate above embedding noise and few leave its score as it was; the open-set threshold is
calibrated on that score as it is on the fused one.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LOCAL_FEATURES_FILE = "local_features.npz"


@dataclass(frozen=True)
class VerifyConfig:
    """How references and queries are matched; stored with a logo model (``logo.json``)."""

    ref_sides: tuple[int, ...] = (96, 192)  # longer side of the mark in each reference rendering
    backgrounds: tuple[int, ...] = (255, 0)  # grey levels the mark is drawn on: light and dark
    query_side: int = 256  # queries are resized so their longer side is this
    max_ref_keypoints: int = 200  # per rendering, strongest first
    max_query_keypoints: int = 500
    detector: str = "sift"  # or "orb" (binary descriptors)
    contrast_threshold: float = 0.02  # SIFT's (OpenCV default 0.04): flat marks have weak corners
    ratio: float = 0.9  # Lowe's ratio test
    geometry: str = "similarity"  # rotation, scale, shift (2-point samples, few chance inliers); or "homography"
    ransac_px: float = 6.0  # reprojection error of an inlier, in query pixels (at query_side)
    top_k: int = 30  # candidates verified per query
    floor: int = 4  # inliers chance alone gives (two define a similarity; a third or fourth come by chance)
    cap: int = 8  # inliers beyond floor that count (more is not more evidence)
    weight: float = 0.5  # bonus of a fully verified candidate, in fused-score units
    ratio_weight: float = 0.0  # extra bonus x inlier ratio (inliers / ratio-tested matches) above the floor

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> VerifyConfig:
        d = dict(d or {})
        for k in ("ref_sides", "backgrounds"):
            if k in d:
                d[k] = tuple(int(x) for x in d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Features:
    """Keypoint locations ``(n, 2)`` float32 and RootSIFT descriptors ``(n, 128)`` float32.

    A reference's keypoints from all its renderings share one frame, the mark's own (its longer
    side is 1), so matches found in different renderings are geometrically consistent.
    """

    xy: np.ndarray
    desc: np.ndarray

    @property
    def n(self) -> int:
        return len(self.xy)


_local = threading.local()


def _detector(kind: str, contrast: float) -> Any:
    """One detector per thread and setting (OpenCV's detectors are not documented as re-entrant)."""
    dets = getattr(_local, "dets", None)
    if dets is None:
        dets = _local.dets = {}
    det = dets.get((kind, contrast))
    if det is None:
        import cv2

        if kind == "sift":
            det = cv2.SIFT_create(contrastThreshold=contrast)
        elif kind == "orb":
            det = cv2.ORB_create(nfeatures=1000, edgeThreshold=15, patchSize=15, fastThreshold=10)
        else:
            raise ValueError(f"detector must be 'sift' or 'orb', got {kind!r}")  # OpenCV 5 moved AKAZE to contrib
        dets[(kind, contrast)] = det
    return det


def _detect(grey: np.ndarray, limit: int, contrast: float, kind: str = "sift") -> tuple[np.ndarray, np.ndarray]:
    kps, desc = _detector(kind, contrast).detectAndCompute(grey, None)
    width = 128 if kind == "sift" else 256
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, width), np.float32)
    order = np.argsort([-k.response for k in kps], kind="stable")[:limit]
    xy = np.array([kps[i].pt for i in order], np.float32)
    if kind != "sift":  # binary descriptors: bits as 0/1 scaled to unit norm (squared distance ~ Hamming)
        bits = np.unpackbits(desc[order], axis=1).astype(np.float32)
        return xy, bits / np.sqrt(np.maximum(bits.sum(axis=1, keepdims=True), 1.0))
    d = desc[order].astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7  # RootSIFT: L1-normalise, square root (Hellinger kernel)
    return xy, np.sqrt(d).astype(np.float32)


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), np.uint8)


def reference_features(img: Image.Image, config: VerifyConfig | None = None) -> Features:
    """Local features of a reference: its mark drawn at ``ref_sides`` on each of ``backgrounds``."""
    from strop.index.image.views import foreground

    c = config or VerifyConfig()
    fg = foreground(img)
    xy, desc = [], []
    for side in c.ref_sides:
        s = side / max(fg.size)
        mark = fg.resize((max(2, round(fg.width * s)), max(2, round(fg.height * s))), Image.Resampling.LANCZOS)
        pad = max(8, side // 8)  # room around the mark so corners on its edge are detected
        for bg in c.backgrounds:
            canvas = Image.new("RGB", (mark.width + 2 * pad, mark.height + 2 * pad), (bg, bg, bg))
            canvas.paste(mark, (pad, pad), mark)
            p, d = _detect(_grey(canvas), c.max_ref_keypoints, c.contrast_threshold, c.detector)
            xy.append((p - pad) / side)
            desc.append(d)
    return Features(np.concatenate(xy).astype(np.float32), np.concatenate(desc))


def query_features(img: Image.Image, config: VerifyConfig | None = None) -> Features:
    """Local features of a query image, resized so its longer side is ``query_side``."""
    c = config or VerifyConfig()
    s = c.query_side / max(img.size)
    if abs(s - 1.0) > 1e-3:
        img = img.resize((max(2, round(img.width * s)), max(2, round(img.height * s))), Image.Resampling.BICUBIC)
    p, d = _detect(_grey(img), c.max_query_keypoints, c.contrast_threshold, c.detector)
    return Features(p, d)


SAME_POINT = 0.03  # two reference keypoints closer than this (mark frame) are one point seen twice


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit rows (RootSIFT rows and scaled binary rows have unit L2 norm)."""
    return np.maximum(2.0 - 2.0 * (a @ b.T), 0.0)


def _nearest(block: np.ndarray, rxy: np.ndarray, k: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row: the nearest reference keypoint, its distance, and the distance of the nearest
    keypoint at another place of the mark (the same corner in another rendering does not count)."""
    n = block.shape[1]
    k = min(k, n)
    part = np.argpartition(block, k - 1, axis=1)[:, :k] if n > k else np.tile(np.arange(n), (len(block), 1))
    d = np.take_along_axis(block, part, axis=1)
    o = np.argsort(d, axis=1)
    part, d = np.take_along_axis(part, o, axis=1), np.take_along_axis(d, o, axis=1)
    best = part[:, 0]
    far = np.linalg.norm(rxy[part] - rxy[best][:, None, :], axis=2) > SAME_POINT
    far[:, 0] = False
    has = far.any(axis=1)
    second = np.where(has, d[np.arange(len(d)), np.argmax(far, axis=1)], d[:, -1] if k > 1 else np.inf)
    return best, d[:, 0], second


def verify_candidates(query: Features, refs: Sequence[Features | None],
                      config: VerifyConfig | None = None) -> np.ndarray:
    """Inlier counts of ``query`` against each candidate (see :func:`match_candidates`)."""
    return match_candidates(query, refs, config)[0]


def match_candidates(query: Features, refs: Sequence[Features | None],
                     config: VerifyConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inlier counts of ``query`` against each candidate (0 where a candidate has no features), and
    the counts of matches that passed the ratio test (what RANSAC was given).

    A query keypoint is matched to its nearest keypoint in each candidate; the match counts for a
    candidate only if it beats, by Lowe's ratio, both the nearest keypoint at another place of the
    same mark and the nearest keypoint of every other candidate. Background texture, which looks a
    little like everything, is thus dropped, and a corner that two look-alike marks share goes to
    neither. RANSAC then fits one transform per candidate to its surviving matches.
    """
    import cv2

    c = config or VerifyConfig()
    out = np.zeros(len(refs), np.int32)
    matches = np.zeros(len(refs), np.int32)
    if query.n < 4:
        return out, matches
    present = [i for i, r in enumerate(refs) if r is not None and r.n >= 2]
    if not present:
        return out, matches
    allref = np.concatenate([refs[i].desc for i in present])  # type: ignore[union-attr]
    dist = _sqdist(query.desc, allref)  # one BLAS product for every candidate
    best_i, d1_i, d2_i = [], [], []
    col = 0
    for i in present:
        r = refs[i]
        assert r is not None
        b, d1, d2 = _nearest(dist[:, col : col + r.n], r.xy)
        best_i.append(b)
        d1_i.append(d1)
        d2_i.append(d2)
        col += r.n
    d1m = np.stack(d1_i, axis=1)  # (n_query, n_candidates)
    if d1m.shape[1] > 1:  # nearest keypoint of any *other* candidate
        two = np.partition(d1m, 1, axis=1)[:, :2]
        other = np.where(d1m <= two[:, :1], two[:, 1:2], two[:, :1])
    else:
        other = np.full_like(d1m, np.inf)
    r2 = c.ratio**2
    for j, i in enumerate(present):
        keep = (d1m[:, j] < r2 * d2_i[j]) & (d1m[:, j] < r2 * other[:, j])
        matches[i] = int(keep.sum())
        if keep.sum() < 4:
            out[i] = int(keep.sum()) if c.geometry == "similarity" and keep.sum() >= 2 else 0
            continue
        src = refs[i].xy[best_i[j][keep]]  # type: ignore[union-attr]
        dst = query.xy[keep]
        if c.geometry == "similarity":
            _h, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=c.ransac_px,
                                                   maxIters=500, confidence=0.99)
        else:
            _h, mask = cv2.findHomography(src, dst, cv2.RANSAC, c.ransac_px, maxIters=500, confidence=0.99)
        out[i] = int(mask.sum()) if mask is not None else 0
    return out, matches


def geometric_bonus(inliers: np.ndarray, config: VerifyConfig | None = None,
                    matches: np.ndarray | None = None) -> np.ndarray:
    """``weight x min(max(inliers - floor, 0), cap) / cap``, plus ``ratio_weight x inliers / matches``
    for candidates above the floor when ``matches`` are given."""
    c = config or VerifyConfig()
    inl = np.asarray(inliers, np.float32)
    bonus = c.weight * np.clip(inl - c.floor, 0, c.cap) / c.cap
    if c.ratio_weight and matches is not None:
        ratio = inl / np.maximum(np.asarray(matches, np.float32), 1.0)
        bonus = bonus + c.ratio_weight * np.where(inl > c.floor, np.minimum(ratio, 1.0), 0.0)
    return bonus.astype(np.float32)


def combine(fused: np.ndarray, inliers: np.ndarray, config: VerifyConfig | None = None,
            matches: np.ndarray | None = None) -> np.ndarray:
    """Verified score: the fused score plus the inlier bonus (see the module docstring)."""
    return np.asarray(fused, np.float32) + geometric_bonus(inliers, config, matches)


def verify_top(fused: np.ndarray, queries: Sequence[Image.Image], refs: Sequence[Features | None],
               config: VerifyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Verify each query's ``top_k`` candidates by fused score (``fused``: ``(n_query, n_ref)``).

    Returns ``(candidates, inliers, matches, ms per query)``, the arrays ``(n_query, top_k)``.
    """
    k = min(config.top_k, fused.shape[1]) if fused.ndim == 2 else 0
    top = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    inl = np.zeros(top.shape, np.int32)
    mat = np.zeros(top.shape, np.int32)
    t = time.perf_counter()
    for i, im in enumerate(queries):
        inl[i], mat[i] = match_candidates(query_features(im, config), [refs[j] for j in top[i]], config)
    return top, inl, mat, (time.perf_counter() - t) * 1000 / max(1, len(queries))


def verified_matrix(fused: np.ndarray, top: np.ndarray, inliers: np.ndarray, config: VerifyConfig,
                    matches: np.ndarray | None = None) -> np.ndarray:
    """``fused`` with each verified candidate's bonus added."""
    out = np.array(fused, np.float64, copy=True)
    out[np.arange(len(out))[:, None], top] += geometric_bonus(inliers, config, matches)
    return out


# -- storage ---------------------------------------------------------------------------------------
def pack(rids: Sequence[int], feats: Sequence[Features]) -> dict[str, np.ndarray]:
    """Arrays for one ``.npz``: each reference's keypoint count, then all rows (descriptors as float16)."""
    return {"rids": np.asarray(rids, np.int64), "counts": np.array([f.n for f in feats], np.int32),
            "xy": np.concatenate([f.xy for f in feats]) if feats else np.zeros((0, 2), np.float32),
            "desc": (np.concatenate([f.desc for f in feats]) if feats else np.zeros((0, 128))).astype(np.float16)}


def unpack(arrays: Any) -> dict[int, Features]:
    rids, counts, xy, desc = arrays["rids"], arrays["counts"], arrays["xy"], arrays["desc"]
    ends = np.cumsum(counts)
    return {int(r): Features(np.asarray(xy[e - n : e], np.float32), np.asarray(desc[e - n : e], np.float32))
            for r, n, e in zip(rids.tolist(), counts.tolist(), ends.tolist(), strict=True)}


def save_features(path: Path, rids: Sequence[int], feats: Sequence[Features]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **pack(rids, feats))
    Path(path).write_bytes(buf.getvalue())


def load_features(path: Path) -> dict[int, Features]:
    with np.load(path) as z:
        return unpack(z)


def document_features(docs: Mapping[int, Any], config: VerifyConfig) -> dict[int, Features]:
    """Reference features of stored image documents by row id (documents that no longer decode are skipped:
    they stay searchable by their vectors, unverified)."""
    from strop.index.image.decode import ImageError, decode_image

    out = {}
    for rid, doc in docs.items():
        if getattr(doc, "image", None) is None:
            continue
        try:
            img = decode_image(doc.image)
        except ImageError:
            continue
        out[int(rid)] = reference_features(img, config)
    return out


def reference_sidecar(store: Any, config: VerifyConfig, chunk: int = 256,
                      known: Mapping[int, Features] | None = None) -> Callable[[Path, np.ndarray], None]:
    """Writes ``local_features.npz`` for a version's rows into its directory (``write_version``'s sidecar).

    ``known``: features the caller already computed, by row id (with ``config``); the other rows' are
    computed from the stored images.
    """
    have = dict(known or {})

    def write(directory: Path, rids: np.ndarray) -> None:
        ids = [int(r) for r in rids]
        feats = {r: have[r] for r in ids if r in have}
        todo = [r for r in ids if r not in have]
        for lo in range(0, len(todo), chunk):
            feats.update(document_features(store.by_rids(todo[lo : lo + chunk], with_image=True), config))
        save_features(Path(directory) / LOCAL_FEATURES_FILE, list(feats), list(feats.values()))

    return write


class FeatureTable:
    """A served version's reference features by row id: those stored with the version, plus those of
    references written after it, computed when they are ingested here or, for writes another process
    acknowledged, the first time they are a candidate (thread-safe)."""

    def __init__(self, path: Path | None, config: VerifyConfig):
        self.config = config
        self._path = path
        self._rows: dict[int, Features] | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> dict[int, Features]:
        if self._rows is None:
            rows = load_features(self._path) if self._path is not None and self._path.exists() else {}
            self._rows = rows
        return self._rows

    def get(self, rids: Sequence[int], store: Any | None = None) -> dict[int, Features]:
        """Features of ``rids``; with ``store``, those missing are computed from the stored images."""
        with self._lock:
            rows = self._loaded()
            out = {r: rows[r] for r in rids if r in rows}
        missing = [r for r in rids if r not in out]
        if missing and store is not None:
            new = document_features(store.by_rids(missing, with_image=True), self.config)
            with self._lock:
                self._loaded().update(new)
            out.update(new)
        return out

    def add(self, feats: Mapping[int, Features]) -> None:
        with self._lock:
            self._loaded().update({int(r): f for r, f in feats.items()})

    def __len__(self) -> int:
        with self._lock:
            return len(self._loaded())


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t) * 1000
