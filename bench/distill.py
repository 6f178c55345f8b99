"""Teacher ablation through the REST API, on two real sets:

* stdlib: CPython standard-library code search (docstring summary -> code), split by module file;
* debian: Debian package descriptions (synopsis -> long description), split by source package.

First a teacher job trains the collection's cross-encoder (RocketQA recipe). Then, from the same
base version and with the same step budget, encoder jobs run: hard negatives alone; + denoise;
+ margin_mse; + cprd; + listwise; + semantic positives; + mixing. The trained teacher also reranks the top 50 of
the base bi-encoder and of the hard-negatives job's bi-encoder (does reranking beat the
fine-tuned bi-encoder alone?). Encoder jobs use strop's measured defaults (lr 1e-4, bench/codesearch.py)
unless --lr says otherwise; the teacher job uses the teacher default (2e-4, head 1e-3). Reports MRR@10, R@1,
R@10 on the held-out queries and wall time.

    python -m bench.distill --set stdlib --steps 150
    python -m bench.distill --set debian --train 5000 --test 1000 --corpus 20000 --steps 150
    python -m bench.distill --quick              # smoke run on a few hundred pairs
    python -m bench.distill --set debian --teacher /models/all-mpnet-base-v2   # a named teacher, no teacher job
    python -m bench.distill --set debian --teacher-over hard --rows "hard negatives,+ margin_mse"
                                                # the teacher job runs over the hard-negatives model
    python -m bench.distill --set stdlib --teacher-over hard --teacher-fuse /models/all-mpnet-base-v2
                                                # ... and fuses mpnet with it instead of training
    python -m bench.distill --set stdlib --teacher-fuse /models/all-mpnet-base-v2 --teacher-folds 2 --epochs 3
                                                # ... cross-fitted over 2 fold bi-encoders
    python -m bench.distill --set stdlib --teacher-fuse /models/all-mpnet-base-v2 --teacher-folds 2 --teacher-tune-fuse
                                                # ... and mpnet fine-tuned in each fold too
    python -m bench.distill --set stdlib --teacher-fuse /models/all-mpnet-base-v2 --teacher-tune-fuse --unlabelled 1500 \
        --rows "hard negatives,hard negatives + pseudo"
                                                # both fine-tuned on every pair: a teacher for pseudo-labels
    python -m bench.distill --set stdlib --resume /tmp/strop-distill-XXXX/data --seeds 43,44 \
        --rows "hard negatives,hard negatives + listwise@0.3~2"
                                                # more rows over an earlier run's teacher, two seeds each
    python -m bench.distill --set debian ... --unlabelled 1500 --pseudo-check 0,0.5,0.7
                                                # how right the teacher's pseudo-labels are, per confidence
    python -m bench.distill --set debian ... --lexical 0.1,0.2
                                                # the base and first-row models also searched with BM25 fusion
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.codesearch import evaluate, run_job, start_server
from bench.datasets import debian_pairs, stdlib_pairs
from strop.client import Client
from strop.index.embcache import TEACHER_CACHE_DIR
from strop.trainer.contract import ENCODER_LR

# random batches (neighbour_group 0), as in every ablation row measured before neighbour batches became the default
BASE_MINING = {"negatives_per_query": 3, "range_min": 0, "range_max": 50, "relative_margin": 0.05,
               "neighbour_group": 0}
ROWS: dict[str, dict[str, Any]] = {
    "hard negatives": {},
    # strop's default on code collections: batches of 4 groups of 8 pairs with neighbouring positives
    "hard negatives + neighbour batches": {"mining": {"neighbour_group": 8}},
    "+ denoise": {"mining": {**BASE_MINING, "denoise": True}},
    "+ margin_mse": {"mining": {**BASE_MINING, "denoise": True}, "distill": {"loss": "margin_mse", "weight": 1.0}},
    "+ cprd": {"mining": {**BASE_MINING, "denoise": True}, "distill": {"loss": "cprd", "weight": 1.0}},
    "+ listwise": {"mining": {**BASE_MINING, "denoise": True}, "distill": {"loss": "listwise", "weight": 1.0}},
    "hard negatives + listwise": {"distill": {"loss": "listwise", "weight": 1.0}},  # without denoise
    "+ semantic positives": {"mining": {**BASE_MINING, "denoise": True}, "distill": {"loss": "cprd", "weight": 1.0},
                             "positives": {"semantic": True, "max_per_query": 1}},
    # train.queries: the --unlabelled queries, labelled by the teacher (pseudo-labels, GPL-style)
    "hard negatives + pseudo": {"queries": True},
    "hard negatives + pseudo + listwise": {"queries": True, "distill": {"loss": "listwise", "weight": 1.0}},
    "pseudo only": {"queries": True, "no_pairs": True},
    "+ mixing": {"mining": {**BASE_MINING, "denoise": True}, "distill": {"loss": "cprd", "weight": 1.0},
                 "mix_hard_negatives": {"count": 4, "hardest": 8}},
}


def load_set(name: str, n_train: int | None, n_test: int | None, n_corpus: int | None, n_unlabelled: int = 0) -> dict:
    """The set's labelled train pairs, test pairs and corpus. With ``n_unlabelled``, the next that many
    training pairs (after the first ``n_train``) become unlabelled queries, like a search log's: their
    answers are kept in the corpus, but only the query text goes to a job (``train.queries``)."""
    if name == "stdlib":
        d = stdlib_pairs()
        train, test, corpus = d["train"], d["test"], d["corpus_all"]
        train = [{"query": p["query"], "positive_id": p["positive_id"]} for p in train]
        test = [{"query": p["query"], "positive_id": p["positive_id"]} for p in test]
        modality = "code"
    else:
        d = debian_pairs()
        train = [{"query": p["query"], "positive_id": p["positive_id"]} for p in d["train"]]
        test = [{"query": p["query"], "positive_id": p["positive_id"]} for p in d["test"]]
        corpus = d["corpus"]
        modality = "text"
    unlabelled = train[n_train:n_train + n_unlabelled] if n_train and n_unlabelled else []
    train, test = train[: n_train or None], test[: n_test or None]
    if n_corpus:
        keep = {p["positive_id"] for p in train + test + unlabelled}
        corpus = [c for c in corpus if c["id"] in keep] + [c for c in corpus if c["id"] not in keep][: max(0, n_corpus - len(keep))]
    return {"train": train, "test": test, "corpus": corpus, "modality": modality,
            "unlabelled": [p["query"] for p in unlabelled], "unlabelled_pairs": unlabelled}


def pseudo_check(data_dir: Path, data: dict, candidates: int, thresholds: list[float]) -> str:
    """How right the teacher's pseudo-labels are: the job's own code (snapshot of the base version,
    its encoder, ``strop.trainer.teaching.pseudo_label`` with the collection's teacher) run on the
    unlabelled queries, scored against the answers the bench kept back. A table of coverage and
    precision per confidence threshold, against the base bi-encoder's own top 1."""
    from strop.index.settings import Settings
    from strop.index.store import DocumentStore
    from strop.index.teacher import load_teacher
    from strop.index.versions import VersionStore
    from strop.trainer.contract import JobSpec
    from strop.trainer.data import snapshot
    from strop.trainer.pipeline import Reporter, current_embeddings
    from strop.trainer.teaching import TeacherCache, pick_label, pseudo_label
    from strop.trainer.train import inference_encoder, load_model

    settings = Settings(data_dir=data_dir)  # as the server of the run: its teacher cache, its device
    device = settings.resolved_device()
    store = DocumentStore(settings.store_location())
    snap = snapshot(store, str(data_dir), "set")
    if not snap.teacher:
        return "pseudo check: the collection has no teacher"
    model = load_model(snap.encoder_source, device, 128)
    enc = inference_encoder(model, "base", device)
    corpus = current_embeddings(store, VersionStore(str(data_dir), "set"), snap, enc, Reporter())
    queries = list(dict.fromkeys(data["unlabelled"]))
    truth = {p["query"]: snap.pos[p["positive_id"]] for p in data["unlabelled_pairs"]}
    qv = enc.encode(queries).vectors
    student_top1 = np.argmax(qv @ corpus.T, axis=1)

    spec = JobSpec.model_validate({"train": {"queries": queries}, "eval": {"pairs": [{"query": "-", "positive_ids": ["-"]}]},
                                   "pseudo": {"candidates": candidates, "min_confidence": 1e-6}})
    cache = TeacherCache(load_teacher(snap.teacher, device, disk_cache=settings.teacher_disk_cache()))
    pairs, _ = pseudo_label(cache, queries, qv, corpus, snap.texts, spec, 0)  # every query, its scores cached
    by_pair: dict[int, dict[int, float]] = {}
    for (i, r), v in cache.scores.items():  # candidate order: the student's first is first
        by_pair.setdefault(i, {})[r] = v
    n = len(queries)
    out = [f"\npseudo-labels of {n} unlabelled queries (teacher over the base model's top {candidates}); "
           f"the base model's own top 1 is right for {np.mean([truth[q] == r for q, r in zip(queries, student_top1, strict=True)]):.3f}",
           "| min_confidence | labelled | share of queries | precision | not the student's first |",
           "|---|---|---|---|---|"]
    picked = []
    for i, p in enumerate(pairs):
        rows = list(by_pair[i])
        best, same, conf = pick_label(p.query, rows, np.array([by_pair[i][r] for r in rows]), snap.texts, spec,
                                      cache.teacher.kind)
        picked.append((truth[p.query] in [rows[b] for b in same], conf, best != 0))
    for th in sorted(thresholds):
        sel = [(ok, moved) for ok, c, moved in picked if c >= th]
        out.append(f"| {th:g} | {len(sel)} | {len(sel) / n:.3f} | "
                   f"{np.mean([ok for ok, _ in sel]) if sel else float('nan'):.3f} | {sum(m for _, m in sel)} |")
    return "\n".join(out)


def job(c: Client, name: str, body: dict) -> tuple[dict, float]:
    """Run a job on collection ``name`` to its end: its final record and wall seconds."""
    t = time.perf_counter()
    j = run_job(c, body, name)
    return j, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["stdlib", "debian"], default="stdlib")
    ap.add_argument("--train", type=int)
    ap.add_argument("--test", type=int)
    ap.add_argument("--corpus", type=int)
    ap.add_argument("--unlabelled", type=int, default=0, metavar="N",
                    help="N more training queries without their labels (their answers stay in the corpus): rows "
                         "named '... + pseudo' give them to the job as train.queries, for the teacher to label")
    ap.add_argument("--pseudo-candidates", type=int, default=20, help="pseudo rows: pseudo.candidates")
    ap.add_argument("--pseudo-confidence", type=float, default=0.5, help="pseudo rows: pseudo.min_confidence")
    ap.add_argument("--lexical", default="", metavar="W[,W...]",
                    help="also evaluate the base model (zero-shot) and each seed's first-row model searched with "
                         "BM25 fusion at these weights (the search-time `lexical`)")
    ap.add_argument("--pseudo-check", default=None, metavar="THRESHOLDS",
                    help="after the rows, score the teacher's pseudo-labels of the --unlabelled queries against "
                         "their answers at these min_confidence values (comma-separated, e.g. 0,0.5,0.8)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=1,
                    help="encoder jobs' epochs over the training pairs (--steps caps the steps of all of them)")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated row names; a distillation row takes its weight after @ (\"+ cprd@0.3\") and its "
                         "teacher temperature after ~ (\"+ cprd@0.3~2\"), any row its own epochs after * "
                         "(\"hard negatives*1\")")
    ap.add_argument("--lr", type=float, default=None, help="encoder jobs' learning rate (default: strop's)")
    ap.add_argument("--negatives", type=int, default=BASE_MINING["negatives_per_query"],
                    help="mined negatives per query in every row (cprd needs >= 2)")
    ap.add_argument("--teacher-from-first-row", action="store_true",
                    help="no teacher job: after each seed's first row, that row's fine-tuned encoder becomes the "
                         "collection's (bi-encoder) teacher for the seed's other rows (self-training)")
    ap.add_argument("--teacher", default=None, help="name this teacher (a path: a cross-encoder or a "
                    "sentence-transformers model such as all-mpnet-base-v2) instead of training one")
    ap.add_argument("--teacher-weight", default="0.5", help="also report the teacher fused with the bi-encoder "
                    "at these weights (comma-separated; the service's teacher_weight)")
    ap.add_argument("--no-teacher", action="store_true", help="no teacher at all: only rows that need none")
    ap.add_argument("--teacher-over", choices=["base", "hard"], default="base",
                    help="train the teacher job over the base model (before every row) or over the hard-negatives "
                         "row's model (right after it; that row must come first)")
    ap.add_argument("--rerank-depth", type=int, default=50, help="candidates the teacher job reranks in its evaluation")
    ap.add_argument("--teacher-fuse", default=None, metavar="BI_ENCODER",
                    help="the teacher job fuses this bi-encoder (e.g. all-mpnet-base-v2) with the live one instead "
                         "of training a cross-encoder (job option 'fuse'; weight fitted on the held-out pairs)")
    ap.add_argument("--teacher-folds", type=int, default=None, metavar="K",
                    help="with --teacher-fuse: cross-fit the fused teacher over K bi-encoders, each fine-tuned on the "
                         "training pairs outside its fold like the hard-negatives row (job option 'folds')")
    ap.add_argument("--teacher-tune-fuse", action="store_true",
                    help="with --teacher-fuse: fine-tune a copy of the fuse bi-encoder too (job option 'tune_fuse'): "
                         "in each fold with --teacher-folds, else both it and the live one's copy on every pair")
    ap.add_argument("--teacher-cache-from", default=None, metavar="DATA_DIR",
                    help="start with the teacher embedding cache of an earlier run's data directory (saves the cold "
                         "pass of a bi-encoder teacher over the corpus)")
    ap.add_argument("--resume", default=None, metavar="DATA_DIR",
                    help="reuse an earlier run's data directory (same set and sizes): its collection, base version "
                         "and teacher as they are; no zero-shot row and no teacher job, only --rows")
    ap.add_argument("--seeds", default="42",
                    help="comma-separated job seeds: every row runs once per seed (batches, mining order and "
                         "initialisation of new heads follow the seed), and the table gives each row's mean, its "
                         "sd over seeds and its paired difference from the first row")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    weights = [float(w) for w in args.teacher_weight.split(",") if w.strip()]
    lexical = [w for w in (float(x) for x in args.lexical.split(",") if x.strip()) if w]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.teacher_over == "hard" and args.rows.split(",")[0] != "hard negatives":
        ap.error("--teacher-over hard: the first row must be 'hard negatives'")
    if args.quick:
        args.train, args.test, args.corpus, args.steps, args.teacher_steps = 300, 100, 1000, 10, 10
    data = load_set(args.set, args.train, args.test, args.corpus, args.unlabelled)
    evals = [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in data["test"]]
    print(f"{args.set}: train {len(data['train'])}, test {len(data['test'])}, corpus {len(data['corpus'])}, "
          f"unlabelled {len(data['unlabelled'])}", flush=True)
    tmp = Path(args.resume).parent if args.resume else Path(tempfile.mkdtemp(prefix="strop-distill-"))
    print(f"data dir {tmp / 'data'} (kept; --teacher-cache-from and --resume take it)", flush=True)
    if args.teacher_cache_from:
        shutil.copytree(Path(args.teacher_cache_from) / TEACHER_CACHE_DIR, tmp / "data" / TEACHER_CACHE_DIR)
    server, url = start_server(tmp / "data")
    rows: list[tuple[str, dict, float]] = []  # teacher and rerank rows: one measurement each
    seeded: list[tuple[str, int, dict, float]] = []  # encoder-job rows: one per seed
    try:
        c = Client(url, timeout=3600)
        if args.resume:  # the earlier run's base version is its first
            versions = c.list_versions("set")["versions"]
            base = min(v["id"] for v in versions)
        else:
            c.create_collection("set", modality=data["modality"])
            c.upsert("set", data["corpus"])
            base = c.get_collection("set")["version"]["id"]
        common = {"train": {"pairs": data["train"]}, "eval": {"pairs": evals}, "batch_size": 32,
                  "gate": {"metric": "mrr@10", "min_delta": -1.0}}
        encoder_lr = {"learning_rate": args.lr} if args.lr else {}
        teacher_ok = False
        if not args.resume:
            rows.append(("zero-shot", evaluate(c, "set", evals), 0.0))
            for w in lexical:
                t = time.perf_counter()
                rows.append((f"zero-shot + lexical {w:g}", evaluate(c, "set", evals, lexical=w),
                             time.perf_counter() - t))
        if args.resume and not args.no_teacher and c.get_collection("set")["teacher"]:
            # the stored teacher may have changed since its job measured it (docs/benchmarks.md): measure it again
            c.activate_version("set", base)
            teacher_ok = True
            t = time.perf_counter()
            rows.append(("teacher reranks the base bi-encoder's top 50", evaluate(c, "set", evals, rerank=True),
                         time.perf_counter() - t))
            print(rows[-1][0], json.dumps(rows[-1][1]), flush=True)
        elif args.no_teacher or args.resume:
            pass
        elif args.teacher:  # a named teacher (e.g. all-mpnet-base-v2) instead of a teacher job
            c.set_teacher("set", args.teacher)
            teacher_ok = True
            for label, extra in (("teacher reranks the base bi-encoder's top 50", {}),
                                 *((f"teacher fused (w {w:g}) with the base bi-encoder", {"teacher_weight": w})
                                   for w in weights)):
                t = time.perf_counter()
                rows.append((label, evaluate(c, "set", evals, rerank=True, **extra), time.perf_counter() - t))
                print(label, json.dumps(rows[-1][1]), flush=True)
        def teacher_job(over: str) -> bool:
            """A teacher job over the active version (its prior); True when it was stored."""
            tj, tw = job(c, "set", {**common, "kind": "teacher", "max_steps": args.teacher_steps,
                                    "rerank_depth": args.rerank_depth, **teacher_extra})
            print("teacher", tj["state"], json.dumps(tj["metrics"]), json.dumps(tj["details"].get("stage_seconds")),
                  json.dumps(tj["details"].get("train")), flush=True)
            ok = tj["state"] == "succeeded"
            end = time.time() + 30  # the API learns of the new teacher on its next sync
            while ok and not c.get_collection("set")["teacher"] and time.time() < end:
                time.sleep(0.5)
            if ok:
                rows.append((f"trained teacher reranks the {over} bi-encoder's top {args.rerank_depth}", tj["metrics"]["after"], tw))
                # stored as the collection's teacher: the bench's gate (min_delta -1) lets every job through
                for w in weights:
                    label = f"trained teacher fused (w {w:g}) with the {over} bi-encoder"
                    t = time.perf_counter()
                    rows.append((label, evaluate(c, "set", evals, rerank=True, teacher_weight=w),
                                 time.perf_counter() - t))
                    print(label, json.dumps(rows[-1][1]), flush=True)
            return ok

        teacher_extra: dict[str, Any] = {}
        if args.teacher_fuse:
            teacher_extra["fuse"] = args.teacher_fuse
        if args.teacher_folds or args.teacher_tune_fuse:  # the teacher's bi-encoders train like the hard-negatives row
            teacher_extra.update(learning_rate=args.lr or ENCODER_LR,
                                 mining={**BASE_MINING, "negatives_per_query": args.negatives})
            if args.teacher_folds:
                teacher_extra["folds"] = args.teacher_folds
            if args.teacher_tune_fuse:
                teacher_extra["tune_fuse"] = True
        if not (args.no_teacher or args.teacher or args.resume or args.teacher_from_first_row) and args.teacher_over == "base":
            teacher_ok = teacher_job("base")
        # seed-major: every row's first seed before any second one, so a cut-short run still compares rows
        for seed, row in ((sd, r) for sd in seeds for r in args.rows.split(",") if r):
            c.activate_version("set", base)
            first_row = row == args.rows.split(",")[0]
            row, _, row_epochs = row.partition("*")  # "hard negatives*1": that row with 1 epoch
            row_t, _, temp = row.partition("~")  # "+ listwise~2": that row with distill.teacher_temperature 2
            name, _, weight = row_t.partition("@")  # "+ cprd@0.3": that row with distill.weight 0.3
            spec = {**ROWS[name], "epochs": int(row_epochs or args.epochs)}
            if row_epochs:
                row = f"{row} ({row_epochs} epochs)"
            if weight:
                if "distill" not in spec:
                    raise SystemExit(f"row {row!r}: only a distillation row takes a weight")
                spec["distill"] = {**spec["distill"], "weight": float(weight)}
            if temp:
                if "distill" not in spec:
                    raise SystemExit(f"row {row!r}: only a distillation row takes a teacher temperature")
                spec["distill"] = {**spec["distill"], "teacher_temperature": float(temp)}
            mining = {**BASE_MINING, **spec.pop("mining", {}), "negatives_per_query": args.negatives}
            train = {} if spec.pop("no_pairs", False) else {"pairs": data["train"]}
            if spec.pop("queries", False):
                if not data["unlabelled"]:
                    raise SystemExit(f"row {row!r} needs unlabelled queries: give --unlabelled N")
                train["queries"] = data["unlabelled"]
                spec["pseudo"] = {"candidates": args.pseudo_candidates, "min_confidence": args.pseudo_confidence}
            body = {**common, **encoder_lr, "max_steps": args.steps, "mining": mining, **spec, "seed": seed,
                    "train": train}
            j, wall = job(c, "set", body)
            if j["state"] not in ("succeeded", "rejected"):
                print(row, seed, j["state"], j["error"], flush=True)
                continue
            seeded.append((row, seed, j["metrics"]["after"], wall))
            if args.teacher_from_first_row and first_row:
                encoder = tmp / "data" / "collections" / "set" / "versions" / j["version"] / "encoder"
                c.set_teacher("set", str(encoder))
            if lexical and first_row and j["version"]:  # what search-time BM25 fusion adds to the trained model
                c.activate_version("set", j["version"])
                for w in lexical:
                    t = time.perf_counter()
                    m = evaluate(c, "set", evals, lexical=w)
                    seeded.append((f"{row} + lexical {w:g}", seed, m, time.perf_counter() - t))
                    print(f"{row} seed {seed} + lexical {w:g}", json.dumps(m), flush=True)
            print(row, f"seed {seed}", json.dumps(j["metrics"]["after"]), round(wall),
                  json.dumps(j["details"].get("stage_seconds")),
                  json.dumps({k: j["details"].get(k) for k in ("mining", "teacher", "semantic_positives", "pseudo_labels",
                                                            "train")}), flush=True)
            if seed != seeds[0]:
                continue  # the teacher and rerank rows below follow the first seed's model
            if name == "hard negatives" and args.teacher_over == "hard" and not (args.no_teacher or args.teacher or args.resume):
                # ANCE-style: the teacher is trained over (and, through its prior, on top of) the fine-tuned model
                c.activate_version("set", j["version"])
                teacher_ok = teacher_job("hard-negatives")
            elif name == "hard negatives" and teacher_ok:
                c.activate_version("set", j["version"])
                fused = tuple((f"teacher fused (w {w:g}) with the hard-negatives bi-encoder", {"teacher_weight": w})
                              for w in weights)
                for label, extra in (("teacher reranks the hard-negatives bi-encoder's top 50", {}), *fused):
                    t = time.perf_counter()
                    rows.append((label, evaluate(c, "set", evals, rerank=True, **extra), time.perf_counter() - t))
                    print(label, json.dumps(rows[-1][1]), flush=True)
        if args.pseudo_check:  # the check replays a job over the base version
            c.activate_version("set", base)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"\n| {args.set} | MRR@10 | R@1 | R@10 | wall s |\n|---|---|---|---|---|")
    for name, m, wall in rows:
        print(f"| {name} | {m['mrr@10']:.4f} | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {wall:.0f} |")
    print(seed_table(args.set, seeded))
    if args.pseudo_check:
        print(pseudo_check(tmp / "data", data, args.pseudo_candidates,
                           [float(x) for x in args.pseudo_check.split(",")]), flush=True)


