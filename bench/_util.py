"""Shared helpers for the benchmarks: cached MiniLM embeddings, timing, machine info, tables.

Embeddings are cached as ``.npy`` under ``bench/.cache/`` (gitignored), keyed by a hash of the
texts, the encoder and its precision, and written in chunks so an interrupted encode resumes
where it stopped. ``python -m bench._util`` fills the cache for the Debian corpus and queries.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"


def omp_passive() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process and its children, unless ``--omp-default``.

    Must run before torch or faiss is imported (libgomp reads it when it loads). On this 2-core
    machine shared with other jobs, OpenMP's default spin-waiting makes torch and faiss stall
    for whole scheduler slices: MiniLM single-query encodes measured 35-700 ms instead of 5-8 ms,
    2-thread faiss searches 8-12 ms instead of 0.2 ms (docs/benchmarks.md). With PASSIVE, idle
    OpenMP threads sleep instead of spinning and timings are stable. The strop service does not
    set it itself; that is one of the findings.
    """
    if "--omp-default" in sys.argv or os.environ.get("BENCH_OMP_DEFAULT"):
        os.environ["BENCH_OMP_DEFAULT"] = "1"  # children (servers) inherit the choice
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
CHUNK = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import faiss
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "bf16_isa": sorted(f for f in flags if "bf16" in f or "amx" in f),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "loadavg": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default, spin then sleep)"),
    }


def machine_line() -> str:
    m = machine()
    return (f"{m['cores']} cores, CPU `{m['cpu']}` ({', '.join(m['bf16_isa']) or 'no bf16 ISA'}), "
            f"{m['mem_gib']} GiB RAM, Python {m['python']}, torch {m['torch']} "
            f"({m['torch_threads']} threads), faiss {m['faiss']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}; OMP_WAIT_POLICY {m['omp_wait_policy']}")


# -- statistics ---------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# -- embeddings ---------------------------------------------------------------------------
_ENCODERS: dict[str, Any] = {}


def encoder(precision: str = "auto", backend: str = "torch") -> Any:
    """The packaged MiniLM (``strop.index.encoder.Encoder``) at ``precision`` on ``backend``, loaded once per
    process (ONNX exports go to ``bench/.cache/backends``)."""
    from strop.index.encoder import Encoder

    key = precision if backend == "torch" else f"{backend}-{precision}"
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder.load(None, precision=precision, backend=backend, cache_dir=CACHE / "backends")
    return _ENCODERS[key]


def texts_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached_embeddings(name: str, texts: Sequence[str], precision: str = "auto", backend: str = "torch") -> np.ndarray:
    """MiniLM embeddings of ``texts`` (L2-normalised float32), from or into ``bench/.cache``.

    ``precision`` is passed to ``Encoder.load`` and is part of the file name (the cache is
    filled with ``bf16``, which is what the service's ``auto`` picks on a CPU with bf16).
    """
    key = texts_key(texts)
    if backend != "torch":
        precision = f"{backend}-{precision}"  # part of the file name
    final = CACHE / f"{name}-{key}-{precision}.npy"
    if final.exists():
        arr = np.load(final)
        if arr.shape[0] == len(texts):
            return arr
    enc = encoder(precision.removeprefix(f"{backend}-"), backend)
    part_dir = CACHE / f"{name}-{key}-{precision}.parts"
    part_dir.mkdir(parents=True, exist_ok=True)
    chunks = []
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(texts), CHUNK):
        part = part_dir / f"{start:08d}.npy"
        if part.exists():
            chunks.append(np.load(part))
            continue
        vecs = enc.encode(list(texts[start : start + CHUNK]), batch_size=32).vectors
        np.save(part, vecs)
        chunks.append(vecs)
        done += len(vecs)
        rate = done / (time.perf_counter() - t0)
        log(f"{name}: encoded {start + len(vecs)}/{len(texts)} ({enc.precision}, {rate:.0f} texts/s)")
    arr = np.vstack(chunks).astype(np.float32) if chunks else np.empty((0, enc.dim), np.float32)
    np.save(final, arr)
    for p in part_dir.glob("*.npy"):
        p.unlink()
    part_dir.rmdir()
    return arr


def available_embeddings(name: str, texts: Sequence[str], precision: str = "bf16") -> np.ndarray:
    """Whatever prefix of ``texts`` is already embedded in the cache (the whole array when complete)."""
    key = texts_key(texts)
    final = CACHE / f"{name}-{key}-{precision}.npy"
    if final.exists():
        return np.load(final)
    parts = []
    part_dir = CACHE / f"{name}-{key}-{precision}.parts"
    for start in range(0, len(texts), CHUNK):
        part = part_dir / f"{start:08d}.npy"
        if not part.exists():
            break
        parts.append(np.load(part))
    return np.vstack(parts) if parts else np.empty((0, 384), np.float32)


def debian_data() -> dict[str, Any]:
    from bench.datasets import debian_pairs

    return debian_pairs()


def debian_embeddings(data: dict[str, Any] | None = None, precision: str = "bf16") -> dict[str, Any]:
    """The Debian corpus (descriptions), test queries (synopses) and train synopses, embedded."""
    data = data or debian_data()
    corpus = data["corpus"]
    test_q = [p["query"] for p in data["test"]]
    train_q = [p["query"] for p in data["train"]]
    return {
        "data": data,
        "corpus_ids": [c["id"] for c in corpus],
        "corpus_texts": [c["text"] for c in corpus],
        "corpus": cached_embeddings("debian-corpus", [c["text"] for c in corpus], precision),
        "test_queries": test_q,
        "test_q": cached_embeddings("debian-test-synopses", test_q, precision),
        "train_synopses": train_q,
        "train_q": cached_embeddings("debian-train-synopses", train_q, precision),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench._util", description="fill bench/.cache with embeddings")
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    emb = debian_embeddings(precision=args.precision)
    log(f"corpus {emb['corpus'].shape}, test queries {emb['test_q'].shape}, train synopses "
        f"{emb['train_q'].shape} in {time.perf_counter() - t:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
