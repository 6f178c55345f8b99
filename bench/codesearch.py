"""Code search on the CPython standard library, everything through the REST API.

Split: bench.datasets.stdlib_pairs (docstring summary -> function source without its
docstring), 80/20 by module file. A live `strop serve` (embedded Redis + worker) is
started on a temp data dir. For each configuration the collection "all" (every stdlib
function, ~14k, the realistic corpus) is rolled back to its base version and a job is
submitted; the trained encoder is then also evaluated on a collection holding only the
test functions (~1.2k). Reports MRR@10, R@1, R@10 on both corpora, job wall time and
time per stage.

    python -m bench.codesearch                 # full run (hours on 2 CPU cores)
    python -m bench.codesearch --quick         # smoke: 600 train pairs, 10 steps
    python -m bench.codesearch --configs inbatch,mined1
    python -m bench.codesearch --configs mined1 --lr 1e-4 --lexical 0.1   # also every row fused with BM25
    python -m bench.codesearch --configs mined1 --lr 1e-4 --context       # code embedded after its location
    python -m bench.codesearch --configs docstrings_mined1 --lr 1e-4 --context --lexical 0.1 \
        --teacher /models/all-mpnet-base-v2 --teacher-weight 0.5        # + reranked by a stronger bi-encoder
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datasets import stdlib_pairs
from strop.client import Client, StropError

CONFIGS: dict[str, dict[str, Any]] = {
    "inbatch": {"mining": {"negatives_per_query": 0}},
    "mined1": {"mining": {"negatives_per_query": 1, "range_min": 0, "range_max": 50, "relative_margin": 0.05}},
    "mined3": {"mining": {"negatives_per_query": 3, "range_min": 0, "range_max": 50, "relative_margin": 0.05}},
    "mined1_window10_100": {"mining": {"negatives_per_query": 1, "range_min": 10, "range_max": 100,
                                       "relative_margin": 0.05}},
    "mined1_margin10": {"mining": {"negatives_per_query": 1, "range_max": 50, "relative_margin": 0.10}},
    # queries whose positive ranks below 50 have every top-50 candidate above the positive: a wider window
    # gives them candidates under the positive's score
    "mined1_window0_200": {"mining": {"negatives_per_query": 1, "range_min": 0, "range_max": 200,
                                      "relative_margin": 0.05}},
    "mined1_margin02": {"mining": {"negatives_per_query": 1, "range_max": 50, "relative_margin": 0.02}},
    # MoCHi: 4 synthetic negatives per query mixed from its 8 hardest in-batch + mined negatives
    "mined1_mix": {"mining": {"negatives_per_query": 1}, "mix_hard_negatives": {"count": 4, "hardest": 8}},
    # batches of 4 groups of 8 pairs whose positives are neighbours in the live index (TAS-style batch mining)
    "mined1_nb8": {"mining": {"negatives_per_query": 1, "neighbour_group": 8}},
    "inbatch_nb8": {"mining": {"negatives_per_query": 0, "neighbour_group": 8}},
    "mined1_t0.02": {"mining": {"negatives_per_query": 1}, "loss": {"temperature": 0.02}},
    "mined1_refresh": {"mining": {"negatives_per_query": 1, "refresh_every": 73}},  # once, mid-epoch
    "inbatch_2ep": {"mining": {"negatives_per_query": 0}, "epochs": 2},
    "inbatch_lr5e-5": {"mining": {"negatives_per_query": 0}, "learning_rate": 5e-5},
    "mined1_lr5e-5": {"mining": {"negatives_per_query": 1}, "learning_rate": 5e-5},
    "mined3_lr5e-5": {"mining": {"negatives_per_query": 3}, "learning_rate": 5e-5},
    # equal wall time with mined1 at lr 1e-4: its training took ~1.6x the in-batch job's 145 steps
    # lr 2e-4 for both: in-batch had saturated by 5e-5, mining was still climbing at 1e-4
    "inbatch_lr2e-4": {"mining": {"negatives_per_query": 0}, "learning_rate": 2e-4},
    "mined1_lr2e-4": {"mining": {"negatives_per_query": 1}, "learning_rate": 2e-4},
    "inbatch_eqwall": {"mining": {"negatives_per_query": 0}, "epochs": 2, "max_steps": 234},
    "inbatch_3ep": {"mining": {"negatives_per_query": 0}, "epochs": 3},
    # CoCoSoDa-style options on the in-batch job
    "inbatch_augment": {"mining": {"negatives_per_query": 0}, "augment": {"rate": 0.1, "mode": "both"}},
    "inbatch_momentum": {"mining": {"negatives_per_query": 0}, "momentum_queue": {"size": 1024, "momentum": 0.999}},
    # the stdlib ingested as `strop ingest code` does, trained on its own docstrings (no pairs given;
    # the test queries are passed as eval pairs, so their modules are kept out of training)
    "docstrings_inbatch": {"train": {"source": "docstrings"}, "mining": {"negatives_per_query": 0}},
    "docstrings_mined1": {"train": {"source": "docstrings"}, "mining": {"negatives_per_query": 1}},
    # training at the encoder's own 256 tokens instead of strop's 128 (bench/trainknobs.py: +1.3 in-batch, 2.2x time)
    "docstrings_mined1_seq256": {"train": {"source": "docstrings"}, "mining": {"negatives_per_query": 1},
                                 "max_seq_length": 256},
}
# Rows measured before neighbour batches became the default on code collections (mining.neighbour_group 8)
# trained on random batches. Configs that do not name it keep random batches, so they reproduce their
# rows, and the default job is "mined1_nb8".
for _cfg in CONFIGS.values():
    _cfg.setdefault("mining", {}).setdefault("neighbour_group", 0)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_with_us(p: subprocess.Popen) -> None:
    """The server runs in its own session, so a ``timeout`` or ``kill`` of the benchmark would leave it
    serving: stop it at exit, and turn SIGTERM into a normal exit so ``finally`` blocks and atexit run."""
    atexit.register(lambda: p.poll() is None and p.terminate())
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    except ValueError:  # not the main thread: the caller's own handling applies
        pass


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    log = open(data_dir.parent / "serve.log", "a")
    p = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--port", str(port), "--data-dir",
                          str(data_dir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _stop_with_us(p)
    url = f"http://127.0.0.1:{port}"
    with Client(url, timeout=2) as c:
        for _ in range(600):
            if p.poll() is not None:
                break
            try:
                c.ready()
                return p, url
            except StropError:  # not answering yet, or answering 503 while it loads
                pass
            time.sleep(0.5)
    raise RuntimeError("server did not start; see serve.log")


def evaluate(c: Client, name: str, pairs: list[dict], lexical: float = 0.0, *, rerank: bool = False,
             teacher_weight: float | None = None) -> dict:
    # lexical sent explicitly, so code collections do not fall back to the server's code_lexical default
    return dict(c.evaluate(name, pairs, k=10, rerank=rerank, lexical=lexical, teacher_weight=teacher_weight))


def run_job(c: Client, body: dict, collection: str = "all") -> dict:
    """Submit a job and wait for it to finish; its final record."""
    return dict(c.follow_job(c.submit_job(collection, body)["job_id"], poll_s=2))


def teacher_rows(c: Client, name: str, pairs: list[dict], teacher: str | None, weight: float,
                 lexical: float) -> dict[str, dict]:
    """With a teacher: the teacher's order over the top 50 (``rerank``), and its fusion with the bi-encoder
    (``teacher_weight``, plus ``lexical`` when given)."""
    if not teacher:
        return {}
    c.set_teacher(name, teacher)
    out = {}
    for label, extra in (("rerank", {"rerank": True}),
                         (f"fused t{weight:g}", {"rerank": True, "teacher_weight": weight})):
        t = time.perf_counter()
        out[label] = evaluate(c, name, pairs, lexical if "teacher_weight" in extra else 0.0, **extra)
        print(f"{name}: teacher {label} (lexical {lexical if 'teacher_weight' in extra else 0:g}) "
              f"{out[label]['mrr@10']:.4f} in {time.perf_counter() - t:.0f}s", flush=True)
    return out


def evaluate_encoder(c: Client, name: str, encoder: Path, docs: list[dict], eval_pairs: list[dict],
                     lexical: float = 0.0, teacher: str | None = None,
                     teacher_weight: float = 0.0) -> tuple[dict, dict | None, dict[str, dict]]:
    """A throwaway collection over ``docs`` served by ``encoder``: metrics dense, fused when ``lexical``,
    and reranked by ``teacher`` when given."""
    c.create_collection(name, modality="code", encoder=str(encoder))
    try:
        c.upsert(name, docs)
        return (evaluate(c, name, eval_pairs), (evaluate(c, name, eval_pairs, lexical) if lexical else None),
                teacher_rows(c, name, eval_pairs, teacher, teacher_weight, lexical))
    finally:
        c.delete_collection(name)


def ingest_stdlib(c: Client, root: str) -> str:
    """Ingest the stdlib (the same files stdlib_pairs parses) into "stdlib" as `strop ingest code` does;
    its base version."""
    from bench.datasets import STDLIB_EXCLUDE

    t = time.perf_counter()
    out = c.ingest_code("stdlib", root, exclude=STDLIB_EXCLUDE)
    print(f"ingest code (stdlib): {json.dumps(out)} in {time.perf_counter() - t:.0f}s", flush=True)
    return c.get_collection("stdlib")["version"]["id"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=2e-5, help="learning rate of every job (a config may override it)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every job (a config may override it)")
    ap.add_argument("--lexical", type=float, default=0.0,
                    help="also evaluate every row with this lexical fusion weight (index/lexical.py)")
    ap.add_argument("--context", action="store_true",
                    help="send each function's module and qualname as metadata, so strop embeds it after a "
                         "location comment (strop.index.code.parse.context_header), as `strop ingest code` does")
    ap.add_argument("--root", default=None, help="another Python tree instead of the stdlib (smoke runs)")
    ap.add_argument("--teacher", default=None, help="also rerank every trained row with this teacher (a path, "
                    "e.g. all-mpnet-base-v2), alone and fused with --teacher-weight")
    ap.add_argument("--teacher-weight", type=float, default=0.5)
    args = ap.parse_args()

    data = stdlib_pairs(args.root)
    train, test = data["train"], data["test"]
    corpus_all, corpus_test = data["corpus_all"], data["corpus_test"]
    if args.context:
        corpus_all = [{**d, "metadata": data["contexts"][d["id"]]} for d in corpus_all]
        corpus_test = [{**d, "metadata": data["contexts"][d["id"]]} for d in corpus_test]
    if args.quick:
        train, test = train[:600], test[:200]
        keep = {p["positive_id"] for p in train + test}
        corpus_all = [d for d in corpus_all if d["id"] in keep] + [d for d in corpus_all if d["id"] not in keep][:1000]
        corpus_test = [d for d in corpus_test if d["id"] in {p["positive_id"] for p in test}]
    max_steps = args.max_steps or (10 if args.quick else None)
    print(f"sizes: train pairs {len(train)}, test pairs {len(test)}, corpus_all {len(corpus_all)}, "
          f"corpus_test {len(corpus_test)}", flush=True)
    eval_pairs = [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in test]
    tmp = Path(tempfile.mkdtemp(prefix="strop-codesearch-"))
    data_dir = tmp / "data"
    server, url = start_server(data_dir)
    rows = []
    try:
        c = Client(url, timeout=3600)
        t = time.perf_counter()
        for name, docs in (("all", corpus_all), ("test", corpus_test)):
            c.create_collection(name, modality="code")
            c.upsert(name, docs)
        print(f"ingest {len(corpus_all) + len(corpus_test)} docs: {time.perf_counter() - t:.0f}s", flush=True)
        base = c.get_collection("all")["version"]["id"]
        zs_all, zs_test = evaluate(c, "all", eval_pairs), evaluate(c, "test", eval_pairs)
        rows.append(("zero-shot", "-", zs_test, zs_all, 0.0, {}))
        if args.lexical:
            rows.append((f"zero-shot + lexical {args.lexical:g}", "-", evaluate(c, "test", eval_pairs, args.lexical),
                         evaluate(c, "all", eval_pairs, args.lexical), 0.0, {}))
        print(rows[-1], flush=True)
        stdlib_base = None
        for cfg in args.configs.split(","):
            self_supervised = CONFIGS[cfg].get("train", {}).get("source") == "docstrings"
            if self_supervised and stdlib_base is None:
                stdlib_base = ingest_stdlib(c, data["root"])
            collection, start = ("stdlib", stdlib_base) if self_supervised else ("all", base)
            for seed in [int(s) for s in args.seeds.split(",")]:
                c.activate_version(collection, start)
                body = {"train": {"pairs": [{"query": p["query"], "positive_id": p["positive_id"]} for p in train]},
                        "eval": {"pairs": eval_pairs}, "batch_size": 32, "learning_rate": args.lr,
                        "epochs": args.epochs, "seed": seed,
                        "gate": {"metric": "mrr@10", "min_delta": -1.0}, **CONFIGS[cfg]}
                if max_steps:
                    body["max_steps"] = max_steps
                t = time.perf_counter()
                job = run_job(c, body, collection)
                wall = time.perf_counter() - t
                if job["state"] != "succeeded":
                    print(cfg, job["state"], job["error"], flush=True)
                    continue
                encoder = data_dir / "collections" / collection / "versions" / job["version"] / "encoder"
                tag = f"{cfg.replace('.', '').replace('_', '-')}-{seed}".lower()[:50]
                teach = {"teacher": args.teacher, "teacher_weight": args.teacher_weight}
                m_test, f_test, t_test = evaluate_encoder(c, f"test-{tag}", encoder, corpus_test, eval_pairs,
                                                          args.lexical, **teach)
                if self_supervised:  # the same docstring-free corpus as the other rows
                    m_all, f_all, t_all = evaluate_encoder(c, f"all-{tag}", encoder, corpus_all, eval_pairs,
                                                           args.lexical, **teach)
                else:
                    m_all = evaluate(c, "all", eval_pairs)
                    f_all = evaluate(c, "all", eval_pairs, args.lexical) if args.lexical else None
                    t_all = teacher_rows(c, "all", eval_pairs, args.teacher, args.teacher_weight, args.lexical)
                rows.append((cfg, seed, m_test, m_all, wall, job["details"].get("stage_seconds", {})))
                if f_test and f_all:
                    rows.append((f"{cfg} + lexical {args.lexical:g}", seed, f_test, f_all, wall, {}))
                for label in t_test:
                    suffix = f" + lexical {args.lexical:g}" if args.lexical and label != "rerank" else ""
                    rows.append((f"{cfg} + teacher {label}{suffix}", seed, t_test[label], t_all[label], wall, {}))
                # every number of the row, so that a run stopped early still leaves whole rows in its log
                print(cfg, seed, json.dumps({"test": m_test, "all": m_all, "wall": round(wall),
                                             "lexical": {"test": f_test, "all": f_all},
                                             "teacher": {"test": t_test, "all": t_all},
                                             "stages": job["details"].get("stage_seconds", {}),
                                             "mining": job["details"].get("mining")}), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print()
    print("| config | seed | MRR@10 test | R@1 test | R@10 test | MRR@10 all | R@1 all | R@10 all | job s | stages (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cfg, seed, mt, ma, wall, stages in rows:
        print(f"| {cfg} | {seed} | {mt['mrr@10']:.4f} | {mt['recall@1']:.4f} | {mt['recall@10']:.4f} | "
              f"{ma['mrr@10']:.4f} | {ma['recall@1']:.4f} | {ma['recall@10']:.4f} | {wall:.0f} | "
              f"{json.dumps(stages)} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
