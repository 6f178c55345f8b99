"""Training jobs end to end: real Redis (127.0.0.1:6379, own queue prefix), real rq workers in
subprocesses, a tiny real encoder, real FAISS, the CPython stdlib as a small real corpus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from bench.datasets import stdlib_pairs

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = [pytest.mark.redis]


@pytest.fixture(scope="module")
def corpus() -> dict:
    data = stdlib_pairs()
    train = data["train"][:240]
    test = data["train"][240:300]
    docs = {p["positive_id"]: p["code"] for p in train + test}
    return {"train": train, "test": test, "docs": [{"id": k, "text": v} for k, v in docs.items()]}


@pytest.fixture()
def env(data_dir: Path, tiny_encoder_path: str) -> dict:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError:
        pytest.fail("Redis must run at 127.0.0.1:6379 (redis-server --daemonize yes)")
    prefix = "test-" + uuid.uuid4().hex[:8]
    return {**os.environ, "STROP_DATA_DIR": str(data_dir), "STROP_REDIS_URL": REDIS_URL,
            "STROP_REDIS_PREFIX": prefix, "STROP_DEFAULT_ENCODER": tiny_encoder_path, "STROP_PRECISION": "fp32"}


@pytest.fixture()
def client(make_client, env):
    return make_client(redis_url=REDIS_URL, redis_prefix=env["STROP_REDIS_PREFIX"])


class Workers:
    def __init__(self, env: dict):
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def start(self, burst: bool = True, **extra_env: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "strop.service.cli", "worker"] + (["--burst"] if burst else [])
        log = open(os.path.join(os.path.dirname(self.env["STROP_DATA_DIR"]), f"worker{len(self.procs)}.log"), "w")
        p = subprocess.Popen(args, env={**self.env, **extra_env}, stdout=log, stderr=log,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)


@pytest.fixture()
def workers(env):
    w = Workers(env)
    yield w
    w.stop()


def load(client, corpus, name: str = "code") -> dict:
    assert client.post("/collections", json={"name": name, "modality": "code"}).status_code == 201
    r = client.put(f"/collections/{name}/documents", json={"documents": corpus["docs"]})
    assert r.status_code == 200, r.text
    return {"pairs": [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in corpus["test"]]}


def job_body(corpus, evals, **kw) -> dict:
    body = {"train": {"pairs": [{"query": p["query"], "positive_id": p["positive_id"]} for p in corpus["train"]]},
            "eval": evals, "epochs": 3, "batch_size": 16, "learning_rate": 1e-3,
            "mining": {"negatives_per_query": 1, "relative_margin": 0.0}}
    if "max_steps" in kw and "gate" not in kw:
        # a few steps of the tiny encoder need not raise the metric: jobs that test the queue, not quality,
        # publish whatever they measured
        body["gate"] = {"metric": "mrr@10", "min_delta": -1.0}
    body.update(kw)
    return body


def wait(client, job_id: str, states=("succeeded", "rejected", "failed", "cancelled"), timeout: float = 300) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {states}: {job}")


def active(client, name: str = "code") -> str:
    return client.get(f"/collections/{name}").json()["version"]["id"]


def test_job_raises_mrr_and_swaps(client, corpus, workers):
    evals = load(client, corpus)
    before = client.post("/collections/code/evaluate", json=evals).json()
    r = client.post("/collections/code/jobs", json=job_body(corpus, evals))
    assert r.status_code == 202 and r.json()["state"] == "queued"
    job_id = r.json()["job_id"]
    workers.start()
    job = wait(client, job_id)
    assert job["state"] == "succeeded", job
    m = job["metrics"]
    assert m["after"]["mrr@10"] > m["before"]["mrr@10"] + 0.02
    assert abs(m["before"]["mrr@10"] - before["mrr@10"]) < 0.02  # same eval pairs, same version
    mining = job["details"]["mining"]
    for key in ("candidates_seen", "removed_positive", "removed_window", "removed_margin", "queries_without_negatives"):
        assert key in mining
    assert mining["kept"] > 0
    assert job["details"]["train"]["neighbour_group"] == 8  # a code collection's default batches
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    # the API process switched to the job's version (pub/sub or polling)
    end = time.time() + 5
    while active(client) != job["version"] and time.time() < end:
        time.sleep(0.1)
    assert active(client) == job["version"]
    after = client.post("/collections/code/evaluate", json=evals).json()
    assert after["mrr@10"] > before["mrr@10"] + 0.02
    listed = client.get("/jobs", params={"collection": "code"}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]


def test_gated_out_job_keeps_active_version(client, corpus, workers):
    evals = load(client, corpus)
    v0 = active(client)
    r = client.post("/collections/code/jobs", json=job_body(corpus, evals, gate={"metric": "mrr@10", "min_delta": 0.9}))
    workers.start()
    job = wait(client, r.json()["job_id"])
    assert job["state"] == "rejected"
    assert job["metrics"]["gate"]["passed"] is False
    time.sleep(0.5)
    assert active(client) == v0
    versions = client.get("/collections/code/versions").json()
    assert job["version"] in [v["id"] for v in versions["versions"]]  # kept for inspection / manual activation
    assert versions["active"] == v0


@pytest.mark.parametrize("patch,code", [
    ({"bogus": 1}, "invalid_job"),
    ({"train": {"pairs": []}}, "invalid_job"),
    ({"train": {"pairs": [{"query": "q", "positive_id": "does.not.exist"}]}}, "unknown_documents"),
    ({"mining": {"negatives_per_query": -1}}, "invalid_job"),
    ({"mining": {"range_min": 10, "range_max": 5}}, "invalid_job"),
    ({"epochs": 0}, "invalid_job"),
    ({"train": {"source": "docstrings", "pairs": [{"query": "q", "positive_id": "x"}]}}, "invalid_job"),
    ({"train": {"queries": []}}, "invalid_job"),
    ({"train": {"queries": ["q", ""]}}, "invalid_job"),
    ({"train": {"queries": ["q"]}, "eval": {"holdout": 0.2}}, "invalid_job"),  # nothing labelled to hold out
    ({"train": {"queries": ["q"]}}, "no_teacher"),
    ({"pseudo": {"min_confidence": 0.7}}, "invalid_job"),  # pseudo without train.queries would do nothing
    ({"train": {"queries": ["q"]}, "pseudo": {"unsure": "distill"}}, "invalid_job"),  # not a job option
    ({"distill": {"loss": "listwise", "lexical": 0.2}}, "invalid_job"),  # not a job option
    ({"mining": {"fallback": "hardest"}}, "invalid_job"),  # not a job option
    ({"kind": "teacher", "teacher_prior": False}, "invalid_job"),  # not a job option
    ({"kind": "teacher", "train": {"pairs": [{"query": "q", "positive_id": "x"}], "queries": ["q2"]}}, "invalid_job"),
])
def test_impossible_jobs_are_refused_at_submission(client, corpus, patch, code):
    evals = load(client, corpus)
    body = job_body(corpus, evals)
    body.update(patch)
    r = client.post("/collections/code/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert client.get("/jobs", params={"collection": "code"}).json()["jobs"] == []


def test_unknown_collection_and_job(client):
    assert client.post("/collections/nope/jobs", json={"train": {"source": "feedback"}}).status_code == 404
    assert client.get("/jobs/nope").status_code == 404
    assert client.delete("/jobs/nope").status_code == 404


def test_cancel_queued_job(client, corpus):
    evals = load(client, corpus)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals)).json()["job_id"]
    job = client.delete(f"/jobs/{job_id}").json()
    assert job["state"] == "cancelled"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["waiting", "snapshot", "evaluate_before", "mine", "train", "evaluate_after", "publish"])
def test_cancel_running_job_in_each_stage(client, corpus, workers, stage):
    evals = load(client, corpus)
    v0 = active(client)
    if stage == "waiting":  # another job holds the collection's lock
        r = redis.Redis.from_url(REDIS_URL)
        lock = r.lock(f"{workers.env['STROP_REDIS_PREFIX']}:lock:code", timeout=60)
        assert lock.acquire(blocking=False)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=5)).json()["job_id"]
    workers.start(burst=True, STROP_FAULT_PAUSE=f"{stage}=60")
    end = time.time() + 180
    while time.time() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["stage"] == stage and job["state"] == "running":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"job never reached stage {stage}: {job}")
    t0 = time.time()
    assert client.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"
    workers.procs[-1].wait(120)  # generous: a busy machine is slow to tear a worker down
    assert time.time() - t0 < 55  # the cancel cut the 60 s pause short
    assert client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert active(client) == v0
    if stage == "waiting":
        lock.release()


def job_paused_in_train(client, corpus, workers: Workers) -> tuple[dict, str, str, subprocess.Popen]:
    """Load the corpus, submit a job and start a worker that holds it in its train stage for 60 s:
    (eval pairs, the active version before, job id, the worker process)."""
    evals = load(client, corpus)
    v0 = active(client)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals)).json()["job_id"]
    w = workers.start(burst=False, STROP_FAULT_PAUSE="train=60")
    end = time.time() + 180
    while client.get(f"/jobs/{job_id}").json()["stage"] != "train" and time.time() < end:
        time.sleep(0.1)
    return evals, v0, job_id, w


@pytest.mark.slow
def test_worker_killed_mid_job_fails_cleanly_and_next_job_runs(client, corpus, workers, data_dir):
    evals, v0, job_id, w = job_paused_in_train(client, corpus, workers)
    os.kill(w.pid, signal.SIGKILL)  # the worker process, not its work horse
    job = wait(client, job_id, timeout=20)
    assert job["state"] == "failed" and "worker" in job["error"]
    assert active(client) == v0
    assert not list((data_dir / "collections" / "code" / "versions").glob(".tmp-*"))
    # the collection is not stuck: a fresh job runs to completion and publishes
    job2 = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=5)).json()["job_id"]
    workers.start()
    assert wait(client, job2)["state"] == "succeeded"


@pytest.mark.slow
def test_a_job_the_api_failed_as_lost_stops_and_publishes_nothing(client, corpus, workers, data_dir):
    """A work horse starved of heartbeats (memory pressure, a Redis stall) is failed by the API after
    HEARTBEAT_STALE_S; when it wakes it must stop, not publish what the failed record says it did not."""
    evals, v0, job_id, w = job_paused_in_train(client, corpus, workers)  # paused there for 60 s
    lock = f"{workers.env['STROP_REDIS_PREFIX']}:lock:code"
    r = redis.Redis.from_url(REDIS_URL)
    assert r.exists(lock)
    store = client.app.state.store  # what the API's reconcile does to a job with a stale heartbeat
    assert store.finish_job_if(job_id, ("running",), state="failed", error="worker lost (test)", finished_at=time.time())
    end = time.time() + 20
    while r.exists(lock) and time.time() < end:
        time.sleep(0.1)
    assert not r.exists(lock), "the horse kept the collection after its job was failed"
    os.kill(w.pid, signal.SIGKILL)
    w.wait(30)
    # the killed worker may have been blocked in its dequeue (a BLMOVE on the server); until Redis sees
    # its socket close, a job pushed now would be handed to it and lost with it: wait for that
    end = time.time() + 30
    while time.time() < end and any(c.get("cmd") in ("blmove", "brpoplpush", "blpop") for c in r.client_list()):
        time.sleep(0.1)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"] == "worker lost (test)"
    assert active(client) == v0
    assert not list((data_dir / "collections" / "code" / "versions").glob(".tmp-*"))
    job2 = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=5)).json()["job_id"]
    workers.start()
    assert wait(client, job2)["state"] == "succeeded"


@pytest.mark.slow
def test_jobs_on_one_collection_never_interleave(client, corpus, workers):
    evals = load(client, corpus)
    ids = [client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=5)).json()["job_id"]
           for _ in range(2)]
    workers.start()
    workers.start()
    jobs = [wait(client, j) for j in ids]
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    first, second = sorted(jobs, key=lambda j: j["details"]["lock_acquired_at"])
    assert second["details"]["lock_acquired_at"] >= first["finished_at"]
    assert second["details"]["snapshot"]["version"] == first["version"]  # trained on top of the first


@pytest.mark.slow
def test_jobs_on_different_collections_run_in_parallel(client, corpus, workers):
    ids = []
    for name in ("code", "other"):
        evals = load(client, corpus, name)
        ids.append(client.post(f"/collections/{name}/jobs", json=job_body(corpus, evals, max_steps=3)).json()["job_id"])
    workers.start(STROP_FAULT_PAUSE="train=4")
    workers.start(STROP_FAULT_PAUSE="train=4")
    jobs = [wait(client, j) for j in ids]
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    a, b = jobs
    # each held its own collection's lock while the other was still running
    assert a["details"]["lock_acquired_at"] < b["finished_at"] and b["details"]["lock_acquired_at"] < a["finished_at"]
    end = time.time() + 10  # the API process switches on the announcement (or its next poll)
    while (active(client, "code"), active(client, "other")) != (a["version"], b["version"]) and time.time() < end:
        time.sleep(0.1)
    assert (active(client, "code"), active(client, "other")) == (a["version"], b["version"])


@pytest.mark.slow
def test_api_restart_mid_job_loses_nothing(make_client, client, corpus, workers):
    evals = load(client, corpus)
    v0 = active(client)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals, max_steps=5)).json()["job_id"]
    workers.start(STROP_FAULT_PAUSE="train=4")
    end = time.time() + 120
    while client.get(f"/jobs/{job_id}").json()["stage"] != "train" and time.time() < end:
        time.sleep(0.1)
    assert client.put("/collections/code/documents",
                      json={"documents": [{"id": "before.restart", "text": "def before(): pass"}]}).status_code == 200
    client.__exit__(None, None, None)  # the API process goes away while the job trains

    again = make_client(redis_url=REDIS_URL, redis_prefix=workers.env["STROP_REDIS_PREFIX"])
    assert again.get(f"/jobs/{job_id}").json()["state"] == "running"
    assert again.get("/collections/code/documents/before.restart").status_code == 200
    assert again.put("/collections/code/documents",
                     json={"documents": [{"id": "after.restart", "text": "def after(): pass"}]}).status_code == 200
    assert job_id in [j["job_id"] for j in again.get("/jobs", params={"collection": "code"}).json()["jobs"]]
    job = wait(again, job_id)
    assert job["state"] == "succeeded" and job["version"] != v0
    end = time.time() + 10
    while active(again) != job["version"] and time.time() < end:
        time.sleep(0.1)
    assert active(again) == job["version"]  # the restarted API switched to the job's version
    for doc_id in ("before.restart", "after.restart"):
        assert again.get(f"/collections/code/documents/{doc_id}").status_code == 200
    assert again.get("/collections/code").json()["count"] == len(corpus["docs"]) + 2


@pytest.mark.slow
def test_swap_under_search_load_loses_nothing(client, corpus, workers):
    evals = load(client, corpus)
    v0 = active(client)
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, evals)).json()["job_id"]
    statuses: list[int] = []
    written: list[str] = []
    stop = threading.Event()
    queries = [p["query"] for p in corpus["test"]]

    def search_loop() -> None:
        i = 0
        while not stop.is_set():
            r = client.post("/collections/code/search", json={"query": queries[i % len(queries)], "top_k": 5})
            statuses.append(r.status_code)
            i += 1

    def write_loop() -> None:
        i = 0
        while not stop.is_set():
            doc_id = f"live.doc{i}"
            r = client.put("/collections/code/documents",
                           json={"documents": [{"id": doc_id, "text": f"def live_{i}(): return {i}"}]})
            if r.status_code == 200:
                written.append(doc_id)
            i += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=search_loop), threading.Thread(target=write_loop)]
    for t in threads:
        t.start()
    workers.start(STROP_FAULT_PAUSE="publish=1")
    job = wait(client, job_id)
    end = time.time() + 5
    while active(client) == v0 and time.time() < end:
        time.sleep(0.05)
    time.sleep(1.0)  # keep the load going past the swap
    stop.set()
    for t in threads:
        t.join()
    assert job["state"] == "succeeded"
    assert active(client) == job["version"]
    assert len(statuses) >= 200 and set(statuses) == {200}, (len(statuses), set(statuses))
    # every acknowledged document is findable in the new version, including those written during the job
    assert written
    for doc_id in written + [d["id"] for d in corpus["docs"][:20]]:
        assert client.get(f"/collections/code/documents/{doc_id}").status_code == 200
    hits_ok = 0
    for i, doc_id in enumerate(written):
        r = client.post("/collections/code/search",
                        json={"query": f"def live_{i}(): return {i}", "top_k": 10, "filter": {}})
        hits_ok += doc_id in [h["id"] for h in r.json()["hits"]]
    count = client.get("/collections/code").json()["count"]
    assert count == len(corpus["docs"]) + len(written)
    st = client.app.state.manager.state("code")
    assert st.served.live.ntotal == count  # the index holds exactly the acknowledged documents
    assert hits_ok >= 0.8 * len(written)


def test_feedback_trains(client, corpus, workers):
    load(client, corpus)
    for p in corpus["train"][:120]:
        r = client.post("/collections/code/feedback", json={"query": p["query"], "positive_ids": [p["positive_id"]]})
        assert r.status_code == 202
    body = {"train": {"source": "feedback"}, "epochs": 2, "batch_size": 16, "learning_rate": 1e-3,
            "mining": {"negatives_per_query": 1, "relative_margin": 0.0, "neighbour_group": 4}}
    job_id = client.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(client, job_id)
    assert job["state"] in ("succeeded", "rejected")
    assert job["details"]["pairs"]["source"] == "feedback"
    assert job["details"]["train"]["neighbour_group"] == 4  # batches came from neighbouring positives
    assert job["details"]["pairs"]["train_pairs"] + job["details"]["pairs"]["eval_pairs"] >= 100


@pytest.mark.slow
def test_docstrings_job_with_augmentation_and_momentum_queue(client, workers):
    import email
    import json as _json

    from strop.index.code.parse import parse_tree
    from strop.index.code.sync import to_document

    docs = []
    for pkg in (Path(_json.__file__).parent, Path(email.__file__).parent):
        docs += [to_document(d) for d in parse_tree(pkg).docs]
    assert client.post("/collections", json={"name": "lib", "modality": "code"}).status_code == 201
    for i in range(0, len(docs), 500):
        assert client.put("/collections/lib/documents", json={"documents": docs[i:i + 500]}).status_code == 200
    body = {"train": {"source": "docstrings"}, "epochs": 2, "batch_size": 16, "learning_rate": 1e-3,
            "mining": {"negatives_per_query": 1, "relative_margin": 0.0},
            "augment": {"rate": 0.2, "mode": "both"}, "momentum_queue": {"size": 64, "momentum": 0.99},
            "gate": {"metric": "mrr@10", "min_delta": -1.0}}
    job_id = client.post("/collections/lib/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(client, job_id)
    assert job["state"] == "succeeded", job
    pairs = job["details"]["pairs"]
    assert pairs["source"] == "docstrings" and pairs["train_pairs"] > 50
    assert pairs["eval_text_overrides"] == pairs["eval_pairs"] or pairs["eval_text_overrides"] > 0
    # mining ranked documented functions as training sees them: without their docstrings
    assert job["details"]["mining_reencoded"] >= pairs["train_pairs"]
    assert job["metrics"]["after"]["n"] == pairs["eval_pairs"]
    # a text collection cannot train on docstrings
    client.post("/collections", json={"name": "prose", "modality": "text"})
    client.put("/collections/prose/documents", json={"documents": [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}]})
    r = client.post("/collections/prose/jobs", json={"train": {"source": "docstrings"}})
    assert r.status_code == 422


def _worker_pids(data_dir: Path) -> set[int]:
    """`strop worker` processes (and their rq work horses) serving ``data_dir``."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            environ = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if b"strop.service.cli\0worker" in cmd and f"STROP_DATA_DIR={data_dir}\0".encode() in environ:
            out.add(int(d))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the work horse through /proc")
