"""The job queue (rq on Redis) and version announcements (Redis pub/sub), as the API sees them."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from strop.index.store import DocumentStore
from strop.trainer.contract import TERMINAL, announce, cancel_key, events_channel, queue_name
from strop.trainer.queueing import reconcile_job, submit_job

log = logging.getLogger("strop.queue")


class JobQueue:
    def __init__(self, url: str, prefix: str, store: DocumentStore):
        self.url = url
        self.prefix = prefix
        self.store = store
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self.queue = Queue(queue_name(prefix), connection=self.redis)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, collection: str, kind: str, spec: dict[str, Any]) -> str:
        return submit_job(self.store, self.queue, self.prefix, collection, kind, spec)

    def get(self, job_id: str) -> dict[str, Any]:
        return self.reconcile(self.store.get_job(job_id))

    def reconcile(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A running job whose worker vanished (kill -9, lost machine) is failed, not running forever."""
        return reconcile_job(self.store, self.redis, rec)

    def cancel(self, job_id: str) -> dict[str, Any]:
        rec = self.store.get_job(job_id)
        if rec["state"] in TERMINAL:
            return rec
        self.redis.set(cancel_key(self.prefix, job_id), "1", ex=86400)
        if self.store.finish_job_if(job_id, ("queued",), state="cancelled", stage="cancelled",
                                    finished_at=time.time()):
            try:
                Job.fetch(job_id, connection=self.redis).cancel()
            except (NoSuchJobError, InvalidJobOperation):
                pass
            return self.store.get_job(job_id)
        # running: the worker's training process checks the flag between steps; stop its work horse too
        try:
            send_stop_job_command(self.redis, job_id)
        except (NoSuchJobError, InvalidJobOperation):
            pass
        self.store.finish_job_if(job_id, ("running",), state="cancelled", finished_at=time.time())
        return self.store.get_job(job_id)

    # -- events ---------------------------------------------------------------------------
    def announce(self, collection: str, version: str) -> None:
        announce(self.redis, self.prefix, collection, version)

    def listen(self, manager: Any, stop: threading.Event) -> None:
        """Follow version announcements; reconnects, and polling covers anything missed meanwhile."""
        while not stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(events_channel(self.prefix))
                while not stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if not msg:
                        continue
                    try:
                        event = json.loads(msg["data"])
                        st = manager.state(event["collection"])
                        if st.served.id != event["version"] and st.vstore.active() == event["version"]:
                            manager.activate(event["collection"], event["version"], write_pointer=False)
                    except Exception:
                        log.exception("bad event %r", msg)
                pubsub.close()
            except Exception:  # noqa: BLE001 - connection dropped or closed at shutdown
                if stop.is_set():
                    return
                log.warning("event subscription dropped; reconnecting (polling covers the gap)")
                stop.wait(1.0)

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:
            pass
