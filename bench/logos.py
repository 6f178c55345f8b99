"""One-shot, open-set logo identification on all simple-icons brands.

``python -m bench.logos`` renders every brand of ``simple-icons-pack`` with cairosvg (through
``strop.index.image.decode.decode_image``, in the brand's colour; near-white colours are drawn black), one
reference per brand. A fixed-seed permutation puts 80% of brands in the gallery and holds 20% out
as unseen. Queries are ``"wild"`` views (``strop.trainer.image.views.make_view``): background generators,
illumination and blur that training never uses.

Query sets (disjoint):
* test known: one wild view of every gallery brand (identification over the whole gallery);
* test unknown: one wild view of each of half of the unseen brands;
* calibration known: another wild view of up to ``--calib`` gallery brands;
* calibration unknown: one wild view of each of the *other* half of the unseen brands.
Fusion weights and the open-set threshold are fitted on the calibration sets only.

Models: the frozen backbone (EfficientNet-Lite0 average-pooled features, no training); the
fine-tuned visual encoder (``strop.trainer.image.views.train_views`` on ``--views`` train-family views per
gallery reference); the same plus the text view (OCR + MiniLM, fused). Each row reports top-1
and top-5 over the gallery, open-set AUROC, the false-accept rate at 95% true-accept, the
false/true-accept rates at the threshold calibrated for 5% false accepts, wall time and peak
RSS of its stage. OCR outputs are cached under ``bench/.cache/logos/``.
"""

from __future__ import annotations

from bench._util import omp_passive

omp_passive()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench._util import CACHE, log, machine_line, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OCR_CACHE = CACHE / "logos"


# -- data -----------------------------------------------------------------------------------------
def icons() -> list[Any]:
    import simple_icons_pack as sip

    found = {getattr(sip, n).slug: getattr(sip, n) for n in dir(sip) if n.startswith("SI_")}
    return [found[s] for s in sorted(found)]


def brand_svg(icon: Any) -> bytes:
    """The icon's SVG filled with the brand colour (black when the colour is too light to see on white)."""
    h = icon.hex.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    lum = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    fill = "#000000" if lum > 0.85 else f"#{h}"
    return icon.svg.replace("<svg ", f'<svg fill="{fill}" ', 1).encode()


def render(icon: Any, side: int = 256) -> Image.Image:
    from strop.index.image.decode import decode_image

    return decode_image(brand_svg(icon), svg_side=side)


def ocr_cached(reader: Any, key: str, images: list[Image.Image]) -> tuple[list[str], float]:
    """OCR texts for ``images``, cached in one JSON per ``key``; returns ``(texts, seconds per image)``."""
    OCR_CACHE.mkdir(parents=True, exist_ok=True)
    path = OCR_CACHE / f"ocr-{key}.json"
    if path.exists():
        data = json.loads(path.read_text())
        if len(data["texts"]) == len(images):
            return data["texts"], data["s_per_image"]
    t = time.perf_counter()
    texts = [reader.read(im).text for im in images]
    spi = (time.perf_counter() - t) / max(1, len(images))
    path.write_text(json.dumps({"texts": texts, "s_per_image": spi}))
    return texts, spi


TRAIN_ARGS = ("brands", "views", "epochs", "batch", "views_per_step", "train_blocks", "lr", "size", "view_size",
              "no_hard_negatives", "seed")


