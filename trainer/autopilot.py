"""Autopilot: the trainer starts rounds by itself when a collection's policy says so.

Every ``strop worker`` runs a scheduler thread; one of them leads (a Redis lock renewed each tick)
and checks the enabled policies: when a trigger is met it plans a round (the feedback not yet
learnt, its frozen yardstick, a replay sample of what earlier rounds learnt, and those rounds'
yardsticks as regression sets), claims it in the store and queues it as an ordinary job. The claim
is a compare-and-set on the policy's round count, so even two schedulers that both believe they
lead never start one round twice. Finished jobs close their rounds: an activated round moves what
is learnt; a failed one backs the policy off; a rejected one leaves its data for the next round.

No torch here: the service imports this module to show a policy's counts and history.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from strop.index.store import DocumentStore, NotFound
from strop.trainer.contract import TERMINAL, queue_name
from strop.trainer.policy import AutopilotPolicy, template_spec
from strop.trainer.queueing import HEARTBEAT_STALE_S, reconcile_job, submit_job

log = logging.getLogger("strop.autopilot")

MAX_BACKOFF_S = 6 * 3600.0


def leader_key(prefix: str) -> str:
    return f"{prefix}:autopilot:leader"


def on_yardstick(query: str, share: float) -> bool:
    """Whether a feedback query belongs to the yardstick side: a stable hash, so the answer never changes
    and one query is never on both sides."""
    digest = hashlib.blake2b(" ".join(query.lower().split()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < share * 10_000


def merge_eval(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feedback rows as evaluation pairs: one per query, every document it was answered by."""
    by_query: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        for d in r["positive_ids"]:
            if d not in by_query[r["query"]]:
                by_query[r["query"]].append(d)
    return [{"query": q, "positive_ids": ids} for q, ids in by_query.items()]


def train_pair(row: dict[str, Any]) -> dict[str, Any]:
    return {"query": row["query"], "positive_id": row["positive_ids"][0], "negative_ids": row["negative_ids"][:64]}


@dataclass
class Counts:
    feedback: int  # events since the last round started
    feedback_max: int
    documents: int  # documents written or deleted since then
    seconds: float  # since then
    watermark: int

    def view(self) -> dict[str, Any]:
        return {"feedback": self.feedback, "documents": self.documents, "seconds": round(self.seconds, 1)}


def counts(store: DocumentStore, rec: dict[str, Any], now: float) -> Counts:
    c = rec["collection"]
    watermark = store.watermark()
    fb, fb_max = store.feedback_count_since(c, rec["feedback_mark"])
    return Counts(fb, fb_max, store.changes_count_since(c, rec["seq_mark"]), now - rec["marked_at"], watermark)


def fired(policy: AutopilotPolicy, n: Counts) -> dict[str, Any]:
    """The triggers met now, with what they counted."""
    t = policy.triggers
    out: dict[str, Any] = {}
    if t.min_feedback is not None and n.feedback >= t.min_feedback:
        out["min_feedback"] = n.feedback
    if t.min_documents is not None and n.documents >= t.min_documents:
        out["min_documents"] = n.documents
    if t.interval_s is not None and n.seconds >= t.interval_s and (n.feedback or n.documents):
        out["interval_s"] = round(n.seconds, 1)
    return out