def test_work_horse_exits_when_worker_and_redis_die_together(make_client, env, corpus, data_dir):
    """A deployment going down at once (or `strop serve`, whose embedded Redis dies with it): the orphaned
    work horse must notice its worker is gone although every Redis call now fails, fail the job, exit."""
    import socket

    from strop.index.store import DocumentStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    workers = Workers({**env, "STROP_REDIS_URL": url})
    try:
        end = time.time() + 10
        while time.time() < end:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                time.sleep(0.1)
        client = make_client(redis_url=url, redis_prefix=env["STROP_REDIS_PREFIX"])
        _, v0, job_id, w = job_paused_in_train(client, corpus, workers)
        horses = _worker_pids(data_dir) - {w.pid}
        assert horses, "no work horse found"
        srv.kill()
        srv.wait(10)
        os.kill(w.pid, signal.SIGKILL)
        end = time.time() + 15
        while _worker_pids(data_dir) & horses and time.time() < end:
            time.sleep(0.2)
        assert not _worker_pids(data_dir) & horses, "the orphaned work horse kept running"
        store = DocumentStore(data_dir / "strop.db")
        job = store.get_job(job_id)
        store.close()
        assert job["state"] == "failed" and "worker" in job["error"]
        assert active(client) == v0
    finally:
        srv.kill()
        workers.stop()
        for pid in _worker_pids(data_dir):  # a horse that outlived the assertion (rq horses run in their own session)
            os.kill(pid, signal.SIGKILL)