def train_key(args: argparse.Namespace) -> str:
    """Directory name of a cached trained model: a hash of the arguments that decide the training
    (``--fresh-views`` only when given, so models cached before it existed keep their keys)."""
    return "visual-" + _key({k: getattr(args, k) for k in TRAIN_ARGS + (("fresh_views",) if args.fresh_views else ())})


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- measurement ----------------------------------------------------------------------------------
def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage(name: str, fn: Callable[[], Any], rows: dict[str, dict[str, float]]) -> Any:
    reset_peak()
    t = time.perf_counter()
    out = fn()
    rows[name] = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    log(f"{name}: {rows[name]['seconds']:.1f}s, peak RSS {rows[name]['peak_rss_mb']:.0f} MB")
    return out


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(gallery: Any, sets: dict[str, Any], labels: dict[str, np.ndarray], w_text: float,
             max_false_accept: float) -> dict[str, float]:
    from strop.index.image.logo import fused_scores
    from strop.trainer.image.views import calibrate_threshold, open_set_metrics

    ck = fused_scores(gallery, sets["calib_known"], w_text)[0]
    cu = fused_scores(gallery, sets["calib_unknown"], w_text)[0]
    correct = ck.argmax(1) == labels["calib_known"]
    cal = calibrate_threshold(ck.max(1)[correct], cu.max(1), max_false_accept)
    tk = fused_scores(gallery, sets["test_known"], w_text)[0]
    tu = fused_scores(gallery, sets["test_unknown"], w_text)[0]
    m = open_set_metrics(tk, labels["test_known"], tu, cal["threshold"])
    m["w_text"] = w_text
    m["_pred"] = tk.argmax(1).tolist()
    # alternatives to the raw best score as the open-set statistic (read, not served): the margin over the
    # runner-up, and the best score standardised against the query's own top 20 (a per-query z-score)
    from strop.trainer.image.views import auroc, far_at_tar

    def stats(f: np.ndarray) -> dict[str, np.ndarray]:
        top = -np.sort(-f, axis=1)[:, :20]
        return {"margin": top[:, 0] - top[:, 1],
                "z": (top[:, 0] - top[:, 1:].mean(1)) / (top[:, 1:].std(1) + 1e-6)}

    sk, su = stats(tk), stats(tu)
    for name in sk:
        m[f"auroc_{name}"] = auroc(sk[name], su[name])
        m[f"far_at_95tar_{name}"] = far_at_tar(sk[name], su[name], 0.95)[0]
    log("  open-set statistics, AUROC / FAR@95TAR: best " f"{m['auroc']:.3f} / {m['far_at_95tar']:.3f}; "
        + "; ".join(f"{n} {m[f'auroc_{n}']:.3f} / {m[f'far_at_95tar_{n}']:.3f}" for n in sk))
    return m