def seed_table(set_name: str, seeded: list[tuple[str, int, dict, float]]) -> str:
    """Encoder rows over seeds: per-seed MRR@10, the mean and sd of each metric, and each row's
    paired difference from the first row (same seed, so batch order and mining luck cancel)."""
    by_row: dict[str, dict[int, tuple[dict, float]]] = {}
    for row, seed, m, wall in seeded:
        by_row.setdefault(row, {})[seed] = (m, wall)
    if not by_row:
        return ""
    first = next(iter(by_row.values()))
    all_seeds = sorted({seed for _, seed, _, _ in seeded})

    def ms(xs: list[float]) -> str:
        if len(xs) < 2:
            return f"{xs[0]:.4f}" if xs else "-"
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"

    out = [f"\n| {set_name} | " + " | ".join(f"MRR@10 seed {s}" for s in all_seeds)
           + " | MRR@10 mean ± sd | Δ first row (paired, points) | R@1 mean | R@10 mean | wall s mean |",
           "|---|" + "---|" * (len(all_seeds) + 5)]
    for row, runs in by_row.items():
        mrr = [runs[s][0]["mrr@10"] for s in all_seeds if s in runs]
        diffs = [100 * (runs[s][0]["mrr@10"] - first[s][0]["mrr@10"]) for s in all_seeds if s in runs and s in first]
        delta = "-" if not diffs else (f"{statistics.mean(diffs):+.2f}" if len(diffs) < 2 else
                                        f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}")
        per = " | ".join(f"{runs[s][0]['mrr@10']:.4f}" if s in runs else "-" for s in all_seeds)
        r1 = statistics.mean(r[0]["recall@1"] for r in runs.values())
        r10 = statistics.mean(r[0]["recall@10"] for r in runs.values())
        wall = statistics.mean(r[1] for r in runs.values())
        out.append(f"| {row} | {per} | {ms(mrr)} | {delta} | {r1:.4f} | {r10:.4f} | {wall:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
