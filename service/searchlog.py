"""Which query each ``search_id`` answered, so a click can be reported as feedback without resending it.

Recording costs the search a dict insert and a deque append: the newest entries stay in a bounded
in-process map, and a background thread copies them to Redis (one pipeline per flush, with a TTL)
so a click that reaches another replica still finds its query. Without Redis, the in-process map
alone answers.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Any

log = logging.getLogger("strop.searchlog")


class SearchLog:
    def __init__(self, conn: Any | None, prefix: str, entries: int = 50_000, ttl_s: int = 86400,
                 flush_s: float = 0.2):
        self.redis = conn
        self.prefix = prefix
        self.entries = entries
        self.ttl_s = ttl_s
        self.flush_s = flush_s
        self._local: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, str, str]] = deque(maxlen=entries)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if conn is not None:
            self._thread = threading.Thread(target=self._flusher, name="searchlog", daemon=True)
            self._thread.start()

    def _key(self, search_id: str) -> str:
        return f"{self.prefix}:search:{search_id}"

    def record(self, collection: str, query: str) -> str:
        # issue time (ms, 11 hex digits) + 48 random bits: a lookup can tell a fresh id still on its way to Redis
        search_id = f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"
        with self._lock:
            self._local[search_id] = (collection, query)
            if len(self._local) > self.entries:
                self._local.popitem(last=False)
        if self.redis is not None:
            self._pending.append((search_id, collection, query))
        return search_id

    def in_flight(self, search_id: str) -> bool:
        """Whether an id another process may have issued is so fresh that its Redis copy may not be written
        yet (worth asking again shortly)."""
        if self.redis is None or len(search_id) != 23:
            return False
        try:
            issued = int(search_id[:11], 16) / 1000
        except ValueError:
            return False
        return -1.0 < time.time() - issued < 10 * self.flush_s + 1.0

    def lookup(self, search_id: str) -> tuple[str, str] | None:
        """(collection, query) of a recent search, or None when unknown or expired. May block on Redis:
        call it off the event loop."""
        with self._lock:
            hit = self._local.get(search_id)
        if hit is not None or self.redis is None:
            return hit
        raw = self.redis.get(self._key(search_id))
        if raw is None:
            return None
        rec = json.loads(raw)
        return rec["c"], rec["q"]

    def _flusher(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        if self.redis is None or not self._pending:
            return
        batch = []
        while self._pending and len(batch) < 5000:
            batch.append(self._pending.popleft())
        try:
            pipe = self.redis.pipeline(transaction=False)
            for sid, c, q in batch:
                pipe.set(self._key(sid), json.dumps({"c": c, "q": q}), ex=self.ttl_s)
            pipe.execute()
        except Exception:  # noqa: BLE001 - Redis away: this process still answers its own searches' clicks
            log.warning("could not share %d search ids through Redis", len(batch))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
