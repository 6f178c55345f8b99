"""Serving benchmark: strop over real HTTP vs an in-process ceiling vs a naive FastAPI server.

Corpus: Debian package descriptions (``bench.datasets.debian_pairs``), queries: synopses of the
*test* split. Everything runs on this machine over loopback (127.0.0.1); servers run in their own
processes (``python -m bench.serving --serve ...``) and the load generator is an ``httpx``
async client in the bench process: a fixed number of workers, each with one request in flight,
for ``--duration`` seconds per level (after ``--warmup`` seconds that are not recorded).

Phases (docs/benchmarks.md has the numbers and the reading):

1. Bulk load of ``--docs`` documents into a fresh data dir with the library the service itself
   uses (``DocumentStore.upsert`` + ``strop.index.collection.build_version`` + ``activate``), with
   MiniLM bf16 vectors from ``bench/.cache`` (``python -m bench._util`` fills it), so a 50k
   corpus is not re-encoded on every run. The service opens it like any restarted server.
2. Three servers side by side, idle unless measured: strop
   (``strop.service.app.create_app(Settings(data_dir, precision))`` under uvicorn), and a naive
   FastAPI server (the same SentenceTransformer in fp32, ``model.encode([q])`` per request
   inside the handler, ``faiss.IndexFlatIP`` over the same vectors) once with an ``async def``
   handler (blocks the event loop) and once with a ``def`` handler (Starlette's threadpool).
3. ``--rounds`` interleaved rounds: each concurrency level on each server, then in process
   (no HTTP) ``Encoder.encode`` of 32 queries + ``LiveIndex.search`` (the ceiling) and one
   query at a time (the latency floor). Interleaving gives every system the same share of
   whatever else runs on the machine; tables show medians over rounds.
4. Ingest of ``--ingest-docs`` *further* documents through ``PUT /collections/{c}/documents``
   in batches of 1000, each batch followed by plain ``SentenceTransformer.encode(texts,
   batch_size=32)`` of the same 1000 texts (fp32 as a user would call it, and cast to bf16).
5. Resident memory of the strop process (psutil) loaded vs a strop with one empty collection.
6. fp32 vs bf16 (what ``precision="auto"`` picks on a CPU with bf16) encode speed and the min
   cosine between them.

``python -m bench.serving --quick`` is a short smoke run (5,000 docs); the default is 50,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._util import omp_passive

omp_passive()  # before torch / faiss load libgomp (also in the server subprocesses)

import numpy as np  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from bench._util import CACHE, log, machine, machine_line, median, pct, table  # noqa: E402

COLLECTION = "debian"
TOP_K = 10
ENCODER_NAME = "all-MiniLM-L6-v2"


# =========================================================================================
# servers (run in their own processes)
# =========================================================================================
def serve_strop(data_dir: str, port: int, precision: str, backend: str = "auto") -> None:
    import uvicorn

    from strop.index.settings import Settings
    from strop.service.app import create_app

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("strop").setLevel(logging.INFO)
    settings = Settings(data_dir=Path(data_dir), host="127.0.0.1", port=port, precision=precision,
                        encoder_backend=backend, redis_url=None, no_worker=True)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


class NaiveQuery(BaseModel):
    query: str
    top_k: int = 10


def naive_app(vectors_path: str, docs_path: str, handler: str) -> Any:
    """What a first version usually looks like: one encode per request, inside the handler."""
    import faiss
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    from strop.index.encoder import resolve_spec

    model = SentenceTransformer(resolve_spec(None), device="cpu")  # fp32, as loaded
    vecs = np.load(vectors_path)
    docs = json.loads(Path(docs_path).read_text())
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    app = FastAPI()

    def run(q: NaiveQuery) -> dict:
        v = model.encode([q.query], normalize_embeddings=True)
        scores, idx = index.search(np.asarray(v, np.float32), q.top_k)
        return {"hits": [{"id": docs[i]["id"], "score": float(s), "text": docs[i]["text"]}
                         for s, i in zip(scores[0], idx[0], strict=True) if i >= 0]}

    if handler == "async":
        @app.post("/search")
        async def search_async(q: NaiveQuery) -> dict:
            return run(q)  # blocks the event loop for the whole encode + search
    else:
        @app.post("/search")
        def search_sync(q: NaiveQuery) -> dict:
            return run(q)  # Starlette runs it in its threadpool (40 threads)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def same_threads() -> None:
    """The call ``service/app.py`` makes at startup: ``torch.set_num_threads(torch.get_num_threads())``.

    It looks like a no-op; every process of this benchmark makes it anyway, so that all systems
    start from the same thread settings as the service.
    """
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))


def serve_naive(vectors_path: str, docs_path: str, port: int, handler: str) -> None:
    import uvicorn

    same_threads()

    uvicorn.run(naive_app(vectors_path, docs_path, handler), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


class Server:
    """A server subprocess on 127.0.0.1 (stopped by its pid only)."""

    def __init__(self, name: str, args: list[str], log_path: Path, ready_path: str,
                 cmd: list[str] | None = None, env: dict[str, str] | None = None, cwd: Path | None = None):
        """``args`` go to ``python -m bench.serving --serve``; or ``cmd`` runs as given, ``{port}`` replaced."""
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        base = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}
        argv = [sys.executable, "-m", "bench.serving", "--serve", *args, "--port", str(self.port)] if cmd is None \
            else [a.replace("{port}", str(self.port)) for a in cmd]
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**base, **(env or {})},
            cwd=str(cwd or Path(__file__).resolve().parents[1]),
        )
        self.started = time.perf_counter()
        self.ready_s = self._wait(ready_path)

    def _wait(self, path: str, timeout: float = 300.0) -> float:
        import httpx

        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        """CPU seconds of the server process and any children it started."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# =========================================================================================
