"""Autopilot end to end: policies over REST, schedulers on real Redis, rounds run by real rq workers on
a tiny real encoder and the CPython stdlib as a small real corpus."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import test_jobs
from test_jobs import REDIS_URL, Workers, active, load, wait

from strop.index.store import DocumentStore
from strop.trainer.autopilot import Autopilot, on_yardstick

pytestmark = [pytest.mark.redis]

# the job tests' fixtures: a stdlib corpus, a queue prefix of the test's own, the API and burst workers
corpus, env, client, workers = test_jobs.corpus, test_jobs.env, test_jobs.client, test_jobs.workers

N = 40  # feedback events that start a round


def policy(**kw) -> dict:
    body = {"triggers": {"min_feedback": N}, "yardstick": {"holdout": 0.3},
            "job": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3,
                    "mining": {"negatives_per_query": 1, "relative_margin": 0.0}}}
    body.update(kw)
    return body


def send_feedback(client, corpus, start: int, n: int, name: str = "code") -> None:
    for p in corpus["train"][start:start + n]:
        r = client.post(f"/collections/{name}/feedback", json={"query": p["query"], "positive_ids": [p["positive_id"]]})
        assert r.status_code == 202, r.text


def scheduler(env: dict, data_dir) -> Autopilot:
    return Autopilot(DocumentStore(data_dir / "strop.db"), redis.Redis.from_url(REDIS_URL), env["STROP_REDIS_PREFIX"],
                     tick_s=0.2)


def rounds(client, name: str = "code") -> list[dict]:
    return client.get(f"/collections/{name}/autopilot").json()["rounds"]


def run_round(client, workers: Workers, ap: Autopilot, name: str = "code", **worker_env: str) -> dict:
    """Let a burst worker run the queued round's job, then let the scheduler close the round."""
    (r,) = [r for r in rounds(client, name) if r["state"] in ("queued", "running")]
    workers.start(**worker_env)
    wait(client, r["job_id"])
    ap.tick()
    (done,) = [x for x in rounds(client, name) if x["round"] == r["round"]]
    return done


