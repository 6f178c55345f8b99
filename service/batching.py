"""Micro-batching: one thread owns each model's forward pass.

Async handlers put a request on a bounded queue and await a future; the model
thread drains whatever queries are waiting (up to ``max_batch``), encodes them in
one forward pass, and hands searches to a small FAISS pool so the next encode can
start while the previous batch is searched. Bulk encodes (ingest, evaluate,
catch-up) go through the same thread in chunks, with queries served between
chunks. A full queue raises ``Overloaded`` (HTTP 429 with Retry-After).

Text queries seen before are answered from a bounded LRU of their embeddings (``query_cache``
entries), without a trip through the model thread; the cache belongs to the batcher, so it lives
and dies with the loaded weights: a swap to a version with other weights starts empty.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from strop.index.encoder import Encoder

log = logging.getLogger("strop.batching")

SearchFn = Callable[[np.ndarray], Any]  # receives the (nq, dim) query block, returns per-query results


class Overloaded(Exception):
    def __init__(self, retry_after: float):
        super().__init__("encode queue is full")
        self.retry_after = retry_after


@dataclass
class _Query:
    text: str
    done: Callable[[Any, BaseException | None], None]
    group: Any = None  # requests with the same group key are searched together
    search: Callable[[np.ndarray], list[Any]] | None = None  # batch search for the group
    enqueued: float = field(default_factory=time.perf_counter)
    tokens: int = -1  # tokens embedded, set before ``done`` when the encoder reports them


class QueryCache:
    """A thread-safe LRU of query text -> embedding (read-only arrays)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> tuple[np.ndarray, int] | None:
        with self._lock:
            v = self._data.get(text)
            if v is not None:
                self._data.move_to_end(text)
            return v

    def put(self, text: str, vec: np.ndarray, tokens: int = -1) -> None:
        v = np.array(vec, dtype=np.float32, copy=True)
        v.setflags(write=False)
        with self._lock:
            self._data[text] = (v, tokens)
            self._data.move_to_end(text)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class _Bulk:
    texts: Sequence[str]
    future: cf.Future


