"""Screen logo-training knobs in-process on a subset of brands.

``python -m bench.logoknobs --brands 400 --views 12 --epochs 30 --train-blocks 3,6,9`` renders
``--brands`` simple-icons brands (a fixed-seed subset, all in the gallery), one wild view of each
as the query (the ``bench.logos`` wild family and seed stream), and for each ``--train-blocks``
value fine-tunes a fresh encoder on the same cached train-family views. Each model is scored four
ways, top-1 over the subset:

* ``plain``: query embedded whole against the clean reference;
* ``proto``: against gallery prototypes (reference + 8 train-family views, summed and normalised);
* ``crops``: query as crops (``strop.index.image.logo.crop_grid`` at 1, 0.75, 0.5), best crop;
* ``proto+crops``: both.

The frozen backbone is scored the same way first. A screen, not the benchmark: ``bench.logos``
measures the chosen configuration on the whole gallery with held-out brands and open-set metrics.
"""

from __future__ import annotations

from bench._util import omp_passive

omp_passive()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench._util import log, machine_line, table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brands", type=int, default=400)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-blocks", default="3,6,9")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gallery-views", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bench.logos import icons, render
    from strop.index.image.logo import VisualConfig, VisualEncoder, crop_grid, crop_to_content
    from strop.trainer.image.views import make_view, make_views, topk_accuracy, train_views, view_rng

    n, size = args.brands, args.size
    rng = np.random.default_rng(0)
    ic = icons()
    ic = [ic[i] for i in sorted(rng.permutation(len(ic))[:n])]
    refs = [render(i) for i in ic]
    crops = [crop_to_content(r) for r in refs]
    wild = [make_view(r, view_rng(10_000, i, 0, "wild"), "wild", size) for i, r in enumerate(refs)]
    labels = np.arange(n)
    gal_views = make_views(refs, args.gallery_views, seed=777, family="train", size=size)
    t = time.perf_counter()
    views = make_views(refs, args.views, seed=0, family="train", size=size)
    log(f"{n} brands; {args.views} train views each rendered in {time.perf_counter() - t:.0f}s")
    q_crops = [crop_grid(w, (1.0, 0.75, 0.5)) for w in wild]

    def score(enc: VisualEncoder) -> dict[str, float]:
        g = enc.encode(crops)
        gv = enc.encode([v for vs in gal_views for v in vs]).reshape(n, -1, g.shape[1])
        proto = g + gv.sum(1)
        proto /= np.linalg.norm(proto, axis=1, keepdims=True)
        q = enc.encode(wild)
        qc = enc.encode([c for cs in q_crops for c in cs]).reshape(n, len(q_crops[0]), -1)
        best = lambda gal: np.einsum("qcd,nd->qnc", qc, gal).max(2)  # noqa: E731
        return {"plain": topk_accuracy(q @ g.T, labels), "proto": topk_accuracy(q @ proto.T, labels),
                "crops": topk_accuracy(best(g), labels), "proto+crops": topk_accuracy(best(proto), labels)}

    rows = []
    t = time.perf_counter()
    s = score(VisualEncoder(VisualConfig(head="identity", train_blocks=0, image_size=size)))
    rows.append(["frozen backbone", "-", "-", *(f"{v:.3f}" for v in s.values()), f"{time.perf_counter() - t:.0f}"])
    log(f"frozen: {s}")
    for tb in (int(x) for x in args.train_blocks.split(",")):
        enc = VisualEncoder(VisualConfig(head="linear", dim=256, train_blocks=tb, image_size=size))
        t = time.perf_counter()
        rep = train_views(enc, refs, views_per_ref=args.views, epochs=args.epochs, batch_size=64, lr=args.lr,
                          view_size=size, views=views)
        s = score(enc)
        loss = f"{np.mean(rep.losses[:5]):.2f} -> {np.mean(rep.losses[-5:]):.2f}"
        rows.append([f"{tb} blocks", str(rep.steps), loss, *(f"{v:.3f}" for v in s.values()),
                     f"{rep.seconds:.0f}"])
        log(f"{tb} blocks: {s} ({rep.steps} steps, {rep.seconds:.0f}s)")
    print(f"\n{machine_line()}\n")
    print(f"{n} brands, {args.views} train views, {args.epochs} epochs, lr {args.lr}, {size} px; top-1 of one wild "
          f"view per brand over the {n}-brand gallery\n")
    print(table(["model", "steps", "loss", "plain", "proto", "crops", "proto+crops", "train s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