def test_a_gate_with_too_few_evaluation_pairs_does_not_judge(client, corpus, workers):
    """One held-out pair moves MRR@10 by 0 or 1: the gate refuses to judge on fewer than gate.min_pairs,
    rejects the job whatever the metric did, and the record says why."""
    evals = load(client, corpus)
    v0 = active(client)
    one = {"pairs": evals["pairs"][:1]}
    job_id = client.post("/collections/code/jobs", json=job_body(corpus, one, max_steps=3)).json()["job_id"]
    workers.start()
    job = wait(client, job_id)
    gate = job["metrics"]["gate"]
    assert job["state"] == "rejected" and gate["judged"] is False and gate["pairs"] == 1 and gate["min_pairs"] == 5
    assert "too few" in gate["reason"] and "gate.min_pairs" in gate["reason"], gate
    assert active(client) == v0
    # the same job, told one pair is enough, is judged (and the permissive min_delta lets it through)
    body = job_body(corpus, one, max_steps=3, gate={"metric": "mrr@10", "min_delta": -1.0, "min_pairs": 1})
    job_id = client.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(client, job_id)
    assert job["state"] == "succeeded" and job["metrics"]["gate"]["judged"] is True, job["metrics"]
    end = time.time() + 10  # the API process follows the activation (pub/sub or polling)
    while active(client) != job["version"] and time.time() < end:
        time.sleep(0.1)
    assert active(client) == job["version"]