@pytest.mark.parametrize("body,needle", [
    ({"triggers": {}}, "every trigger is off"),
    ({"triggers": {"min_feedback": None, "interval_s": None}}, "every trigger is off"),
    ({"triggers": {"min_feedback": 5}, "bogus": 1}, "bogus"),
    ({"triggers": {"min_feedback": 0}}, "min_feedback"),
    ({"triggers": {"min_feedback": 5}, "job": {"epochs": 0}}, "job template"),
    ({"triggers": {"min_feedback": 5}, "job": {"bogus": True}}, "job template"),
    ({"triggers": {"min_feedback": 5}, "job": {"eval": {"holdout": 0.2}}}, "job.eval"),
    ({"triggers": {"min_feedback": 5}, "job": {"train": {"pairs": []}}}, "job.train.pairs"),
    ({"triggers": {"min_feedback": 5}, "job": {"gate": {"regression_sets": []}}}, "regression_sets"),
    ({"triggers": {"min_feedback": 5}, "job": {"train": {"source": "views"}}}, "feedback"),
    ({"triggers": {"min_feedback": 5}, "job": {"train": {"source": "docstrings"}}}, "yardstick.pairs"),
    ({"triggers": {"min_feedback": 5}, "yardstick": {"holdout": 0.2, "pairs": [{"query": "q", "positive_ids": ["x"]}]}},
     "not both"),
    ({"triggers": {"min_feedback": 5}, "yardstick": {"pairs": [{"query": "q", "positive_ids": ["ghost"]}]}}, "ghost"),
])
def test_bad_policies_are_422(client, corpus, body, needle):
    load(client, corpus)
    r = client.put("/collections/code/autopilot", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.text
    assert client.get("/collections/code/autopilot").status_code == 404


def test_policy_view_and_delete(client, corpus):
    load(client, corpus)
    assert client.get("/collections/code/autopilot").status_code == 404
    assert client.delete("/collections/code/autopilot").status_code == 404
    assert client.post("/collections", json={"name": "prose", "modality": "text"}).status_code == 201
    r = client.put("/collections/prose/autopilot", json=policy(job={"train": {"source": "docstrings"}},
                                                              yardstick={"pairs": [{"query": "q", "positive_ids": ["x"]}]}))
    assert r.status_code == 422 and "code collection" in r.text, r.text
    send_feedback(client, corpus, 0, 3)  # before the policy: not counted as new, but learnt by its first round
    view = client.put("/collections/code/autopilot", json=policy()).json()
    assert view["enabled"] and view["state"] == "watching" and view["rounds"] == []
    assert view["counts"]["feedback"] == 0 and view["due"] == {}
    assert view["policy"]["triggers"] == {"min_feedback": N}
    send_feedback(client, corpus, 3, 2)
    assert client.get("/collections/code/autopilot").json()["counts"]["feedback"] == 2
    off = client.delete("/collections/code/autopilot").json()
    assert off["state"] == "disabled" and not off["enabled"]


def test_min_feedback_starts_exactly_one_round_and_disabling_stops_rounds(client, corpus, workers, env, data_dir):
    load(client, corpus)
    assert client.put("/collections/code/autopilot", json=policy()).status_code == 200
    a, b = scheduler(env, data_dir), scheduler(env, data_dir)
    send_feedback(client, corpus, 0, N - 1)
    assert a.tick() == [] and b.tick() == []
    view = client.get("/collections/code/autopilot").json()
    assert view["counts"]["feedback"] == N - 1 and view["due"] == {}
    send_feedback(client, corpus, N - 1, 1)
    assert client.get("/collections/code/autopilot").json()["due"] == {"min_feedback": N}

    # two schedulers (a leader that lost its lock without noticing, say) race to start it, many times over
    started: list = []
    barrier = threading.Barrier(2)

    def race(ap: Autopilot) -> None:
        barrier.wait()
        for _ in range(5):
            started.extend(ap.tick())

    threads = [threading.Thread(target=race, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert started == [("code", 1)]
    (r1,) = rounds(client)
    assert r1["state"] == "queued" and r1["triggers"] == {"min_feedback": N} and r1["yardstick_pairs"] >= 5
    assert [j["job_id"] for j in client.get("/jobs", params={"collection": "code"}).json()["jobs"]] == [r1["job_id"]]
    assert client.get("/collections/code/autopilot").json()["state"] == "round_in_flight"

    v0 = active(client)
    done = run_round(client, workers, a)
    assert done["state"] == "succeeded", done
    out = done["outcome"]
    assert out["activated"] and out["version"] != v0 and done["reference"] == out["after"]["mrr@10"]
    assert out["before"]["mrr@10"] < out["after"]["mrr@10"]
    assert a.tick() == []  # its feedback is learnt; nothing new
    assert client.get("/collections/code/autopilot").json()["counts"]["feedback"] == 0

    assert client.delete("/collections/code/autopilot").json()["state"] == "disabled"
    send_feedback(client, corpus, N, N)
    assert a.tick() == [] and b.tick() == []
    assert len(rounds(client)) == 1
    # turned on again, it counts from its last round: the feedback sent meanwhile starts round 2, which
    # replays round 1's pairs and guards its yardstick
    assert client.put("/collections/code/autopilot", json=policy()).json()["due"] == {"min_feedback": N}
    assert a.tick() == [("code", 2)]
    r2 = rounds(client)[0]
    spec = client.app.state.store.get_job(r2["job_id"])["spec"]
    assert spec["replay"]["pairs"] and spec["gate"]["regression_sets"][0]["name"] == "round 1"
    def keys(ps: list) -> set:
        return {(p["query"], p["positive_id"]) for p in ps}

    assert keys(spec["replay"]["pairs"]) <= keys(corpus["train"][:N])
    assert keys(spec["train"]["pairs"]) <= keys(corpus["train"][N:2 * N])  # only what round 1 did not learn


def test_round_that_forgets_an_earlier_yardstick_is_rejected(client, corpus, workers, env, data_dir):
    load(client, corpus)
    ap = scheduler(env, data_dir)
    client.put("/collections/code/autopilot", json=policy())
    send_feedback(client, corpus, 0, N)
    assert ap.tick() == [("code", 1)]
    r1 = run_round(client, workers, ap)
    assert r1["state"] == "succeeded" and r1["reference"] is not None
    v1 = active(client)
    # a round that wrecks the encoder: its own yardstick may not matter (min_delta -1), the earlier one does
    wreck = policy(job={"epochs": 3, "batch_size": 16, "learning_rate": 0.05, "gate": {"min_delta": -1.0}},
                   replay={"max_pairs": 0})
    client.put("/collections/code/autopilot", json=wreck)
    send_feedback(client, corpus, N, N)
    assert ap.tick() == [("code", 2)]
    r2 = run_round(client, workers, ap)
    assert r2["state"] == "rejected", r2
    gate = r2["outcome"]["gate"]
    (reg,) = gate["regressions"]
    assert reg["name"] == "round 1" and not reg["passed"] and reg["loss"] > 0.01
    assert "round 1" in r2["outcome"]["reason"] and not r2["outcome"]["activated"]
    assert active(client) == v1  # nothing served changed
    view = client.get("/collections/code/autopilot").json()
    assert view["failures_in_a_row"] == 0 and view["state"] == "watching"


def test_failed_round_is_recorded_and_backs_off(client, corpus, workers, env, data_dir):
    load(client, corpus)
    ap = scheduler(env, data_dir)
    client.put("/collections/code/autopilot", json=policy(backoff_s=3600))
    v0 = active(client)
    send_feedback(client, corpus, 0, N)
    assert ap.tick() == [("code", 1)]
    r1 = run_round(client, workers, ap, STROP_FAULT_FAIL="train")
    assert r1["state"] == "failed" and "fault injected" in r1["outcome"]["reason"]
    assert active(client) == v0
    view = client.get("/collections/code/autopilot").json()
    assert view["failures_in_a_row"] == 1 and view["state"] == "backing_off"
    assert view["backoff_until"] > time.time() + 3000
    send_feedback(client, corpus, N, N)
    assert ap.tick() == []  # due, but backing off
    assert client.get("/collections/code/autopilot").json()["due"]


def test_yardstick_side_is_stable():
    queries = [f"query number {i}" for i in range(2000)]
    first = [on_yardstick(q, 0.2) for q in queries]
    assert first == [on_yardstick(q, 0.2) for q in queries]
    assert 0.15 < sum(first) / len(first) < 0.25
    assert on_yardstick("Parse  The FILE", 0.5) == on_yardstick("parse the file", 0.5)
