"""Search latency while hostile or heavy callers share the server.

Starts a real `strop serve` (the packaged MiniLM, bf16 where it keeps quality, no worker) with a
text collection of Debian-like synopses, then runs the same search traffic (8 clients, distinct
queries) alone and beside each load below, in one run, and prints search p50 / p95 / failures and
the p95 ratio to the traffic alone:

* ``surrogates``: 2 clients sending ``{"query": "\\ud800 x"}`` in a loop (refused at the edge);
* ``bulk embeddings``: 1 client sending /v1/embeddings of 256 inputs of 15,000 characters;
* ``bulk upsert``: 1 client upserting 500 documents of 4,000 characters per request;
* ``unauthenticated 18 MB``: 4 clients sending 18 MB bodies without a key (keyed server).

    python -m bench.hostile [--rounds 2] [--searches 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench._util import log, machine, omp_passive

KEY = "bench-admin-key-0123456789"
WORDS = ("river mountain forest desert ocean valley glacier canyon island meadow harbour bridge tower castle "
         "garden market library station museum theatre").split()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}
    env.update({"STROP_API_KEYS": f"{KEY}:admin", "STROP_NO_WORKER": "true",
                "STROP_REDIS_URL": "redis://127.0.0.1:6379/0", "STROP_REDIS_PREFIX": f"bench-hostile-{port}"})
    p = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--port", str(port), "--data-dir",
                          str(data)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    p.kill()
    raise SystemExit("strop serve did not start")


def searches(url: str, n_clients: int, each: int, offset: int) -> tuple[list[float], int]:
    lat: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            for i in range(each):
                q = " ".join(WORDS[(k * 7 + i * 3 + j + offset) % len(WORDS)] for j in range(3)) + f" {k}-{i}"
                t0 = time.perf_counter()
                r = c.post("/collections/bench/search", json={"query": q, "top_k": 10})
                with lock:
                    lat.append(time.perf_counter() - t0)
                    failed[0] += r.status_code != 200

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, failed[0]


def loop(stop: threading.Event, n: int, fn: Callable[[httpx.Client], None], auth: bool = True) -> list[threading.Thread]:
    def run() -> None:
        headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
        with httpx.Client(headers=headers, timeout=300) as c:
            while not stop.is_set():
                try:
                    fn(c)
                except httpx.HTTPError:
                    pass

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    omp_passive()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the loads this many times")
    ap.add_argument("--searches", type=int, default=25, help="searches per client per measurement")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="strop-hostile-"))
    proc, url = start(tmp / "data")
    h = {"Authorization": f"Bearer {KEY}"}
    try:
        httpx.post(url + "/collections", json={"name": "bench"}, headers=h, timeout=120).raise_for_status()
        docs = [{"id": f"d{i}", "text": " ".join(WORDS[(i * 13 + j) % len(WORDS)] for j in range(12))}
                for i in range(2000)]
        for s in range(0, len(docs), 500):
            httpx.put(url + "/collections/bench/documents", json={"documents": docs[s : s + 500]}, headers=h,
                      timeout=600).raise_for_status()
        long_inputs = [("lorem ipsum dolor sit amet " * 600)[:15_000] + f" {i}" for i in range(256)]
        big_docs = [{"id": f"u{i}", "text": ("upsert text " * 400)[:4000] + f" {i}"} for i in range(500)]
        body_18mb = b'{"documents": [{"id": "x", "text": "' + b"a" * (18 * 1024 * 1024) + b'"}]}'
        loads: dict[str, Callable[[threading.Event], list[threading.Thread]]] = {
            "none": lambda stop: [],
            "surrogates": lambda stop: loop(stop, 2, lambda c: c.post(
                url + "/collections/bench/search", content=b'{"query": "\\ud800 x"}',
                headers={"content-type": "application/json"})),
            "bulk embeddings": lambda stop: loop(stop, 1, lambda c: c.post(
                url + "/v1/embeddings", json={"model": "bench", "input": long_inputs})),
            "bulk upsert": lambda stop: loop(stop, 1, lambda c: c.put(
                url + "/collections/bench/documents", json={"documents": big_docs})),
            "unauthenticated 18 MB": lambda stop: loop(stop, 4, lambda c: c.put(
                url + "/collections/bench/documents", content=body_18mb,
                headers={"content-type": "application/json"}), auth=False),
        }
        searches(url, 8, 5, 999)  # warm-up
        results: dict[str, list[float]] = {k: [] for k in loads}
        fails: dict[str, int] = {k: 0 for k in loads}
        for r in range(args.rounds):
            for name, start_load in loads.items():
                stop = threading.Event()
                threads = start_load(stop)
                time.sleep(1.0 if threads else 0)  # let the load reach the server
                lat, failed = searches(url, 8, args.searches, r * 100)
                stop.set()
                for t in threads:
                    t.join(300)
                results[name] += lat
                fails[name] += failed
                log(f"round {r + 1} {name}: p95 {statistics.quantiles(lat, n=20)[-1] * 1000:.0f} ms")
        base = statistics.quantiles(results["none"], n=20)[-1]
        m = machine()
        print(f"\n{m.get('cpu', '')} - 8 search clients, {args.rounds} rounds x {args.searches} searches each\n")
        print("| load beside the searches | search p50 ms | search p95 ms | p95 / alone | failed searches |")
        print("|---|---|---|---|---|")
        for name, lat in results.items():
            p50 = statistics.median(lat) * 1000
            p95 = statistics.quantiles(lat, n=20)[-1]
            print(f"| {name} | {p50:.0f} | {p95 * 1000:.0f} | {p95 / base:.2f} | {fails[name]} of {len(lat)} |")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
