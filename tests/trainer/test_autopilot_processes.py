"""The autopilot in a deployment's shape: two API processes and two workers (each running the scheduler)
on one Redis and one PostgreSQL store, over real HTTP. Feedback arrives through both APIs, half of it as clicks reported with the
search_id another API handed out; exactly one round starts, and both APIs end up serving its version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from conftest import free_port, serve_env, start_serve, stop_serve

from bench.datasets import stdlib_pairs

REDIS_URL = "redis://127.0.0.1:6379/0"
N = 40

pytestmark = [pytest.mark.redis]


def test_two_apis_two_workers_start_exactly_one_round(tmp_path: Path, tiny_encoder_path: str, pg_url: str):
    store_url = pg_url
    redis.Redis.from_url(REDIS_URL).ping()
    data = stdlib_pairs()
    pairs = data["train"][:300]
    docs = list({p["positive_id"]: {"id": p["positive_id"], "text": p["code"]} for p in pairs}.values())
    data_dir = tmp_path / "data"
    env = serve_env(tiny_encoder_path, STROP_REDIS_URL=REDIS_URL, STROP_REDIS_PREFIX="test-" + uuid.uuid4().hex[:8],
                    STROP_NO_WORKER="1", STROP_AUTOPILOT_TICK_S="0.3", STROP_STORE_URL=store_url)
    procs: list[subprocess.Popen] = []
    try:
        apis = []
        for i in range(2):
            port = free_port()
            procs.append(start_serve(data_dir, port, env, tmp_path / f"api{i}.log"))
            apis.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
        for i in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "strop.service.cli", "worker", "--data-dir",
                                           str(data_dir)], env=env, stdout=open(tmp_path / f"worker{i}.log", "w"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        a, b = apis
        assert a.post("/collections", json={"name": "code", "modality": "code"}).status_code == 201
        assert a.put("/collections/code/documents", json={"documents": docs}).status_code == 200
        v0 = a.get("/collections/code").json()["version"]["id"]
        policy = {"triggers": {"min_feedback": N}, "yardstick": {"holdout": 0.3},
                  "job": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "gate": {"min_delta": -1.0}}}
        assert b.put("/collections/code/autopilot", json=policy).status_code == 200
        for i, p in enumerate(pairs[:N]):
            if i % 2:  # a click: the search on one API, the feedback on the other, no query resent
                found = a.post("/collections/code/search", json={"query": p["query"], "top_k": 5}).json()
                r = b.post("/collections/code/feedback",
                           json={"search_id": found["search_id"], "positive_ids": [p["positive_id"]]})
            else:
                r = (a, b)[i % 4 == 0].post("/collections/code/feedback",
                                             json={"query": p["query"], "positive_ids": [p["positive_id"]]})
            assert r.status_code == 202, r.text
        end = time.time() + 240
        view = {}
        while time.time() < end:
            view = a.get("/collections/code/autopilot").json()
            if view["rounds"] and view["rounds"][0]["state"] not in ("queued", "running"):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"no round finished: {view}")
        (r1,) = view["rounds"]
        assert r1["state"] == "succeeded" and r1["outcome"]["activated"], r1
        assert view["rounds_started"] == 1 and r1["triggers"] == {"min_feedback": N}
        jobs = a.get("/jobs", params={"collection": "code"}).json()["jobs"]
        assert [j["job_id"] for j in jobs] == [r1["job_id"]]
        # the clicks were stored with the queries the searches answered
        queries = {f["query"] for f in _feedback(store_url)}
        assert queries == {p["query"] for p in pairs[:N]}
        version = r1["outcome"]["version"]
        assert version != v0
        end = time.time() + 10
        while time.time() < end and {c.get("/collections/code").json()["version"]["id"] for c in apis} != {version}:
            time.sleep(0.2)
        assert {c.get("/collections/code").json()["version"]["id"] for c in apis} == {version}
    finally:
        for p in procs[2:]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for p in procs[:2]:
            stop_serve(p)


def _feedback(store_url: str) -> list[dict]:
    from strop.index.store import DocumentStore

    return DocumentStore(store_url).list_feedback("code")