@dataclass
class Plan:
    """What a round will train on and be judged on (``waiting`` says why it cannot start yet)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    yardstick: list[dict[str, Any]] = field(default_factory=list)
    replay: list[dict[str, Any]] = field(default_factory=list)
    regression_sets: list[dict[str, Any]] = field(default_factory=list)
    waiting: str | None = None


def plan_round(store: DocumentStore, rec: dict[str, Any], policy: AutopilotPolicy, feedback_max: int,
               number: int) -> Plan:
    c = rec["collection"]
    share = policy.yardstick.holdout
    plan = Plan()
    earlier = [r for r in store.list_rounds(c, with_yardstick=True)
               if r["outcome"].get("activated") and r["reference"] is not None]
    if policy.source() == "feedback":
        pending = store.feedback_between(c, rec["learned_mark"], feedback_max)
        held = [r for r in pending if share is not None and on_yardstick(r["query"], share)]
        plan.train = [train_pair(r) for r in pending if not (share is not None and on_yardstick(r["query"], share))]
        if not plan.train:
            plan.waiting = "no feedback to train on since the last activated round"
        plan.yardstick = merge_eval(held) if share is not None else [p.model_dump() for p in policy.yardstick.pairs or []]
    else:
        plan.yardstick = [p.model_dump() for p in policy.yardstick.pairs or []]
    if share is not None:
        plan.regression_sets = [{"name": f"round {r['round']}", "pairs": r["yardstick"], "reference": r["reference"]}
                                for r in reversed(earlier) if r["yardstick"]]
    elif earlier:  # fixed pairs: the yardstick itself must keep the best an activated round reached on it
        plan.regression_sets = [{"name": "yardstick", "pairs": plan.yardstick, "reference": earlier[0]["reference"]}]
    min_pairs = int((policy.job.get("gate") or {}).get("min_pairs", 5))
    if plan.waiting is None and len(plan.yardstick) < min_pairs:
        plan.waiting = (f"the yardstick has {len(plan.yardstick)} queries and the gate judges from gate.min_pairs="
                        f"{min_pairs}: waiting for more feedback")
    if policy.source() == "feedback" and policy.replay.max_pairs and rec["learned_mark"] > 0:
        judged = {p["query"] for p in plan.yardstick} | {p["query"] for s in plan.regression_sets for p in s["pairs"]}
        learnt = [r for r in store.feedback_between(c, 0, rec["learned_mark"])
                  if r["query"] not in judged and not (share is not None and on_yardstick(r["query"], share))]
        k = min(policy.replay.max_pairs, math.ceil(policy.replay.ratio * len(plan.train)), len(learnt))
        plan.replay = [train_pair(r) for r in random.Random(number).sample(learnt, k)]
    return plan


class Autopilot:
    """The scheduler one worker runs at a time (see the module docstring)."""

    def __init__(self, store: DocumentStore, conn: redis.Redis, prefix: str, tick_s: float = 5.0):
        self.store = store
        self.redis = conn
        self.prefix = prefix
        self.tick_s = tick_s
        self.queue = Queue(queue_name(prefix), connection=conn)
        self.lock = conn.lock(leader_key(prefix), timeout=max(10.0, 3 * tick_s), thread_local=False)

    # -- leadership -----------------------------------------------------------------------
    def lead(self) -> bool:
        """Hold (or take) the leader lock; False while another scheduler holds it."""
        try:
            if self.lock.owned():
                self.lock.reacquire()
                return True
            return bool(self.lock.acquire(blocking=False))
        except redis.exceptions.LockError:
            return False

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.lead():
                    self.tick()
            except Exception:  # noqa: BLE001 - Redis or the store away: try again next tick
                log.exception("autopilot tick failed")
            stop.wait(self.tick_s)
        try:
            if self.lock.owned():
                self.lock.release()
        except redis.RedisError:
            pass

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="autopilot", daemon=True)
        thread.start()
        return thread, stop

    # -- one pass -------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[tuple[str, int]]:
        """Close finished rounds, then start the rounds that are due; returns the rounds started."""
        for r in self.store.rounds_in_flight():
            self.reconcile(r)
        started = []
        for rec in self.store.enabled_autopilots():
            try:
                number = self.maybe_start(rec, now or time.time())
            except Exception:  # noqa: BLE001 - one collection's trouble must not stop the others
                log.exception("autopilot: could not start a round for %s", rec["collection"])
                continue
            if number is not None:
                started.append((rec["collection"], number))
        return started

    def maybe_start(self, rec: dict[str, Any], now: float) -> int | None:
        c = rec["collection"]
        if rec["backoff_until"] and now < rec["backoff_until"]:
            return None
        policy = AutopilotPolicy.model_validate(rec["policy"])
        n = counts(self.store, rec, now)
        why = fired(policy, n)
        if not why:
            return None
        number = rec["rounds"] + 1
        plan = plan_round(self.store, rec, policy, n.feedback_max, number)
        if plan.waiting:
            log.debug("autopilot %s: due (%s) but %s", c, why, plan.waiting)
            return None
        spec = template_spec(policy, plan.train, plan.yardstick, plan.replay, plan.regression_sets)
        job_id = uuid.uuid4().hex
        claimed = self.store.claim_round(c, rec["rounds"], job_id=job_id, triggers=why,
                                         feedback_from=rec["learned_mark"], feedback_to=n.feedback_max,
                                         seq_mark=n.watermark, yardstick=plan.yardstick)
        if claimed is None:
            return None  # another scheduler started it, or a round is still in flight
        try:
            submit_job(self.store, self.queue, self.prefix, c, "encoder", spec.model_dump(mode="json"), job_id)
        except Exception as e:  # noqa: BLE001 - recorded on the round, and the policy backs off
            self.store.finish_round(c, claimed, "failed", {"reason": f"could not queue the round's job: {e}"},
                                    failed=True, backoff_s=self.backoff(rec, policy))
            return claimed
        log.info("autopilot %s: round %d started (%s), job %s: %d new pairs, %d replayed, %d yardstick queries, "
                 "%d regression sets", c, claimed, why, job_id, len(plan.train), len(plan.replay),
                 len(plan.yardstick), len(plan.regression_sets))
        return claimed

    @staticmethod
    def backoff(rec: dict[str, Any], policy: AutopilotPolicy) -> float:
        return min(policy.backoff_s * 2.0 ** rec["failures"], MAX_BACKOFF_S)

    def reconcile(self, r: dict[str, Any]) -> None:
        """Mirror the round's job state; close the round once the job has ended."""
        c, number = r["collection"], r["round"]
        try:
            job = reconcile_job(self.store, self.redis, self.store.get_job(r["job_id"]))
        except NotFound:
            if time.time() - r["created_at"] > HEARTBEAT_STALE_S:  # claimed, then the scheduler died
                rec = self.store.get_autopilot(c)
                backoff = self.backoff(rec, AutopilotPolicy.model_validate(rec["policy"])) if rec else 0.0
                self.store.finish_round(c, number, "failed", {"reason": "the round's job was never queued"},
                                        failed=True, backoff_s=backoff)
            return
        if job["state"] not in TERMINAL:
            self.store.set_round_state(c, number, job["state"])
            return
        metrics, details = job["metrics"] or {}, job["details"] or {}
        gate = metrics.get("gate") or {}
        activated = bool(details.get("activated")) and job["state"] == "succeeded"
        outcome = {"version": job["version"], "activated": activated, "before": metrics.get("before"),
                   "after": metrics.get("after"), "gate": gate}
        if job["state"] == "failed":
            outcome["reason"] = job["error"] or "failed"
        elif job["state"] == "cancelled":
            outcome["reason"] = "cancelled"
        elif not activated:
            outcome["reason"] = gate.get("reason") or "not activated"
        reference = (metrics.get("after") or {}).get(gate.get("metric", "mrr@10")) if activated else None
        rec = self.store.get_autopilot(c)
        policy = AutopilotPolicy.model_validate(rec["policy"]) if rec else None
        failed = job["state"] == "failed"
        self.store.finish_round(c, number, job["state"], outcome, reference=reference,
                                learned_to=r["feedback_to"] if activated else None, failed=failed,
                                backoff_s=self.backoff(rec, policy) if failed and rec and policy else 0.0)
        log.info("autopilot %s: round %d %s%s", c, number, job["state"],
                 f" ({outcome['reason']})" if "reason" in outcome else "")


