"""Autopilot over three phases of feedback, with and without the measures against forgetting.

Everything goes through a live `strop serve` (embedded Redis, a worker running the autopilot
scheduler) and its REST API. The corpus is the CPython standard library's functions from three
groups of modules; feedback arrives in three phases, one group each (docstring summary -> the
function, as a user's click would report it). Two collections hold the same documents and the
packaged MiniLM:

* ``guarded``: the autopilot's defaults: replay of earlier rounds' pairs, distillation from the
  previous encoder on them, and every earlier round's yardstick in the gate (max_regression 0.01).
* ``plain``: the same rounds without them (no replay, no distillation, max_regression 1.0): each
  round is an ordinary feedback job on the new data alone.

Both policies start a round after ``--per-phase`` feedback events and hold 30% of the feedback
queries out as the yardstick of the round that first sees them. After every round the bench
evaluates each phase's yardstick (the same held-out queries the rounds were judged on) on both
collections.

    python -m bench.autopilot                   # 3 phases x 400 events (about an hour on 2 CPU cores)
    python -m bench.autopilot --per-phase 150 --quick
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import machine_line, table
from bench.codesearch import start_server
from bench.datasets import stdlib_pairs
from strop.client import Client
from strop.trainer.autopilot import on_yardstick

PHASES: dict[str, tuple[str, ...]] = {
    "mail & web": ("email", "mailbox", "http", "urllib", "imaplib", "wsgiref", "nntplib", "ftplib", "smtplib",
                   "xmlrpc", "cgi", "poplib"),
    "GUI": ("tkinter", "turtle", "turtledemo", "idlelib"),
    "concurrency": ("asyncio", "multiprocessing", "threading", "concurrent", "subprocess", "socket", "ssl",
                    "selectors", "queue", "sched"),
}
HOLDOUT = 0.3
CONFIGS: dict[str, dict[str, Any]] = {
    "guarded": {},  # the defaults
    "plain": {"replay": {"max_pairs": 0, "distill_weight": 0.0}, "job": {"gate": {"max_regression": 1.0}}},
}


def top(module_or_id: str) -> str:
    return module_or_id.split(".")[0]


def phase_data(per_phase: int, seed: int) -> tuple[list[dict], list[list[dict]], dict[str, dict]]:
    """The corpus (every function of the three groups) and each phase's feedback events."""
    data = stdlib_pairs()
    groups = {m: name for name, mods in PHASES.items() for m in mods}
    docs = [{"id": d["id"], "text": d["text"], "metadata": data["contexts"][d["id"]]}
            for d in data["corpus_all"] if top(d["id"]) in groups]
    rng = random.Random(seed)
    phases = []
    for name in PHASES:
        pairs = [p for p in data["train"] + data["test"] if groups.get(top(p["module"])) == name]
        seen: set[str] = set()
        uniq = [p for p in pairs if not (p["query"] in seen or seen.add(p["query"]))]  # one event per query
        rng.shuffle(uniq)
        phases.append(uniq[:per_phase])
    return docs, phases, data["sizes"]


def yardstick(events: list[dict]) -> list[dict]:
    return [{"query": p["query"], "positive_ids": [p["positive_id"]]} for p in events
            if on_yardstick(p["query"], HOLDOUT)]


def policy(config: str, per_phase: int, epochs: int) -> dict[str, Any]:
    body: dict[str, Any] = {"triggers": {"min_feedback": per_phase}, "yardstick": {"holdout": HOLDOUT},
                            "job": {"epochs": epochs}}
    extra = CONFIGS[config]
    if "replay" in extra:
        body["replay"] = extra["replay"]
    body["job"].update(extra.get("job", {}))
    return body


def wait_round(c: Client, name: str, number: int, timeout: float) -> dict:
    """The round once it has ended and, when it was activated, once the server serves its version."""
    end = time.time() + timeout
    while time.time() < end:
        view = c.get_autopilot(name)
        done = [r for r in view["rounds"] if r["round"] == number and r["state"] not in ("queued", "running")]
        if done:
            version = done[0]["outcome"].get("version") if done[0]["outcome"].get("activated") else None
            if version is None or c.get_collection(name)["version"]["id"] == version:
                return done[0]
        time.sleep(1)
    raise TimeoutError(f"{name}: round {number} did not finish in {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-phase", type=int, default=400, help="feedback events per phase (= min_feedback)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="guarded,plain")
    ap.add_argument("--quick", action="store_true", help="one epoch")
    ap.add_argument("--round-timeout", type=float, default=3600)
    args = ap.parse_args()
    configs = args.configs.split(",")
    epochs = 1 if args.quick else args.epochs
    docs, phases, sizes = phase_data(args.per_phase, args.seed)
    sticks = [yardstick(p) for p in phases]
    print(machine_line(), flush=True)
    print(f"corpus: {len(docs)} functions; events per phase: {[len(p) for p in phases]}; yardstick queries: "
          f"{[len(s) for s in sticks]}", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="strop-autopilot-")) / "data"
    import os

    os.environ.setdefault("STROP_AUTOPILOT_TICK_S", "1")
    server, url = start_server(data_dir)
    scores: dict[str, list[list[float]]] = {c: [] for c in configs}
    rounds: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        with Client(url, timeout=600) as c:
            for name in configs:
                c.create_collection(name, modality="code")
                t = time.perf_counter()
                c.upsert(name, docs)
                print(f"{name}: {len(docs)} documents in {time.perf_counter() - t:.0f}s", flush=True)
                c.set_autopilot(name, policy(name, args.per_phase, epochs))
                scores[name].append([c.evaluate(name, s)["mrr@10"] for s in sticks])
            for k, events in enumerate(phases, start=1):
                for name in configs:
                    for p in events:
                        c.feedback(name, p["query"], [p["positive_id"]])
                for name in configs:
                    t = time.perf_counter()
                    r = wait_round(c, name, k, args.round_timeout)
                    r["wall_s"] = round(time.perf_counter() - t)
                    rounds[name].append(r)
                    scores[name].append([c.evaluate(name, s)["mrr@10"] for s in sticks])
                    print(f"{name}: round {k} {r['state']} ({r['outcome'].get('reason', 'activated')}); "
                          f"phase MRR@10 {[round(x, 4) for x in scores[name][-1]]}", flush=True)
            for name in configs:
                view = c.get_autopilot(name)
                jobs = c.list_jobs(name)
                print(f"{name}: rounds started {view['rounds_started']}, jobs {len(jobs)}", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    report(configs, scores, rounds, sticks)


def report(configs: list[str], scores: dict[str, list[list[float]]], rounds: dict[str, list[dict]],
           sticks: list[list[dict]]) -> None:
    names = list(PHASES)
    rows = []
    for name in configs:
        for k, row in enumerate(scores[name]):
            r = rounds[name][k - 1] if k else None
            rows.append([name, "before any round" if not k else f"after round {k} ({r['state']})",
                         *[f"{x:.4f}" for x in row]])
    print(table(["config", "when", *[f"{n} ({len(s)} q)" for n, s in zip(names, sticks, strict=True)]], rows))
    summary = []
    for name in configs:
        s = scores[name]
        for k in range(1, len(s)):
            own = s[k][k - 1] - s[k - 1][k - 1]
            kept = s[-1][k - 1] - s[k][k - 1]
            summary.append([name, names[k - 1], f"{own:+.4f}", f"{kept:+.4f}",
                            rounds[name][k - 1]["state"], rounds[name][k - 1]["wall_s"]])
    print(table(["config", "phase", "lift by its own round", "change from then to the end", "round", "round s"],
                summary))


if __name__ == "__main__":
    main()