def verify_rows(refs: list[Image.Image], queries: dict[str, list[Image.Image]], fused: dict[str, np.ndarray],
                labels: dict[str, np.ndarray], config: Any, max_false_accept: float,
                cache: Path | None = None) -> dict[str, Any]:
    """Verify each query's top candidates and report the test sets, with the bonus of ``config`` (as served)
    and with one fitted on the calibration sets.

    The fitted bonus (``strop.index.image.verify.combine``: weight, floor, cap; then again with the
    inlier-ratio term, ``ratio_weight``) maximises calibration top-1 plus (1 - false accepts at 95%
    true accepts); either way the threshold is calibrated on
    the verified scores of the calibration sets, as the fused rows calibrate theirs.
    """
    from dataclasses import replace

    from strop.index.image.verify import (
        geometric_bonus,
        load_features,
        match_candidates,
        query_features,
        reference_features,
        save_features,
    )
    from strop.trainer.image.views import calibrate_threshold, open_set_metrics

    feat_key = {k: v for k, v in config.to_dict().items()  # what reference features depend on
                if k in ("ref_sides", "backgrounds", "max_ref_keypoints", "contrast_threshold", "detector")}
    path = cache / f"local-{_key(feat_key)}.npz" if cache is not None else None
    if path is not None and path.exists():  # the same references and feature settings
        loaded = load_features(path)
        ref_feats = [loaded[i] for i in range(len(refs))]
        ms_ref = float(json.loads(path.with_suffix(".json").read_text())["ms_per_reference"])
    else:
        t = time.perf_counter()
        ref_feats = [reference_features(r, config) for r in refs]
        ms_ref = (time.perf_counter() - t) * 1000 / max(1, len(refs))
        if path is not None:
            save_features(path, list(range(len(refs))), ref_feats)
            path.with_suffix(".json").write_text(json.dumps({"ms_per_reference": ms_ref}))
    cands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    n_q, t_q = 0, 0.0
    for k, ims in queries.items():
        top = np.argsort(-fused[k], axis=1, kind="stable")[:, : config.top_k]
        inl = np.zeros(top.shape, np.int32)
        mat = np.zeros(top.shape, np.int32)
        for i, im in enumerate(ims):
            t = time.perf_counter()
            inl[i], mat[i] = match_candidates(query_features(im, config), [ref_feats[j] for j in top[i]], config)
            t_q += time.perf_counter() - t
        n_q += len(ims)
        cands[k] = (top, inl, mat)
    ms_q = t_q * 1000 / max(1, n_q)
    log(f"  reference features {ms_ref:.0f} ms per reference ({np.mean([f.n for f in ref_feats]):.0f} keypoints); "
        f"verification {ms_q:.0f} ms per query (top {config.top_k})")

    def scores(k: str, cfg: Any) -> np.ndarray:
        top, inl, mat = cands[k]
        out = fused[k].copy()
        rows = np.arange(len(out))[:, None]
        out[rows, top] += geometric_bonus(inl, cfg, mat)
        return out

    def metrics(cfg: Any) -> dict[str, Any]:
        ck, cu = scores("calib_known", cfg), scores("calib_unknown", cfg)
        correct = ck.argmax(1) == labels["calib_known"]
        cal = calibrate_threshold(ck.max(1)[correct], cu.max(1), max_false_accept)
        m = open_set_metrics(scores("test_known", cfg), labels["test_known"], scores("test_unknown", cfg),
                             cal["threshold"])
        cm = open_set_metrics(ck, labels["calib_known"], cu)
        return {**m, "calib_objective": cm["top1"] + 1.0 - cm["far_at_95tar"]}

    grid = []
    for weight in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        for floor in (2, 3, 4, 5):
            for cap in (4, 8, 16):
                cfg = replace(config, weight=weight, floor=floor, cap=cap)
                grid.append((metrics(cfg)["calib_objective"], -weight, cfg))
    obj, _, chosen = max(grid, key=lambda g: (g[0], g[1]))
    rgrid = [(metrics(c := replace(config, weight=weight, floor=floor, cap=cap, ratio_weight=rw))["calib_objective"],
              -weight - rw, c)
             for weight in (0.0, 0.1, 0.2, 0.5) for floor in (2, 3, 4) for cap in (4, 8) for rw in (0.1, 0.2, 0.5)]
    robj, _, rchosen = max(rgrid, key=lambda g: (g[0], g[1]))
    log(f"  with the inlier ratio: weight {rchosen.weight}, floor {rchosen.floor}, cap {rchosen.cap}, "
        f"ratio_weight {rchosen.ratio_weight} (objective {robj:.3f})")
    inl_k = cands["test_known"][1]
    top_k = cands["test_known"][0]
    true_inl = np.where(top_k == labels["test_known"][:, None], inl_k, -1).max(1)
    log(f"  bonus fitted on calibration: weight {chosen.weight}, floor {chosen.floor}, cap {chosen.cap} "
        f"(objective {obj:.3f}); median inliers of the true brand (when in the top {config.top_k}) "
        f"{np.median(true_inl[true_inl >= 0]) if (true_inl >= 0).any() else float('nan'):.0f}, of the best other "
        f"{np.median(np.where(top_k != labels['test_known'][:, None], inl_k, 0).max(1)):.0f}, of unknown queries' "
        f"best {np.median(cands['test_unknown'][1].max(1)):.0f}")
    out = {}
    for name, cfg in (("served", config), ("fitted", chosen), ("fitted_ratio", rchosen)):
        m = metrics(cfg)
        m.update({"ms_per_query": ms_q, "ms_per_reference": ms_ref, "weight": cfg.weight, "floor": cfg.floor,
                  "cap": cfg.cap, "ratio_weight": cfg.ratio_weight,
                  "_pred": scores("test_known", cfg).argmax(1).tolist()})
        out[name] = m
    return out