def status(store: DocumentStore, collection: str, now: float | None = None, limit: int = 50) -> dict[str, Any] | None:
    """``GET /collections/{c}/autopilot``: the policy, what each trigger counts now, and the rounds."""
    rec = store.get_autopilot(collection)
    if rec is None:
        return None
    now = now or time.time()
    policy = AutopilotPolicy.model_validate(rec["policy"])
    n = counts(store, rec, now)
    rounds = store.list_rounds(collection, limit=limit)
    if not rec["enabled"]:
        state = "disabled"
    elif any(r["state"] in ("queued", "running") for r in rounds[:1]):
        state = "round_in_flight"
    elif rec["backoff_until"] and now < rec["backoff_until"]:
        state = "backing_off"
    else:
        state = "watching"
    out: dict[str, Any] = {
        "collection": collection, "enabled": rec["enabled"], "state": state, "policy": rec["policy"],
        "counts": n.view(), "due": fired(policy, n), "rounds_started": rec["rounds"],
        "failures_in_a_row": rec["failures"], "backoff_until": rec["backoff_until"], "rounds": rounds,
    }
    if out["due"] and state == "watching":
        plan = plan_round(store, rec, policy, n.feedback_max, rec["rounds"] + 1)
        if plan.waiting:
            out["waiting"] = plan.waiting
    return out
