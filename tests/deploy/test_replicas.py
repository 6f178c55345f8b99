"""Replicas that share nothing on disk: PostgreSQL for the store, SeaweedFS (real S3) for versions, Redis for
jobs and announcements; each API process and the worker have their own, initially empty, data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from conftest import free_port, serve_env, start_serve, stop_serve

REDIS_URL = "redis://127.0.0.1:6379/0"
TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]

pytestmark = [pytest.mark.redis]


def until(fn, timeout: float, what: str, every: float = 0.05):
    end = time.time() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.time() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def test_replicas_with_empty_data_dirs_on_postgres_and_s3(tmp_path: Path, tiny_encoder_path: str, pg_url: str,
                                                         seaweedfs) -> None:
    redis.Redis.from_url(REDIS_URL).ping()
    env = serve_env(tiny_encoder_path, STROP_REDIS_URL=REDIS_URL, STROP_REDIS_PREFIX="test-" + uuid.uuid4().hex[:8],
                    STROP_NO_WORKER="1", STROP_STORE_URL=pg_url,
                    STROP_ARTIFACTS_URL=seaweedfs.url("replicas-" + uuid.uuid4().hex[:8]), **seaweedfs.env)
    procs: list[subprocess.Popen] = []
    apis: dict[str, httpx.Client] = {}

    def start_api(name: str) -> httpx.Client:
        port = free_port()
        procs.append(start_serve(tmp_path / f"cache-{name}", port, env, tmp_path / f"{name}.log"))
        apis[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        return apis[name]

    try:
        a, b = start_api("a"), start_api("b")
        worker = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "worker", "--data-dir",
                                   str(tmp_path / "scratch")], env=env, stdout=open(tmp_path / "worker.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)
        assert a.post("/collections", json={"name": "notes", "modality": "text"}).status_code == 201
        docs = [{"id": f"{t.split()[0]}-{j}", "text": f"notes about {t}, part {j}"} for t in TOPICS for j in range(5)]
        assert a.put("/collections/notes/documents", json={"documents": docs}).status_code == 200
        until(lambda: b.get("/collections/notes").status_code == 200, 10, "B opens the collection A created")

        # a write through A is searchable through B within 2 s
        t0 = time.time()
        r = a.put("/collections/notes/documents", json={"documents": [{"id": "fresh", "text": "zeppelins over lakes"}]})
        assert r.status_code == 200

        def b_sees() -> bool:
            hits = b.post("/collections/notes/search", json={"query": "zeppelins over lakes", "top_k": 3}).json()["hits"]
            return any(h["id"] == "fresh" for h in hits)

        until(b_sees, 2.0, "a write through A searchable on B")
        write_to_visible = time.time() - t0
        assert write_to_visible <= 2.0

        # a job run by the worker (its own scratch dir): both APIs serve its version
        pairs = [{"query": f"something on {t}", "positive_id": f"{t.split()[0]}-{j}"} for t in TOPICS for j in range(5)]
        job = a.post("/collections/notes/jobs", json={
            "train": {"pairs": pairs}, "epochs": 2, "batch_size": 8, "learning_rate": 1e-3,
            "gate": {"min_delta": -1.0}, "mining": {"negatives_per_query": 0}}).json()
        final = until(lambda: (j := a.get(f"/jobs/{job['job_id']}").json())["state"] in
                      ("succeeded", "rejected", "failed", "cancelled") and j, 180, "the job ends", every=0.3)
        assert final["state"] == "succeeded", final
        version = final["version"]
        until(lambda: all(c.get("/collections/notes").json()["version"]["id"] == version for c in (a, b)), 10,
              "both APIs serve the job's version")
        query = {"query": "rivers and lakes", "top_k": 5}
        expected = a.post("/collections/notes/search", json=query).json()

        # a third replica with an empty data dir serves exactly the same
        c = start_api("c")
        assert c.get("/collections/notes").json()["version"]["id"] == version
        got = c.post("/collections/notes/search", json=query).json()
        assert [(h["id"], round(h["score"], 5)) for h in got["hits"]] == \
               [(h["id"], round(h["score"], 5)) for h in expected["hits"]]
        assert (tmp_path / "cache-c" / "collections" / "notes" / "versions" / version / "manifest.json").exists()

        # kill -9 of A in the middle of a load: B keeps answering every request
        failures: list[str] = []
        done = threading.Event()

        def load() -> None:
            while not done.is_set():
                try:
                    r = b.post("/collections/notes/search", json=query)
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                except httpx.HTTPError as e:
                    failures.append(repr(e))

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.5)
        os.killpg(procs[0].pid, signal.SIGKILL)
        time.sleep(1.0)
        done.set()
        loader.join(30)
        assert not failures, failures[:5]
    finally:
        for p in procs:
            if p.poll() is None and "worker" in p.args:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            elif p.poll() is None:
                stop_serve(p)