# load generation
# =========================================================================================
async def _load(url: str, path: str, bodies: Sequence[bytes], concurrency: int, duration: float,
                warmup: float, start: int, max_requests: int, method: str = "POST") -> dict[str, Any]:
    """``concurrency`` workers, one request in flight each, for ``duration`` s (bounded count)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        counter = itertools.count(start)
        lat: list[float] = []
        codes: Counter[int | str] = Counter()
        recording = False
        deadline = 0.0
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                body = bodies[next(counter) % len(bodies)]
                sent += 1
                t = time.perf_counter()
                try:
                    if method == "GET":
                        r = await client.get(path)
                    else:
                        r = await client.post(path, content=body, headers=headers)
                except httpx.HTTPError as e:  # a dropped connection counts as an error, the run goes on
                    if recording:
                        codes[type(e).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                dt = time.perf_counter() - t
                if not recording:
                    continue
                codes[r.status_code] += 1
                if r.status_code == 200:
                    lat.append(dt)
                elif r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))

        if warmup > 0:
            deadline = time.perf_counter() + warmup
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        recording, sent = True, 0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
    ms = [x * 1000 for x in lat]
    return {"concurrency": concurrency, "requests": len(lat), "errors": dict(codes - Counter({200: codes[200]})),
            "seconds": elapsed, "qps": len(lat) / elapsed, "p50_ms": median(ms), "p90_ms": pct(ms, 90),
            "p99_ms": pct(ms, 99), "client_cpu_s": client_cpu}


_WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("STROP_WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = tonumber(os.getenv("STROP_WRK_START") or "0")
local method = os.getenv("STROP_WRK_METHOD") or "POST"
local headers = {["content-type"] = "application/json"}
request = function()
  i = i + 1
  if method == "GET" then return wrk.format("GET", nil, nil, nil) end
  return wrk.format("POST", nil, headers, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _load_wrk(url: str, path: str, bodies: Sequence[bytes], concurrency: int, duration: float, warmup: float,
              start: int, method: str = "POST", script: str = _WRK_SCRIPT,
              env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The same load from ``wrk`` (C, one thread): far less client CPU than Python on a shared 2-core box.

    Non-200 answers (429s included) are not counted in QPS; latency percentiles are wrk's (all answers).
    """
    import resource

    tmp = Path(tempfile.mkdtemp(prefix="wrk-"))
    try:
        (tmp / "bodies.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
        (tmp / "load.lua").write_text(script)
        env = {**os.environ, "STROP_WRK_BODIES": str(tmp / "bodies.jsonl"), "STROP_WRK_START": str(start),
               "STROP_WRK_METHOD": method, **(env_extra or {})}
        cmd = ["wrk", "-t1", f"-c{concurrency}", "--timeout", "120s", "-s", str(tmp / "load.lua"), url + path]
        if warmup > 0:
            subprocess.run(cmd[:1] + [f"-d{max(1, round(warmup))}s"] + cmd[1:], env={**env, "STROP_WRK_PHASE": "w"},
                           capture_output=True, check=True)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd[:1] + [f"-d{max(1, round(duration))}s"] + cmd[1:], env=env, capture_output=True,
                             text=True, check=True).stdout
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    w = json.loads(line[len("WRKJSON "):])
    seconds = w["duration_us"] / 1e6
    ok = w["requests"] - w["non2xx"]
    errors = {k: v for k, v in (("non-2xx", w["non2xx"]), ("socket", w["socket_errors"])) if v}
    return {"concurrency": concurrency, "requests": ok, "errors": errors, "seconds": seconds, "qps": ok / seconds,
            "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
            "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), "loadgen": "wrk"}


LOADGEN = "wrk" if shutil.which("wrk") else "httpx"


def run_levels(server: Server, path: str, bodies: Sequence[bytes], levels: Sequence[int], duration: float,
               warmup: float, metrics: bool = False, start: int = 0, method: str = "POST") -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(levels):
        before = _batch_metrics(server.url) if metrics else None
        cpu0 = server.cpu_s()
        if LOADGEN == "wrk":
            r = _load_wrk(server.url, path, bodies, c, duration, warmup, start=start + i * 997, method=method)
        else:
            r = asyncio.run(_load(server.url, path, bodies, c, duration, warmup, start=start + i * 997,
                                  max_requests=int(duration * 2000), method=method))
        r["server_cpu_s"] = server.cpu_s() - cpu0
        if metrics and before is not None:
            after = _batch_metrics(server.url)
            n = after[1] - before[1]
            r["mean_batch"] = (after[0] - before[0]) / n if n else float("nan")
        log(f"{server.name} c={c}: {r['qps']:.1f} qps, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
            f"errors {r['errors']}, server cpu {r['server_cpu_s']:.1f}s, client cpu {r['client_cpu_s']:.1f}s"
            + (f", mean batch {r.get('mean_batch', float('nan')):.1f}" if metrics else ""))
        out.append(r)
    return out


def _batch_metrics(url: str) -> tuple[float, float]:
    """(sum, count) of strop_encode_batch_size (includes the warm-up; deltas are taken)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith("strop_encode_batch_size_sum"):
            s = float(line.split()[-1])
        elif line.startswith("strop_encode_batch_size_count"):
            c = float(line.split()[-1])
    return s, c


# =========================================================================================
# the benchmark
# =========================================================================================
def bulk_load(data_dir: Path, ids: Sequence[str], texts: Sequence[str], vecs: np.ndarray,
              auto_threshold: int, store_url: str | None = None, artifacts_url: str | None = None,
              collection: str = COLLECTION) -> dict[str, Any]:
    """Write documents + an active version the way the service would build one (vectors given). With
    ``store_url`` / ``artifacts_url``, into that store and object storage, as a deployment's trainer would."""
    from strop.index.artifacts import open_artifacts
    from strop.index.collection import build_version
    from strop.index.faiss_index import IndexSpec
    from strop.index.store import Document, DocumentStore
    from strop.index.versions import Remote, VersionStore, new_version_id

    t0 = time.perf_counter()
    store = DocumentStore(store_url or data_dir / "strop.db")
    artifacts = open_artifacts(artifacts_url)
    remote = Remote(artifacts, store) if artifacts is not None else None
    spec = IndexSpec.from_dict({"auto_threshold": auto_threshold})  # what CollectionManager.create stores
    store.create_collection(collection, "text", ENCODER_NAME, spec.to_dict())
    for s in range(0, len(ids), 5000):
        store.upsert(collection, [Document(id=i, text=t) for i, t in zip(ids[s:s + 5000], texts[s:s + 5000],
                                                                          strict=True)])
    t_store = time.perf_counter() - t0
    by_text = {t: vecs[i] for i, t in enumerate(texts)}
    vstore = VersionStore(data_dir, collection, remote).ensure()
    vid = new_version_id(store.next_version_number(collection))
    t1 = time.perf_counter()
    manifest = build_version(store, vstore, vid, lambda ts: np.stack([by_text[t] for t in ts]), vecs.shape[1],
                             spec, encoder_ref=ENCODER_NAME, metrics={})
    t_index = time.perf_counter() - t1
    vstore.activate(vid)
    store.close()
    return {"docs": len(ids), "store_s": t_store, "index_s": t_index, "version": vid,
            "kind": manifest["index"]["built_kind"]}


def put_batch(client: Any, ids: Sequence[str], texts: Sequence[str]) -> float:
    body = {"documents": [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]}
    t = time.perf_counter()
    r = client.put(f"/collections/{COLLECTION}/documents", json=body)
    dt = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"PUT documents: {r.status_code} {r.text[:500]}")
    return dt


