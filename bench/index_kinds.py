"""Index kinds on real MiniLM embeddings: build time, latency and recall@10 against exact search.

Justifies two defaults of ``strop.index.faiss_index.IndexSpec``: the ``auto`` threshold (flat below
50,000 vectors, HNSW at and above) and the HNSW parameters (M=32, efConstruction=80,
efSearch=128).

Data: all-MiniLM-L6-v2 (the packaged weights, bf16 as the service's ``auto`` picks on this
CPU) embeddings of Debian package descriptions (``bench.datasets.debian_pairs``), cached in
``bench/.cache`` by ``python -m bench._util``. Sizes 10k/25k/50k are seeded random subsets of
the 60,826 descriptions; 100k is all descriptions plus 39,174 *train-split* synopses (real text,
but a mix of long descriptions and one-line synopses; labelled ``100k*``). Queries are synopses
of the *test* split (never in the 100k corpus). Ground truth is ``flat`` (exact inner product).

Every index is built and searched with ``strop.index.faiss_index.build`` / ``search`` and an
``IndexSpec``, i.e. exactly the code the service runs. Latency: ms per query at batch 1 (one
``search`` call per query, median over ``--single`` queries) and at batch 32 (one call per 32
queries, median over the blocks, divided by 32). Builds and searches use ``--threads`` faiss
OpenMP threads (default 1: the per-query CPU cost); batch 1 is also timed with faiss's default
thread count. ``OMP_WAIT_POLICY=PASSIVE`` is set unless ``--omp-default`` (see
``bench._util.omp_passive``). Every build and latency run is repeated ``--repeat`` times
(default 3) and the median is reported.

``python -m bench.index_kinds`` (about 6 minutes on 2 cores); ``--quick`` for 10k only.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench._util import omp_passive

omp_passive()  # before faiss loads libgomp

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench._util import cached_embeddings, debian_data, log, machine_line, median, table  # noqa: E402
from strop.index import faiss_index as fi  # noqa: E402
from strop.index.faiss_index import IndexSpec  # noqa: E402

K = 10


def recall_at_k(got: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    hits = 0
    for g, t in zip(got[:, :k], truth[:, :k], strict=True):
        hits += len(set(g.tolist()) & set(t.tolist()))
    return hits / (truth.shape[0] * k)


THREADS = 1  # OpenMP threads for builds and batch-32 searches (--threads)
DEFAULT_THREADS = faiss.omp_get_max_threads()


def latency(index: faiss.Index, spec: IndexSpec, q: np.ndarray, single: int,
            batch: int = 32) -> tuple[float, float, float]:
    """ms/query at batch 1 (``THREADS``, then faiss's default threads) and at batch ``batch``; medians."""
    faiss.omp_set_num_threads(THREADS)
    fi.search(index, spec, q[:batch], K)  # warm-up
    one = []
    for i in range(min(single, q.shape[0])):
        t = time.perf_counter()
        fi.search(index, spec, q[i : i + 1], K)
        one.append(time.perf_counter() - t)
    blocks = []
    for s in range(0, q.shape[0] - batch + 1, batch):
        t = time.perf_counter()
        fi.search(index, spec, q[s : s + batch], K)
        blocks.append((time.perf_counter() - t) / batch)
    faiss.omp_set_num_threads(DEFAULT_THREADS)
    one_dt = []
    try:
        for i in range(min(single, q.shape[0])):
            t = time.perf_counter()
            fi.search(index, spec, q[i : i + 1], K)
            one_dt.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(THREADS)
    return median(one) * 1000, median(one_dt) * 1000, median(blocks) * 1000


REPEAT = 3


def latency_rep(index: faiss.Index, spec: IndexSpec, q: np.ndarray, single: int) -> tuple[float, float, float]:
    """:func:`latency` ``REPEAT`` times; the median of each figure (other jobs share this machine)."""
    runs = [latency(index, spec, q, single) for _ in range(REPEAT)]
    return tuple(median([r[i] for r in runs]) for i in range(3))  # type: ignore[return-value]


def build_rep(spec: IndexSpec, dim: int, ids: np.ndarray, x: np.ndarray) -> tuple[faiss.Index, float]:
    """Build ``REPEAT`` times; the last index and the median wall seconds."""
    times = []
    index = None
    for _ in range(REPEAT):
        index = None
        t = time.perf_counter()
        index = fi.build(spec, dim, ids, x)
        times.append(time.perf_counter() - t)
    return index, median(times)


def index_mib(index: faiss.Index) -> float:
    return len(faiss.serialize_index(index)) / 2**20


def datasets(sizes: Sequence[int], n_queries: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    data = debian_data()
    corpus = cached_embeddings("debian-corpus", [c["text"] for c in data["corpus"]], "bf16")
    test_q = cached_embeddings("debian-test-synopses", [p["query"] for p in data["test"]], "bf16")
    order = list(range(corpus.shape[0]))
    random.Random(0).shuffle(order)
    out: dict[str, np.ndarray] = {}
    for n in sizes:
        if n <= corpus.shape[0]:
            out[f"{n // 1000}k"] = np.ascontiguousarray(corpus[order[:n]])
        else:
            extra = n - corpus.shape[0]
            train_syn = cached_embeddings("debian-train-synopses", [p["query"] for p in data["train"]], "bf16")
            if extra > train_syn.shape[0]:
                raise SystemExit(f"size {n} is more than descriptions + train synopses")
            out[f"{n // 1000}k*"] = np.ascontiguousarray(np.vstack([corpus, train_syn[:extra]]))
    qi = list(range(test_q.shape[0]))
    random.Random(1).shuffle(qi)
    return out, np.ascontiguousarray(test_q[qi[:n_queries]])


def kinds_table(sets: dict[str, np.ndarray], q: np.ndarray, single: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, x in sets.items():
        n, dim = x.shape
        ids = np.arange(n, dtype=np.int64)
        flat, flat_s = build_rep(IndexSpec(kind="flat"), dim, ids, x)
        spec = IndexSpec(kind="flat")
        _, truth = fi.search(flat, spec, q, K)
        b1, b1t, b32 = latency_rep(flat, spec, q, single)
        rows.append([name, "flat", "-", flat_s, b1, b1t, b32, 1.0, index_mib(flat)])
        log(f"{name} flat: build {flat_s:.2f}s, {b1:.2f} / {b1t:.2f} / {b32:.3f} ms/q")
        del flat

        hnsw, hnsw_s = build_rep(IndexSpec(kind="hnsw"), dim, ids, x)
        mib = index_mib(hnsw)
        for ef in (64, 128):
            spec = IndexSpec(kind="hnsw", ef_search=ef)
            _, got = fi.search(hnsw, spec, q, K)
            b1, b1t, b32 = latency_rep(hnsw, spec, q, single)
            rec = recall_at_k(got, truth)
            rows.append([name, "hnsw M=32 efC=80", f"efSearch={ef}", hnsw_s, b1, b1t, b32, rec, mib])
            log(f"{name} hnsw ef={ef}: build {hnsw_s:.1f}s, {b1:.2f} / {b1t:.2f} / {b32:.3f} ms/q, recall {rec:.4f}")
        del hnsw

        ivf, ivf_s = build_rep(IndexSpec(kind="ivf"), dim, ids, x)
        nlist = faiss.downcast_index(ivf.index).nlist
        mib = index_mib(ivf)
        for nprobe in (8, 16):
            spec = IndexSpec(kind="ivf", nprobe=nprobe)
            _, got = fi.search(ivf, spec, q, K)
            b1, b1t, b32 = latency_rep(ivf, spec, q, single)
            rec = recall_at_k(got, truth)
            rows.append([name, f"ivf nlist={nlist}", f"nprobe={nprobe}", ivf_s, b1, b1t, b32, rec, mib])
            log(f"{name} ivf nprobe={nprobe}: build {ivf_s:.1f}s, {b1:.2f} / {b1t:.2f} / {b32:.3f} ms/q, "
                f"recall {rec:.4f}")
        del ivf
    return rows


def hnsw_sweep(x: np.ndarray, q: np.ndarray, single: int, grid: Sequence[tuple[int, int]],
               efs: Sequence[int]) -> list[list[Any]]:
    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64)
    flat = fi.build(IndexSpec(kind="flat"), dim, ids, x)
    _, truth = fi.search(flat, IndexSpec(kind="flat"), q, K)
    del flat
    rows: list[list[Any]] = []
    for m, efc in grid:
        idx, build_s = build_rep(IndexSpec(kind="hnsw", hnsw_m=m, ef_construction=efc), dim, ids, x)
        mib = index_mib(idx)
        for ef in efs:
            spec = IndexSpec(kind="hnsw", hnsw_m=m, ef_construction=efc, ef_search=ef)
            _, got = fi.search(idx, spec, q, K)
            b1, b1t, b32 = latency_rep(idx, spec, q, single)
            rec = recall_at_k(got, truth)
            rows.append([m, efc, ef, build_s, b1, b1t, b32, rec, mib])
            log(f"sweep M={m} efC={efc} ef={ef}: build {build_s:.1f}s, {b1:.2f} / {b1t:.2f} / {b32:.3f} ms/q, "
                f"recall {rec:.4f}")
        del idx
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.index_kinds", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,25000,50000,100000")
    ap.add_argument("--queries", type=int, default=1000, help="test synopses used as queries (recall, batch 32)")
    ap.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    ap.add_argument("--sweep-size", type=int, default=50_000, help="corpus size of the HNSW parameter sweep (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="builds and latency runs per cell (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss OpenMP threads for builds and searches (batch 1 is also timed with the default)")
    ap.add_argument("--quick", action="store_true", help="10k only, small sweep")
    ap.add_argument("--omp-default", action="store_true",
                    help="leave OMP_WAIT_POLICY alone (default: PASSIVE, see bench/_util.omp_passive)")
    args = ap.parse_args(argv)
    global REPEAT, THREADS
    REPEAT = max(1, args.repeat)
    THREADS = max(1, args.threads)
    faiss.omp_set_num_threads(THREADS)
    if args.quick:
        args.sizes, args.queries, args.single, args.sweep_size = "10000", 320, 100, 10_000
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    print(f"machine: {machine_line()}\n")
    sets, q = datasets(sizes + ([args.sweep_size] if args.sweep_size else []), args.queries)
    main_sets = {k: v for k, v in sets.items() if int(k.rstrip("k*")) * 1000 in sizes}
    rows = kinds_table(main_sets, q, args.single)
    print(f"queries: {q.shape[0]} test-split synopses (batch-1 latency over the first {args.single}); "
          f"recall@{K} against flat; `100k*` = 60,826 descriptions + 39,174 train synopses; faiss OpenMP "
          f"threads {THREADS} for builds and searches (one column: the default {DEFAULT_THREADS}); medians of "
          f"{REPEAT} runs\n")
    cols = ["build s", f"ms/query batch 1 ({THREADS} thr)", f"batch 1 ({DEFAULT_THREADS} thr)",
            f"ms/query batch 32 ({THREADS} thr)"]
    print(table(["n", "kind", "search param", *cols,
                 f"recall@{K} vs flat", "index MiB"], rows))
    print()
    if args.sweep_size:
        key = f"{args.sweep_size // 1000}k"
        grid = [(16, 80), (32, 40), (32, 80), (32, 160), (48, 80)]
        srows = hnsw_sweep(sets[key], q, args.single, grid, (32, 64, 128, 256))
        print(f"HNSW parameter sweep at n={key} (same queries):\n")
        print(table(["M", "efConstruction", "efSearch", *cols,
                     f"recall@{K} vs flat", "index MiB"], srows))
        print()
    print(f"wall time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
