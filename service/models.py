"""Loaded encoders, shared by every collection version that uses the same weights.

Each loaded model gets exactly one ``EncodeBatcher`` (one thread owns its forward
pass). Models are reference counted: when the last version using one is swapped
out, its batcher is closed after a grace period so in-flight requests finish.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strop.index.embcache import DiskCache
from strop.index.encoder import Encoder, resolve_spec
from strop.index.image.encoder import ImageEncoder, is_image_spec
from strop.index.settings import default_device
from strop.service.batching import EncodeBatcher

log = logging.getLogger("strop.models")


@dataclass
class LoadedModel:
    key: str
    encoder: Encoder
    batcher: EncodeBatcher
    refs: int = 0


def _one_openmp_thread() -> None:
    """FAISS searches run two at a time in this pool, beside the encode thread, so each takes one OpenMP thread.
    The setting is per calling thread (the API's own call at start-up does not reach pool threads): left at
    the default, a one-query search over a 2,000-vector flat index woke a second OpenMP thread every time
    and took a quarter of the search path's CPU samples under load (py-spy)."""
    from strop.index.faiss_index import set_threads

    set_threads(1)


class ModelRegistry:
    def __init__(
        self,
        precision: str = "auto",
        device: str | None = None,
        max_batch: int = 32,
        queue_size: int = 512,
        observe: Callable[[int, float], None] | None = None,
        grace_s: float = 30.0,
        teacher_disk_cache: DiskCache | None = None,
        bulk_tokens: int = 512,
        backend: str = "torch",
        backend_cache: str | None = None,
        query_cache: int = 0,
        on_cache: Callable[[bool], None] | None = None,
    ):
        self.on_cache = on_cache
        self.bulk_tokens = bulk_tokens
        self.backend = backend
        self.backend_cache = backend_cache
        self.query_cache = query_cache
        self.teacher_disk_cache = teacher_disk_cache
        self.precision = precision
        self.device = device or default_device()
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.observe = observe
        self.grace_s = grace_s
        self.search_pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="faiss",
                                                 initializer=_one_openmp_thread)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def key(self, source: str) -> str:
        return source if is_image_spec(source) else resolve_spec(source)

    def acquire(self, source: str) -> LoadedModel:
        """Load (or share) the encoder at ``source`` and take a reference to it."""

        def load() -> tuple[Any, EncodeBatcher]:
            if is_image_spec(source):
                encoder: Any = ImageEncoder.load(source, self.precision, self.device)
            else:
                encoder = Encoder.load(source, precision=self.precision, device=self.device, backend=self.backend,
                                       cache_dir=self.backend_cache)
            log.info("loaded encoder %s (%s %s, dim %d)", source, getattr(encoder, "backend", "torch"),
                     encoder.precision, encoder.dim)
            return encoder, EncodeBatcher(encoder, self.max_batch, self.queue_size, self.search_pool, self.observe,
                                          bulk_tokens=self.bulk_tokens,
                                          query_cache=0 if is_image_spec(source) else self.query_cache,
                                          on_cache=self.on_cache)

        return self._acquire(self.key(source), load)

    def acquire_teacher(self, source: str) -> LoadedModel:
        """Load (or share) a teacher scorer behind its own micro-batching thread."""
        from strop.index.teacher import ScorerAdapter, load_teacher

        def load() -> tuple[Any, EncodeBatcher]:
            adapter = ScorerAdapter(load_teacher(source, self.device, self.precision, self.teacher_disk_cache))
            return adapter, EncodeBatcher(adapter, self.max_batch, self.queue_size, None, None)  # type: ignore[arg-type]

        return self._acquire("teacher:" + source, load)

    def _acquire(self, key: str, load: Callable[[], tuple[Any, EncodeBatcher]]) -> LoadedModel:
        with self._lock:
            lm = self._models.get(key)
            if lm is not None:
                lm.refs += 1
                return lm
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per key, other callers wait and share it
            with self._lock:
                lm = self._models.get(key)
                if lm is not None:
                    lm.refs += 1
                    return lm
            model, batcher = load()
            lm = LoadedModel(key, model, batcher, refs=1)
            with self._lock:
                self._models[key] = lm
            return lm

    def release(self, lm: LoadedModel) -> None:
        with self._lock:
            lm.refs -= 1
            if lm.refs > 0:
                return
        timer = threading.Timer(self.grace_s, self._close_if_unused, args=(lm,))
        timer.daemon = True
        timer.start()

    def _close_if_unused(self, lm: LoadedModel) -> None:
        with self._lock:
            if lm.refs > 0 or self._models.get(lm.key) is not lm:
                return
            del self._models[lm.key]
        lm.batcher.close()
        log.info("unloaded encoder %s", lm.key)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for lm in models:
            lm.batcher.close()
        self.search_pool.shutdown(wait=False, cancel_futures=True)