def samples(out_dir: Path, name: str, idx: list[int], queries: list[Image.Image], pred: list[int],
            truth: np.ndarray, refs: list[Image.Image], titles: list[str], size: int = 96) -> Path:
    """A small PNG: rows of query | predicted reference | true reference."""
    img = Image.new("RGB", (3 * size + 4, len(idx) * (size + 14)), "white")
    d = ImageDraw.Draw(img)
    for r, i in enumerate(idx):
        y = r * (size + 14)
        for c, im in enumerate((queries[i], refs[pred[i]], refs[int(truth[i])])):
            th = im.copy()
            th.thumbnail((size, size))
            img.paste(th, (c * (size + 2), y))
        d.text((0, y + size), f"-> {titles[pred[i]][:14]} (true {titles[int(truth[i])][:14]})", fill="black")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    img.quantize(64).save(path, optimize=True)  # palette PNG: small enough for the repository
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brands", type=int, default=0, help="use N brands (0 = all)")
    ap.add_argument("--views", type=int, default=12, help="train views per gallery reference")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="brands per training step")
    ap.add_argument("--views-per-step", type=int, default=3)
    ap.add_argument("--train-blocks", type=int, default=9)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, default=128, help="encoder input side")
    ap.add_argument("--view-size", type=int, default=128, help="side of the training views")
    ap.add_argument("--query-view-size", type=int, default=0,
                    help="side of the wild query views (0 = --view-size)")
    ap.add_argument("--calib", type=int, default=600, help="calibration views of gallery brands")
    ap.add_argument("--max-false-accept", type=float, default=0.05)
    ap.add_argument("--query-crops", default="1,0.75,0.5",
                    help="crop scales a query is embedded at (strop.index.image.logo.crop_grid); '1' = whole image only")
    ap.add_argument("--gallery-views", type=int, default=8,
                    help="embed each reference with this many train-family views of it (0 = reference alone)")
    ap.add_argument("--frozen-crops", action="store_true", help="also report the frozen backbone with query crops")
    ap.add_argument("--no-hard-negatives", action="store_true")
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--no-frozen", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", default="docs/img", help="where to save hit/miss PNGs ('' = none)")
    ap.add_argument("--out", default=str(CACHE / "logos_results.json"))
    ap.add_argument("--model-cache", default=str(CACHE / "logos-models"),
                    help="save the trained visual encoder here, keyed by the training arguments, and load it "
                         "instead of training when present ('' = always train)")
    ap.add_argument("--verify-top-k", type=int, default=30,
                    help="re-rank this many fused candidates by geometric verification (0 = no verification row)")
    ap.add_argument("--verify-variants", default="",
                    help="more verification rows, ';'-separated, each 'field=value,...' of "
                         "strop.index.image.verify.VerifyConfig (ref_sides as 96/192), e.g. 'geometry=homography'")
    ap.add_argument("--train-only", action="store_true", help="stop once the trained model is cached")
    ap.add_argument("--fresh-views", action="store_true",
                    help="render --views new training views per brand every epoch (the GPU recipe)")
    ap.add_argument("--device", default="cpu", help="where training runs: cpu or cuda (evaluation stays on the CPU)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from strop.index.image.logo import (
        Embedded,
        LogoModel,
        VisualConfig,
        VisualEncoder,
        check_crops,
        crop_to_content,
    )
    from strop.trainer.image.views import TrainReport, fit_fusion, make_view, train_views, view_rng

    t_all = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    all_icons = icons()
    if args.brands:
        all_icons = [all_icons[i] for i in sorted(rng.permutation(len(all_icons))[: args.brands])]
    perm = np.random.default_rng(args.seed + 1).permutation(len(all_icons))
    n_gal = int(round(0.8 * len(all_icons)))
    gal_icons = [all_icons[i] for i in sorted(perm[:n_gal])]
    unseen = [all_icons[i] for i in sorted(perm[n_gal:])]
    half = len(unseen) // 2
    log(f"{len(all_icons)} brands: gallery {len(gal_icons)}, unseen {len(unseen)} "
        f"({half} calibration, {len(unseen) - half} test)")
    timing: dict[str, dict[str, float]] = {}

    def _render() -> tuple[list[Image.Image], list[Image.Image]]:
        return [render(i) for i in gal_icons], [render(i) for i in unseen]

    refs, unseen_refs = stage("render references", _render, timing)
    titles = [i.title for i in gal_icons]
    calib_idx = np.sort(np.random.default_rng(args.seed + 2).permutation(len(gal_icons))[: args.calib])
    wseed = 10_000 + args.seed  # wild views: their own seed stream, never used by training

    def _queries() -> dict[str, list[Image.Image]]:
        vs = args.query_view_size or args.view_size
        return {
            "test_known": [make_view(r, view_rng(wseed, i, 0, "wild"), "wild", vs) for i, r in enumerate(refs)],
            "calib_known": [make_view(refs[i], view_rng(wseed, int(i), 1, "wild"), "wild", vs) for i in calib_idx],
            "calib_unknown": [make_view(r, view_rng(wseed, 100_000 + i, 0, "wild"), "wild", vs)
                              for i, r in enumerate(unseen_refs[:half])],
            "test_unknown": [make_view(r, view_rng(wseed, 200_000 + i, 0, "wild"), "wild", vs)
                             for i, r in enumerate(unseen_refs[half:])],
        }

    queries = stage("render wild queries", _queries, timing)
    labels = {"test_known": np.arange(len(refs)), "calib_known": calib_idx}
    log("queries: " + ", ".join(f"{k} {len(v)}" for k, v in queries.items()))
    gal_crops = [crop_to_content(r) for r in refs]
    results: dict[str, dict[str, Any]] = {}

    crops = check_crops([float(x) for x in args.query_crops.split(",")])

    def visual_sets(enc: VisualEncoder, scales: tuple[float, ...] = (1.0,), gviews: int = 0,
                    gallery: Embedded | None = None) -> tuple[Embedded, dict[str, Embedded]]:
        """Gallery and query sets embedded as the served model does (``LogoModel``, visual view only)."""
        m = LogoModel(enc, query_crops=scales, gallery_views=gviews)
        g = gallery if gallery is not None else m.embed_references(refs, titles)
        return g, {k: m.embed_queries(v) for k, v in queries.items()}

    # 1. frozen backbone (skipped when only training) ------------------------------------------------------------------------
    if not args.no_frozen and not args.train_only:
        def _frozen() -> dict[str, float]:
            enc = VisualEncoder(VisualConfig(head="identity", train_blocks=0, image_size=args.size))
            g, s = visual_sets(enc)
            out = {"frozen backbone": evaluate(g, s, labels, 0.0, args.max_false_accept)}
            if args.frozen_crops and crops != (1.0,):
                out["frozen backbone + query crops"] = evaluate(*visual_sets(enc, crops, gallery=g), labels, 0.0,
                                                                args.max_false_accept)
            return out

        for name, m in stage("frozen backbone", _frozen, timing).items():
            results[name] = {**m, "_stage": "frozen backbone"}

    # 2. fine-tuned ------------------------------------------------------------------------------
    enc = VisualEncoder(VisualConfig(head="linear", dim=256, train_blocks=args.train_blocks, image_size=args.size),
                        seed=args.seed)
    last = [time.perf_counter()]

    def progress(step: int, total: int, loss: float) -> None:
        if time.perf_counter() - last[0] > 30 or step == total:
            last[0] = time.perf_counter()
            log(f"  step {step}/{total} loss {loss:.4f}")

    def _train() -> Any:
        return train_views(enc, refs, titles, views_per_ref=args.views, epochs=args.epochs, batch_size=args.batch,
                           views_per_step=args.views_per_step, lr=args.lr, seed=args.seed,
                           hard_negatives=not args.no_hard_negatives, view_size=args.view_size,
                           fresh_views=args.fresh_views, device=args.device, progress_cb=progress)

    cache_dir = Path(args.model_cache) / train_key(args) if args.model_cache else None
    if cache_dir is not None and (cache_dir / "report.json").exists():
        enc = VisualEncoder.load(cache_dir)
        report = TrainReport(**json.loads((cache_dir / "report.json").read_text()))
        timing["train"] = {"seconds": report.seconds, "peak_rss_mb": float("nan")}
        log(f"loaded the trained model from {cache_dir} (trained in {report.seconds:.0f}s)")
    else:
        report = stage("train", _train, timing)
        if cache_dir is not None:
            tmp = cache_dir.with_name(cache_dir.name + ".tmp")
            enc.save(tmp)
            (tmp / "report.json").write_text(json.dumps(asdict(report)))
            os.replace(tmp, cache_dir)
            log(f"saved the trained model to {cache_dir}")
    if args.train_only:
        return 0
    log(f"trained {report.steps} steps in {report.seconds:.0f}s (caching {report.seconds_caching:.0f}s); "
        f"loss {np.mean(report.losses[:10]):.3f} -> {np.mean(report.losses[-10:]):.3f}")
    vis_g, vis_s = stage("encode (fine-tuned)", lambda: visual_sets(enc), timing)
    results["fine-tuned"] = evaluate(vis_g, vis_s, labels, 0.0, args.max_false_accept)
    results["fine-tuned"]["_stage"] = "train"
    best = "fine-tuned"
    if crops != (1.0,):
        vis_g, vis_s = stage("encode query crops (fine-tuned)", lambda: visual_sets(enc, crops, gallery=vis_g), timing)
        best += " + query crops"
        results[best] = evaluate(vis_g, vis_s, labels, 0.0, args.max_false_accept)
        results[best]["_stage"] = "encode query crops (fine-tuned)"
    if args.gallery_views:
        proto_cache = cache_dir / f"gallery-views{args.gallery_views}.npz" if cache_dir is not None else None
        if proto_cache is not None and proto_cache.exists():  # the same model and gallery: the same prototypes
            with np.load(proto_cache) as z:
                vis_g = Embedded(z["visual"], z["text"], z["has_text"], [""] * len(refs))
                timing["gallery prototypes (fine-tuned)"] = {"seconds": float(z["seconds"]), "peak_rss_mb": float("nan")}
            log(f"gallery prototypes from {proto_cache}")
        else:
            vis_g = stage("gallery prototypes (fine-tuned)",
                          lambda: LogoModel(enc, gallery_views=args.gallery_views).embed_references(refs, titles),
                          timing)
            if proto_cache is not None:
                np.savez(proto_cache, visual=vis_g.visual, text=vis_g.text, has_text=vis_g.has_text,
                         seconds=timing["gallery prototypes (fine-tuned)"]["seconds"])
        best += f" + gallery views ({args.gallery_views})"
        results[best] = evaluate(vis_g, vis_s, labels, 0.0, args.max_false_accept)
        results[best]["_stage"] = "gallery prototypes (fine-tuned)"

    # 3. fine-tuned + text view ------------------------------------------------------------------
    if not args.no_text:
        from strop.index.encoder import Encoder
        from strop.index.image.logo import OcrReader, reference_text

        def _text() -> tuple[Embedded, dict[str, Embedded], float, list[dict[str, float]], float]:
            reader = OcrReader()
            text_enc = Encoder.load(None, precision="auto")
            ref_ocr, spi = ocr_cached(reader, _key("refs", [i.slug for i in gal_icons]), gal_crops)
            joined = [reference_text(t, o) for t, o in zip(titles, ref_ocr, strict=True)]

            def tv(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
                has = np.array([bool(t.strip()) for t in texts])
                out = np.zeros((len(texts), text_enc.dim), np.float32)
                if has.any():
                    out[has] = text_enc.encode([t for t in texts if t.strip()]).vectors
                return out, has

            gt, gh = tv(joined)
            g = Embedded(vis_g.visual, gt, gh, joined)
            sets = {}
            for k, ims in queries.items():
                key = _key(k, hashlib.sha1(b"".join(im.tobytes() for im in ims)).hexdigest())  # the pixels read
                texts, s = ocr_cached(reader, key, ims)
                qt, qh = tv(texts)
                sets[k] = Embedded(vis_s[k].visual, qt, qh, texts)
            w, grid = fit_fusion(g, sets["calib_known"], labels["calib_known"], sets["calib_unknown"])
            frac = float(np.mean([sets[k].has_text.mean() for k in sets]))
            return g, sets, w, grid, spi, frac  # type: ignore[return-value]

        g, sets, w, grid, spi, frac = stage("text view (OCR + MiniLM, fusion fit)", _text, timing)
        log(f"OCR {spi * 1000:.0f} ms/image (measured when first cached); queries with OCR text: {frac:.1%}; "
            f"w_text grid (calibration top-1): " + ", ".join(f"{r['w_text']:.1f}:{r['top1']:.3f}" for r in grid))
        best += " + text view"
        results[best] = evaluate(g, sets, labels, w, args.max_false_accept)
        results[best].update({"_stage": "text view (OCR + MiniLM, fusion fit)", "ocr_ms_per_image": spi * 1000,
                              "queries_with_text": frac, "fusion_grid": grid})
    else:
        g, sets, w = vis_g, vis_s, 0.0

    # 4. geometric verification of the top candidates ----------------------------------------------------
    if args.verify_top_k:
        from strop.index.image.logo import fused_scores
        from strop.index.image.verify import VerifyConfig

        vcfg = VerifyConfig(top_k=args.verify_top_k)
        vres = stage("geometric verification", lambda: verify_rows(refs, queries, {k: fused_scores(g, sets[k], w)[0]
                                                                                  for k in sets}, labels, vcfg,
                                                                 args.max_false_accept, cache_dir), timing)
        fused_best = best
        best += f" + verification (top {args.verify_top_k})"
        results[best] = {**vres["served"], "w_text": w, "_stage": "geometric verification"}
        f = vres["fitted"]
        results[f"{best}, bonus fitted: {f['weight']} x (inliers - {f['floor']}) / {f['cap']}"] = {
            **f, "w_text": w, "_stage": "geometric verification"}
        f = vres["fitted_ratio"]
        results[f"{best}, bonus fitted: {f['weight']} x (inliers - {f['floor']}) / {f['cap']} "
                f"+ {f['ratio_weight']} x inlier ratio"] = {**f, "w_text": w, "_stage": "geometric verification"}
        for variant in filter(None, args.verify_variants.split(";")):  # other settings, each its own row
            kw = {k.strip(): v.strip() for k, v in (kv.split("=") for kv in variant.split(","))}
            cfg = VerifyConfig.from_dict({**vcfg.to_dict(), **{k: type(getattr(vcfg, k))(v) if k != "ref_sides" else
                                                                 tuple(int(x) for x in v.split("/"))
                                                                 for k, v in kw.items()}})
            name = f"{fused_best} + verification ({variant})"
            vr = stage(name, lambda cfg=cfg: verify_rows(refs, queries, {k: fused_scores(g, sets[k], w)[0]
                                                                         for k in sets}, labels, cfg,
                                                         args.max_false_accept, cache_dir), timing)
            results[name] = {**vr["served"], "w_text": w, "_stage": name}

    # report ------------------------------------------------------------------------------------------
    rows = []
    for name, m in results.items():  # each row's wall time and peak RSS: the stage that row adds
        st = timing[m["_stage"]]
        rows.append([name, f"{m['top1']:.3f}", f"{m['top5']:.3f}", f"{m['auroc']:.3f}", f"{m['far_at_95tar']:.3f}",
                     f"{m.get('false_accept', float('nan')):.3f} / {m.get('true_accept', float('nan')):.3f}",
                     f"{m.get('w_text', 0):.1f}", f"{m['ms_per_query']:.0f}" if "ms_per_query" in m else "-",
                     f"{st['seconds']:,.0f}", f"{st['peak_rss_mb']:,.0f}"])
    md = table(["model", "top-1", "top-5", "AUROC", "FAR @95% TAR", "FA / TA @ calibrated thr", "w_text",
                "verify ms/query", "stage s", "peak RSS MB"], rows)
    print(f"\n{machine_line()}\n")
    print(f"gallery {len(refs)} brands, unseen {len(unseen)}; queries: "
          + ", ".join(f"{k} {len(v)}" for k, v in queries.items()))
    print(f"train: {report.steps} steps, {report.epochs} epochs, {args.views} views/ref, "
          f"{report.seconds:.0f}s (of which caching {report.seconds_caching:.0f}s)\n")
    print(md)
    print(f"\ntotal wall {time.perf_counter() - t_all:.0f}s")
    if args.samples:
        pred = results[best]["_pred"]
        truth = labels["test_known"]
        ok = [i for i in range(len(pred)) if pred[i] == truth[i]]
        bad = [i for i in range(len(pred)) if pred[i] != truth[i]]
        pick = np.random.default_rng(args.seed)
        for name, idx in (("logos_hits.png", ok), ("logos_misses.png", bad)):
            if idx:
                chosen = sorted(pick.choice(idx, min(6, len(idx)), replace=False).tolist())
                p = samples(ROOT / args.samples, name, chosen, queries["test_known"], pred, truth, gal_crops, titles)
                log(f"wrote {p}")
    out = {"args": vars(args), "timing": timing, "train": {"steps": report.steps, "seconds": report.seconds,
                                                           "seconds_caching": report.seconds_caching},
           "results": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()},
           "table": md, "command": "python -m bench.logos " + " ".join(sys.argv[1:] if argv is None else argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