def in_process(enc: Any, live: Any, queries: Sequence[str], duration: float, start: int,
               batch: int = 32) -> dict[str, Any]:
    """Encode + search without HTTP: blocks of ``batch`` queries for ``duration`` s."""
    n = 0
    i = start
    enc.encode(list(queries[:batch]), batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    block_ms = []
    while time.perf_counter() - t0 < duration:
        qs = [queries[(i + j) % len(queries)] for j in range(batch)]
        i += batch
        t = time.perf_counter()
        v = enc.encode(qs, batch_size=batch).vectors
        live.search(v, TOP_K)
        block_ms.append((time.perf_counter() - t) * 1000)
        n += batch
    el = time.perf_counter() - t0
    return {"batch": batch, "queries": n, "seconds": el, "qps": n / el, "block_ms_p50": median(block_ms)}


def in_process_single(enc: Any, live: Any, queries: Sequence[str], duration: float, start: int) -> dict[str, Any]:
    for q in queries[:5]:
        live.search(enc.encode([q]).vectors, TOP_K)
    enc_ms, tot_ms = [], []
    t0 = time.perf_counter()
    i = start
    while time.perf_counter() - t0 < duration:
        q = queries[i % len(queries)]
        i += 1
        t = time.perf_counter()
        v = enc.encode([q]).vectors
        t1 = time.perf_counter()
        live.search(v, TOP_K)
        tot_ms.append((time.perf_counter() - t) * 1000)
        enc_ms.append((t1 - t) * 1000)
    return {"queries": len(tot_ms), "p50_ms": median(tot_ms), "p99_ms": pct(tot_ms, 99),
            "encode_p50_ms": median(enc_ms), "search_p50_ms": median([a - b for a, b in zip(tot_ms, enc_ms,
                                                                                            strict=True)])}


def plain_model(bf16: bool) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    from strop.index.encoder import resolve_spec

    model = SentenceTransformer(resolve_spec(None), device="cpu")
    if bf16:
        model = model.to(torch.bfloat16)
    return model


def precision_compare(queries: Sequence[str], docs: Sequence[str], repeat: int) -> dict[str, Any]:
    from strop.index.encoder import CALIBRATION_TEXTS, Encoder

    e32 = Encoder.load(None, precision="fp32")
    e16 = e32.with_precision("bf16")
    auto = e32.with_precision("auto")
    out: dict[str, Any] = {"auto_picks": auto.precision}
    encs = (e32, e16)
    for enc in encs:
        enc.encode(list(queries[:32]))
        enc.encode(list(docs[:32]))
    stats: dict[str, dict[str, list[float]]] = {e.precision: {"single": [], "b32": [], "docs": []} for e in encs}
    # interleaved, so both precisions see the same background load
    for r in range(3):
        for enc in encs:
            st = stats[enc.precision]
            for q in queries[r * repeat: (r + 1) * repeat]:
                t = time.perf_counter()
                enc.encode([q])
                st["single"].append((time.perf_counter() - t) * 1000)
            qs = list(queries[1000 + 32 * r: 1000 + 32 * (r + 1)])
            t = time.perf_counter()
            enc.encode(qs, batch_size=32)
            st["b32"].append((time.perf_counter() - t) * 1000)
            chunk = list(docs[r * 128: (r + 1) * 128])
            t = time.perf_counter()
            enc.encode(chunk, batch_size=32)
            st["docs"].append(len(chunk) / (time.perf_counter() - t))
    for k, st in stats.items():
        out[k] = {"single_ms": median(st["single"]), "batch32_ms": median(st["b32"]), "docs_per_s": median(st["docs"])}
    cal32, cal16 = e32.encode(CALIBRATION_TEXTS).vectors, e16.encode(CALIBRATION_TEXTS).vectors
    d32, d16 = e32.encode(list(docs[:256])).vectors, e16.encode(list(docs[:256])).vectors
    q32, q16 = e32.encode(list(queries[:256])).vectors, e16.encode(list(queries[:256])).vectors
    out["min_cos_calibration"] = float((cal32 * cal16).sum(1).min())
    out["min_cos_docs"] = float((d32 * d16).sum(1).min())
    out["min_cos_queries"] = float((q32 * q16).sum(1).min())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    global LOADGEN
    ap = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=50_000, help="documents bulk-loaded before the search runs")
    ap.add_argument("--ingest-docs", type=int, default=None,
                    help="further documents PUT through the service (default 2000; --quick 300)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per load level (default 10; --quick 3)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of every system and level "
                    "(default 3; --quick 1); tables show medians over rounds")
    ap.add_argument("--warmup", type=float, default=None, help="unrecorded seconds before each level")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="the service's")
    ap.add_argument("--naive-handler", default="both", choices=["async", "def", "both"])
    ap.add_argument("--auto-threshold", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="5,000 docs, short levels: for development")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: naive,empty,plain,precision")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--omp-default", action="store_true",
                    help="leave OMP_WAIT_POLICY alone in every process (default: PASSIVE, see bench/_util.py)")
    ap.add_argument("--loadgen", default=LOADGEN, choices=["wrk", "httpx"],
                    help="load generator: wrk (C, one thread; default when installed: apt-get install wrk) or the "
                         "Python httpx client (costs ~1 ms of CPU per request on these cores)")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        kind, *rest = args.serve
        if kind == "strop":
            serve_strop(rest[0], args.port, rest[1], *rest[2:3])
        else:
            serve_naive(rest[0], rest[1], args.port, rest[2])
        return 0

    LOADGEN = args.loadgen
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below (servers, temp dir)
    same_threads()
    if args.quick and args.docs == 50_000:
        args.docs = 5000
    ingest_n = args.ingest_docs if args.ingest_docs is not None else (300 if args.quick else 2000)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    levels = [int(c) for c in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    res: dict[str, Any] = {"machine": machine(), "args": vars(args), "ingest_docs": ingest_n, "duration": duration,
                           "rounds": rounds, "levels": levels}
    t_start = time.perf_counter()

    # -- data --------------------------------------------------------------------------------
    from bench._util import available_embeddings, cached_embeddings, debian_data

    data = debian_data()
    all_ids = [c["id"] for c in data["corpus"]]
    all_texts = [c["text"] for c in data["corpus"]]
    need = args.docs + ingest_n
    corpus_vecs = available_embeddings("debian-corpus", all_texts)
    if len(corpus_vecs) < len(all_texts) and not (args.quick and len(corpus_vecs) >= need):
        log("embedding the Debian corpus into bench/.cache (once; `python -m bench._util` does the same)")
        corpus_vecs = cached_embeddings("debian-corpus", all_texts, "bf16")
    n_all = len(corpus_vecs)
    order = list(range(n_all))
    random.Random(0).shuffle(order)
    if need > n_all:
        raise SystemExit(f"--docs {args.docs} + --ingest-docs {ingest_n} > {n_all} Debian documents")
    load_idx = order[: args.docs]
    ing_idx = order[args.docs: need]
    ids = [all_ids[i] for i in load_idx]
    texts = [all_texts[i] for i in load_idx]
    vecs = np.ascontiguousarray(corpus_vecs[load_idx])
    ing_ids = [all_ids[i] for i in ing_idx]
    ing_texts = [all_texts[i] for i in ing_idx]
    queries = [p["query"] for p in data["test"]]
    random.Random(1).shuffle(queries)
    bodies = [json.dumps({"query": q, "top_k": TOP_K}).encode() for q in queries]
    log(f"{len(ids)} docs to bulk-load, {len(ing_ids)} to ingest, {len(queries)} test synopses as queries")

    tmp = Path(tempfile.mkdtemp(prefix="strop-bench-"))
    servers: dict[str, Server] = {}
    try:
        data_dir = tmp / "data"
        res["bulk_load"] = bulk_load(data_dir, ids, texts, vecs, args.auto_threshold)
        log(f"bulk load: {res['bulk_load']}")

        # -- servers ------------------------------------------------------------------------
        srv = Server("strop", ["strop", str(data_dir), args.precision], tmp / "strop.log", "/readyz")
        servers["strop"] = srv
        time.sleep(1.0)
        res["strop_ready_s"] = srv.ready_s
        res["strop_rss_loaded_mib"] = srv.rss_mib()
        tail = srv.log_tail(20000)
        m = re.search(r"loaded encoder \S+ \((\w+), dim", tail)
        res["strop_precision"] = m.group(1) if m else "unknown"
        m = re.search(r"precision calibration.*", tail)
        res["strop_calibration"] = m.group(0) if m else ""
        log(f"strop ready in {srv.ready_s:.1f}s, precision {res['strop_precision']}, "
            f"rss {res['strop_rss_loaded_mib']:.0f} MiB")
        systems = ["strop"]
        if "naive" not in skip:
            np.save(tmp / "vecs.npy", vecs)
            (tmp / "docs.json").write_text(json.dumps([{"id": i, "text": t}
                                                       for i, t in zip(ids, texts, strict=True)]))
            for h in (["async", "def"] if args.naive_handler == "both" else [args.naive_handler]):
                nv = Server(f"naive-{h}", ["naive", str(tmp / "vecs.npy"), str(tmp / "docs.json"), h],
                            tmp / f"naive-{h}.log", "/healthz")
                servers[f"naive_{h}"] = nv
                res[f"naive_{h}_rss_mib"] = nv.rss_mib()
                systems.append(f"naive_{h}")

        from strop.index.collection import load_index
        from strop.index.encoder import Encoder
        from strop.index.versions import VersionStore

        prec = res["strop_precision"] if res["strop_precision"] in ("fp32", "bf16") else args.precision
        enc = Encoder.load(None, precision=prec)
        res["inproc_precision"] = enc.precision
        vstore = VersionStore(data_dir, COLLECTION)
        live = load_index(vstore, vstore.manifest(res["bulk_load"]["version"]))
        res["index_kind"] = res["bulk_load"]["kind"]

        # -- interleaved rounds: every system and level once per round ----------------------
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        runs["inproc_batch32"], runs["inproc_single"] = [], []
        path = {"strop": f"/collections/{COLLECTION}/search"}
        for r in range(rounds):
            log(f"round {r + 1}/{rounds} (load average {os.getloadavg()[0]:.2f})")
            for c in levels:
                for name in systems:
                    out = run_levels(servers[name], path.get(name, "/search"), bodies, [c], duration, warmup,
                                     metrics=name == "strop", start=(r * 7919 + c * 131) % len(bodies))
                    out[0]["round"] = r
                    runs[name] += out
            b = in_process(enc, live, queries, duration, start=(r * 4243) % len(queries))
            s1 = in_process_single(enc, live, queries, duration, start=(r * 3571) % len(queries))
            b["round"] = s1["round"] = r
            runs["inproc_batch32"].append(b)
            runs["inproc_single"].append(s1)
            log(f"in-process: batch32 {b['qps']:.1f} qps; single p50 {s1['p50_ms']:.1f} ms "
                f"(encode {s1['encode_p50_ms']:.1f}, search {s1['search_p50_ms']:.2f})")
        res["runs"] = runs
        # the HTTP floor: the same client and server, an endpoint that does nothing
        res["strop_healthz"] = run_levels(srv, "/healthz", bodies, [1], min(duration, 5.0), 1.0, method="GET")[0]
        del enc, live
        res["strop_rss_after_search_mib"] = srv.rss_mib()
        for name in systems[1:]:
            servers.pop(name).stop()

        # -- ingest: PUT batches of 1000 interleaved with plain SentenceTransformer.encode --------
        import httpx  # the PUTs themselves are the measurement: raw requests, timed one by one

        from strop.client import Client

        models = {} if "plain" in skip else {"fp32": plain_model(False), "bf16": plain_model(True)}
        for mdl in models.values():
            mdl.encode(ing_texts[:64], batch_size=32)  # warm-up
        ing: dict[str, Any] = {"batches": [], "rss_mib": [srv.rss_mib()]}
        with httpx.Client(base_url=srv.url, timeout=900.0) as client:
            for s in range(0, len(ing_ids), 1000):
                bi, bt = ing_ids[s: s + 1000], ing_texts[s: s + 1000]
                row: dict[str, Any] = {"docs": len(bi), "strop_s": put_batch(client, bi, bt)}
                ing["rss_mib"].append(srv.rss_mib())
                for prec_name, mdl in models.items():
                    t = time.perf_counter()
                    mdl.encode(list(bt), batch_size=32)
                    row[f"plain_{prec_name}_s"] = time.perf_counter() - t
                ing["batches"].append(row)
                log(f"ingest batch: {row}")
        del models
        time.sleep(1.5)  # one poll cycle
        res["strop_rss_after_ingest_mib"] = srv.rss_mib()
        res["ingest"] = ing
        rss = ing["rss_mib"]
        # the first batch also pays one-off allocations (long-sequence activations): count after it
        if len(rss) > 2:
            res["ingest_rss_delta_mib"], res["ingest_rss_delta_docs"] = rss[-1] - rss[1], len(ing_ids) - 1000
        else:
            res["ingest_rss_delta_mib"], res["ingest_rss_delta_docs"] = rss[-1] - rss[0], len(ing_ids)
        servers.pop("strop").stop()

        # -- empty strop for the memory baseline --------------------------------------------
        if "empty" not in skip:
            empty = Server("strop-empty", ["strop", str(tmp / "empty"), args.precision], tmp / "empty.log",
                           "/readyz")
            servers["empty"] = empty
            with Client(empty.url, timeout=120) as c:
                c.create_collection(COLLECTION, modality="text")
            time.sleep(1.0)
            res["strop_rss_empty_mib"] = empty.rss_mib()
            # the same kind of query load as the loaded server saw, so both hold the same warm allocations
            run_levels(empty, f"/collections/{COLLECTION}/search", bodies, levels, min(duration, 5.0), 0.0)
            res["strop_rss_empty_after_search_mib"] = empty.rss_mib()
            servers.pop("empty").stop()
            res["rss_per_100k_mib"] = ((res["strop_rss_after_search_mib"] - res["strop_rss_empty_after_search_mib"])
                                       / len(ids) * 100_000)
            res["rss_per_100k_at_ready_mib"] = ((res["strop_rss_loaded_mib"] - res["strop_rss_empty_mib"])
                                                / len(ids) * 100_000)
        res["rss_per_100k_ingest_mib"] = res["ingest_rss_delta_mib"] / max(res["ingest_rss_delta_docs"], 1) * 100_000

        if "precision" not in skip:
            res["precision"] = precision_compare(queries[9000:], [all_texts[i] for i in order[-512:]],
                                                 repeat=10 if args.quick else 30)
            log(f"precision: {res['precision']}")
    finally:
        for sv in servers.values():
            with contextlib.suppress(Exception):
                sv.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = os.getloadavg()
    report = render(res)
    print(report)
    out = Path(args.json) if args.json else CACHE / f"serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    log(f"raw results: {out}")
    return 0


def _med(rs: Sequence[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in rs if key in r and r[key] == r[key]])


def render(res: dict[str, Any]) -> str:
    runs = res["runs"]
    levels = res["levels"]
    lines = [f"machine: {machine_line()}; load average at the end "
             f"{', '.join(f'{x:.2f}' for x in res['loadavg_end'])}", ""]
    bl = res["bulk_load"]
    lines.append(f"corpus: {bl['docs']:,} Debian descriptions bulk-loaded (store {bl['store_s']:.1f}s, "
                 f"{bl['kind']} index {bl['index_s']:.1f}s); service precision {res['strop_precision']}; "
                 f"{res['rounds']} interleaved rounds x {res['duration']:.0f}s per system and level; medians over "
                 f"rounds; top_k={TOP_K}")
    lines.append("")
    names = {"strop": "strop (HTTP)", "naive_async": "naive fp32, `async def` handler",
             "naive_def": "naive fp32, `def` handler (threadpool)"}
    rows = []
    per_level: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for name in ("strop", "naive_async", "naive_def"):
        for r in runs.get(name, []):
            per_level.setdefault((name, r["concurrency"]), []).append(r)
    for (name, c), rs in per_level.items():
        rows.append([names[name], c, _med(rs, "qps"), " / ".join(f"{r['qps']:.1f}" for r in rs), _med(rs, "p50_ms"),
                     _med(rs, "p99_ms"), sum(r["requests"] for r in rs), sum(sum(r["errors"].values()) for r in rs),
                     _med(rs, "mean_batch") if name == "strop" else float("nan"),
                     median([r["server_cpu_s"] / r["seconds"] for r in rs]),
                     median([r["client_cpu_s"] / r["seconds"] for r in rs])])
    b, s1 = runs["inproc_batch32"], runs["inproc_single"]
    rows.append(["in-process ceiling (encode 32 + search)", "-", _med(b, "qps"), " / ".join(f"{r['qps']:.1f}" for r in b),
                 float("nan"), float("nan"), sum(r["queries"] for r in b), 0, 32.0, float("nan"), float("nan")])
    rows.append(["in-process, one query at a time (encode 1 + search)", "-", 1000.0 / _med(s1, "p50_ms"), "",
                 _med(s1, "p50_ms"), _med(s1, "p99_ms"), sum(r["queries"] for r in s1), 0, 1.0,
                 float("nan"), float("nan")])
    lines.append(table(["system", "concurrency", "QPS (median)", "QPS per round", "p50 ms", "p99 ms", "requests",
                        "errors", "mean encode batch", "server CPU (cores)", "client CPU (cores)"], rows))
    lines.append("")
    lines.append(f"in-process single query: encode p50 {_med(s1, 'encode_p50_ms'):.1f} ms + search p50 "
                 f"{_med(s1, 'search_p50_ms'):.2f} ms")
    if res.get("strop_healthz"):
        h = res["strop_healthz"]
        lines.append("")
        lines.append(f"HTTP floor (same client, same strop process, `GET /healthz`, c=1): p50 {h['p50_ms']:.2f} ms, "
                     f"p99 {h['p99_ms']:.2f} ms, {h['qps']:.0f} QPS")
    lines.append("")

    def rounds_of(name: str, c: int) -> dict[int, dict[str, Any]]:
        return {r["round"]: r for r in runs.get(name, []) if r["concurrency"] == c}

    goals = []
    top = max(levels)
    st = rounds_of("strop", top)
    for h in ("async", "def"):
        nv = rounds_of(f"naive_{h}", top)
        if st and nv:
            per = [st[k]["qps"] / nv[k]["qps"] for k in st if k in nv and nv[k]["qps"] > 0]
            val = median(per)
            goals.append([f"strop QPS / naive (`{h}` handler) QPS at c={top}", f"{val:.2f}x",
                          " / ".join(f"{x:.2f}" for x in per), ">= 3.5x", "ok" if val >= 3.5 else "below"])
    bi = {r["round"]: r for r in b}
    if st:
        per = [st[k]["qps"] / bi[k]["qps"] for k in st if k in bi]
        val = median(per)
        goals.append([f"strop QPS at c={top} / in-process ceiling", f"{val:.2f}x", " / ".join(f"{x:.2f}" for x in per),
                      ">= 0.8x", "ok" if val >= 0.8 else "below"])
    s_1 = rounds_of("strop", 1)
    si = {r["round"]: r for r in s1}
    if s_1:
        per = [s_1[k]["p50_ms"] - si[k]["p50_ms"] for k in s_1 if k in si]
        val = median(per)
        goals.append(["strop p50 at c=1 minus in-process single-query p50", f"{val:+.1f} ms",
                      " / ".join(f"{x:+.1f}" for x in per), "<= +2 ms", "ok" if val <= 2.0 else "below"])
    batches = res["ingest"]["batches"]
    n_ing = sum(x["docs"] for x in batches)
    strop_rate = n_ing / sum(x["strop_s"] for x in batches)
    for p in ("fp32", "bf16"):
        if batches and f"plain_{p}_s" in batches[0]:
            per = [x[f"plain_{p}_s"] / x["strop_s"] for x in batches]
            val = median(per)
            goals.append([f"ingest docs/s, strop PUT / plain SentenceTransformer.encode ({p})", f"{val:.2f}x",
                          " / ".join(f"{x:.2f}" for x in per),
                          ">= 0.9x" if p == "fp32" else "(extra: same precision)",
                          ("ok" if val >= 0.9 else "below") if p == "fp32" else ("ok" if val >= 0.9 else "below")])
    lines.append(table(["ratio", "median", "per round / batch", "target", ""], goals))
    lines.append("")
    ing_rows = [["strop PUT /collections/{c}/documents, batches of 1000", n_ing, sum(x["strop_s"] for x in batches),
                 strop_rate]]
    for p in ("fp32", "bf16"):
        if batches and f"plain_{p}_s" in batches[0]:
            sec = sum(x[f"plain_{p}_s"] for x in batches)
            ing_rows.append([f"plain SentenceTransformer.encode(batch_size=32), {p}, same 1000-text batches",
                             n_ing, sec, n_ing / sec])
    lines.append(table(["ingest (same texts)", "docs", "seconds", "docs/s"], ing_rows))
    lines.append("")
    mem = [[f"strop, {bl['docs']:,} docs loaded, at ready", res["strop_rss_loaded_mib"]]]
    if "strop_rss_empty_mib" in res:
        mem.append(["strop, one empty collection, at ready", res["strop_rss_empty_mib"]])
        mem.append([f"**=> per 100,000 docs: (loaded - empty) at ready / {bl['docs']:,} x 100k**",
                    res["rss_per_100k_at_ready_mib"]])
    mem.append(["strop, loaded, after the search rounds", res["strop_rss_after_search_mib"]])
    mem.append([f"strop, loaded, after PUT of {n_ing:,} more docs", res["strop_rss_after_ingest_mib"]])
    if "strop_rss_empty_mib" in res:
        mem.append(["strop, empty collection, after a short search load", res["strop_rss_empty_after_search_mib"]])
        mem.append(["(loaded after search rounds - empty after short load), same scaling: not like for like",
                    res["rss_per_100k_mib"]])
    mem.append([f"PUT growth after the first batch, /{res['ingest_rss_delta_docs']:,} x 100k: mostly allocator growth",
                res["rss_per_100k_ingest_mib"]])
    for h in ("async", "def"):
        if f"naive_{h}_rss_mib" in res:
            mem.append([f"naive ({h}) at start, same {bl['docs']:,} vectors + texts in memory",
                        res[f"naive_{h}_rss_mib"]])
    lines.append(table(["resident memory (RSS)", "MiB"], mem))
    lines.append("")
    if res.get("precision"):
        p = res["precision"]
        prow = [[k, p[k]["single_ms"], p[k]["batch32_ms"], p[k]["docs_per_s"]] for k in ("fp32", "bf16") if k in p]
        lines.append(table(["Encoder precision", "1 synopsis ms (p50)", "32 synopses ms (p50)",
                            "descriptions/s (batch 32)"], prow))
        lines.append("")
        lines.append(f"min cosine bf16 vs fp32: calibration batch {p['min_cos_calibration']:.6f}, 256 descriptions "
                     f"{p['min_cos_docs']:.6f}, 256 synopses {p['min_cos_queries']:.6f}. `auto` picked "
                     f"{p['auto_picks']} in the bench process; the service picked {res['strop_precision']} "
                     f"(`{res.get('strop_calibration', '')}`)")
        lines.append("")
    lines.append(f"wall time {res['wall_s']:.0f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