class EncodeBatcher:
    def __init__(
        self,
        encoder: Encoder,
        max_batch: int = 32,
        queue_size: int = 512,
        search_pool: cf.Executor | None = None,
        observe: Callable[[int, float], None] | None = None,
        bulk_tokens: int = 512,
        query_cache: int = 0,
        on_cache: Callable[[bool], None] | None = None,
    ):
        self.encoder = encoder
        self.cache = QueryCache(query_cache) if query_cache > 0 else None
        self.cache_lookups = 0
        self.cache_hits = 0
        self._on_cache = on_cache
        self.max_batch = max_batch
        self._queries: queue.Queue[_Query] = queue.Queue(maxsize=queue_size)
        self._bulk: queue.Queue[_Bulk | None] = queue.Queue(maxsize=max(16, queue_size // 8))
        self._search_pool = search_pool
        self._observe = observe
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._avg_batch_s = 0.05
        # Tiny query batches run on one intra-op thread: splitting a 1-4 query forward pass over
        # both cores costs more in wake-ups than it saves (bench/serving.py, c=1 p50 9.2 -> 7.1 ms),
        # and it leaves the other core to HTTP and FAISS. Bulk and larger batches use all threads.
        self.small_batch = 4
        self.bulk_tokens = bulk_tokens  # estimated tokens per bulk chunk (see _chunk_len)
        self._threads = max(1, torch.get_num_threads())
        self._thread = threading.Thread(target=self._run, name=f"encode:{encoder.name}", daemon=True)
        self._thread.start()

    # -- public, async ------------------------------------------------------------------
    async def encode_query(self, text: str) -> np.ndarray:
        return await self._submit(_Query(text, _noop))

    async def encode_query_tokens(self, text: str) -> tuple[np.ndarray, int]:
        """The query's embedding and how many tokens were embedded (-1 when the encoder does not say)."""
        q = _Query(text, _noop)
        vec = await self._submit(q)
        return vec, q.tokens

    async def search(self, text: str, group: Any, search: Callable[[np.ndarray], list[Any]]) -> Any:
        """Encode ``text`` and run ``search`` over the batch of queries sharing ``group``."""
        return await self._submit(_Query(text, _noop, group, search))

    async def _submit(self, q: _Query) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(value: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)

            loop.call_soon_threadsafe(settle)

        q.done = done
        hit = self._cached(q.text)
        if hit is None:
            self._put_query(q)
            return await fut
        vec, q.tokens = hit
        if q.search is None:
            return vec
        if self._search_pool is not None:
            self._search_pool.submit(_run_search, [q], vec[None, :])
        else:
            await asyncio.to_thread(_run_search, [q], vec[None, :])
        return await fut

    def _cached(self, text: Any) -> tuple[np.ndarray, int] | None:
        if self.cache is None or not isinstance(text, str):
            return None
        found = self.cache.get(text)
        self.cache_lookups += 1
        self.cache_hits += found is not None
        if self._on_cache is not None:
            self._on_cache(found is not None)
        return found

    def _put_query(self, q: _Query) -> None:
        if self._stop.is_set():
            raise RuntimeError("encoder is shutting down")
        try:
            self._queries.put_nowait(q)
        except queue.Full:
            raise Overloaded(self.retry_after()) from None
        self._wake.set()

    async def encode_bulk(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit_bulk(texts))

    # -- public, sync (from worker threads) ---------------------------------------------
    def submit_bulk(self, texts: Sequence[str]) -> cf.Future:
        fut: cf.Future = cf.Future()
        if self._stop.is_set():
            raise RuntimeError("encoder is shutting down")
        try:
            self._bulk.put_nowait(_Bulk(list(texts), fut))
        except queue.Full:
            raise Overloaded(self.retry_after()) from None
        self._wake.set()
        return fut

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking bulk encode through the model thread (call from a worker thread, never the loop)."""
        if not texts:
            return np.empty((0, self.encoder.dim), np.float32)
        while True:
            try:
                return self.submit_bulk(texts).result()
            except Overloaded as e:
                time.sleep(min(e.retry_after, 1.0))

    def retry_after(self) -> float:
        return max(1.0, round(self._queries.qsize() / max(self.max_batch, 1) * self._avg_batch_s, 1))

    @property
    def depth(self) -> int:
        return self._queries.qsize()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the model thread ---------------------------------------------------------------
    def _set_threads(self, n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)  # per calling thread under OpenMP: only this model thread

    def _run(self) -> None:
        bulk: _Bulk | None = None
        bulk_pos = 0
        bulk_out: np.ndarray | None = None
        bulk_order: np.ndarray | None = None
        while True:
            batch = self._drain_queries()
            if batch:
                self._serve_queries(batch)
                continue
            if bulk is None:
                try:
                    bulk = self._bulk.get_nowait()
                except queue.Empty:
                    bulk = None
                if bulk is not None:
                    if bulk.future.set_running_or_notify_cancel() is False:
                        bulk = None
                        continue
                    bulk_pos = 0
                    # texts longest first (less padding per chunk); teacher (query, doc) pairs keep their
                    # order, so one query's candidates share a chunk and a bi-encoder embeds it once
                    bulk_order = np.argsort([-len(t) if isinstance(t, str) else 0 for t in bulk.texts],
                                            kind="stable")
                    bulk_out = np.empty((len(bulk.texts), self.encoder.dim), np.float32)
            if bulk is not None:
                assert bulk_order is not None and bulk_out is not None
                # a chunk of the length-sorted bulk request, then look at queries again
                idx = bulk_order[bulk_pos : bulk_pos + self._chunk_len(bulk.texts, bulk_order, bulk_pos)]
                self._set_threads(self._threads)
                try:
                    vecs = self.encoder.encode([bulk.texts[i] for i in idx], batch_size=self.max_batch).vectors
                    bulk_out[idx] = vecs
                    bulk_pos += len(idx)
                    if bulk_pos >= len(bulk.texts):
                        bulk.future.set_result(bulk_out)
                        bulk = None
                except BaseException as e:  # noqa: BLE001 - report to the waiter
                    bulk.future.set_exception(e)
                    bulk = None
                continue
            if self._stop.is_set():
                self._fail_pending()
                return
            self._wake.wait(0.5)
            self._wake.clear()

    def _chunk_len(self, texts: Sequence[Any], order: np.ndarray, start: int) -> int:
        """How many bulk items the next chunk takes: up to 4 micro-batches, and no more than
        ``bulk_tokens`` estimated tokens, so a query waits at most about one such chunk however long the
        bulk request's texts are (256 inputs of 15k characters used to hold queries for seconds)."""
        limit = getattr(self.encoder, "max_seq_length", 512)
        used = n = 0
        for i in order[start : start + self.max_batch * 4]:
            t = texts[i]
            cost = min(len(t) // 4 + 2, limit) if isinstance(t, str) else limit  # ~4 characters a token
            if n and used + cost > self.bulk_tokens:
                break
            used += cost
            n += 1
        return max(n, 1)

    def _drain_queries(self) -> list[_Query]:
        out: list[_Query] = []
        while len(out) < self.max_batch:
            try:
                out.append(self._queries.get_nowait())
            except queue.Empty:
                break
        return out

    def _serve_queries(self, batch: list[_Query]) -> None:
        t0 = time.perf_counter()
        self._set_threads(1 if len(batch) <= self.small_batch else self._threads)
        try:
            res = self.encoder.encode([q.text for q in batch], batch_size=self.max_batch)
            vecs = res.vectors
            tokens = getattr(res, "tokens", None)
            if tokens is not None:
                for q, n in zip(batch, tokens, strict=True):
                    q.tokens = int(n)
        except Exception:  # noqa: BLE001 - one member's input broke the batch: the others must not fail with it
            batch, vecs = self._encode_alone(batch)
            if not batch:
                return
        dt = time.perf_counter() - t0
        if self.cache is not None:
            for i, q in enumerate(batch):
                if isinstance(q.text, str):
                    self.cache.put(q.text, vecs[i], q.tokens)
        self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * dt
        if self._observe:
            self._observe(len(batch), dt)
        groups: dict[Any, list[int]] = {}
        for i, q in enumerate(batch):
            if q.search is None:
                q.done(vecs[i], None)
            else:
                groups.setdefault(q.group if q.group is not None else ("solo", i), []).append(i)
        for members in groups.values():
            qs = [batch[i] for i in members]
            block = vecs[members]
            if self._search_pool is not None:
                self._search_pool.submit(_run_search, qs, block)
            else:
                _run_search(qs, block)

    def _encode_alone(self, batch: list[_Query]) -> tuple[list[_Query], np.ndarray]:
        """Encode each member of a failed batch by itself: the ones that fail get their own error,
        the rest go on to their search as if the batch had worked."""
        ok: list[_Query] = []
        rows: list[np.ndarray] = []
        for q in batch:
            try:
                res = self.encoder.encode([q.text], batch_size=1)
                rows.append(res.vectors[0])
                tokens = getattr(res, "tokens", None)
                if tokens is not None:
                    q.tokens = int(tokens[0])
                ok.append(q)
            except Exception as e:  # noqa: BLE001 - reported to this request alone
                log.warning("an input failed to encode: %s: %s", type(e).__name__, e)
                q.done(None, e)
        return ok, (np.stack(rows) if rows else np.empty((0, self.encoder.dim), np.float32))

    def _fail_pending(self) -> None:
        while True:
            try:
                self._queries.get_nowait().done(None, RuntimeError("encoder closed"))
            except queue.Empty:
                break
        while True:
            try:
                b = self._bulk.get_nowait()
            except queue.Empty:
                break
            if b is not None and not b.future.done():
                b.future.set_exception(RuntimeError("encoder closed"))


def _run_search(qs: list[_Query], block: np.ndarray) -> None:
    search = qs[0].search
    assert search is not None
    try:
        results = search(block)
    except BaseException as e:  # noqa: BLE001
        for q in qs:
            q.done(None, e)
        return
    for q, r in zip(qs, results, strict=True):
        q.done(r, None)


def _noop(value: Any, exc: BaseException | None) -> None:  # replaced in _submit
    pass
