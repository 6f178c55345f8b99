"""Teacher embeddings on disk, shared by the API process and every worker.

A bi-encoder teacher (all-mpnet-base-v2 on two CPU cores: about 0.1 s per stdlib function) spends
nearly all of a job's teacher stage embedding documents, and every job on a collection asks for
mostly the same ones: each mining round of each job, every rerank of an evaluation. The in-memory
LRU of ``BiEncoderScorer`` dies with the process, and rq runs every job in a fresh work horse, so
without this file each job paid the whole cold pass again (622 s for one stdlib mining round).

Layout: one SQLite file per *model fingerprint* (the weights' bytes, precision and sequence length,
so a retrained or re-quantised teacher never reads another's vectors) under
``<data_dir>/teacher-cache/``; rows are (blake2b-128 of the text, float32 vector). WAL mode, so the
API's rerank thread and a worker read and write it at once. Bounded: past ``max_entries`` rows the
oldest-written go first (``STROP_TEACHER_CACHE_ENTRIES``, default 200,000, about 0.6 GB at 768-d;
0 turns the disk cache off). A cache must never fail a search or a job: every SQLite error is
logged and answered as a miss, and a damaged file is set aside and started afresh.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strop.index.sqlbackend import _enable_wal

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 200_000
TEACHER_CACHE_DIR = "teacher-cache"  # under the data dir
_SAMPLE = 1 << 20  # bytes read from each end of a weights file for its fingerprint
_WEIGHTS = (".safetensors", ".bin", ".pt", ".onnx")


@dataclass(frozen=True)
class DiskCache:
    """Where teachers keep document embeddings on disk, and how many (``Settings.teacher_disk_cache``)."""

    dir: Path
    max_entries: int = DEFAULT_MAX_ENTRIES


def model_fingerprint(path: str | Path, *parts: object) -> str:
    """A content fingerprint of a model directory (or a hub name) plus ``parts`` (precision, length...).

    Reads each weights file's size and its first and last MiB, and the small JSON configs whole:
    cheap on a 420 MB checkpoint, and a copy of the same model on another volume gets the same key."""
    h = hashlib.blake2b(digest_size=12)
    p = Path(path)
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            rel = str(f.relative_to(p)).encode()
            if f.suffix in _WEIGHTS:
                size = f.stat().st_size
                h.update(rel + b"\0" + str(size).encode())
                with f.open("rb") as fh:
                    h.update(fh.read(_SAMPLE))
                    if size > 2 * _SAMPLE:
                        fh.seek(-_SAMPLE, os.SEEK_END)
                        h.update(fh.read(_SAMPLE))
            elif f.suffix == ".json" and f.stat().st_size < (1 << 20):
                h.update(rel + b"\0" + f.read_bytes())
    else:
        h.update(str(path).encode())
    for part in parts:
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """Persistent text -> vector map for one model; see the module docstring."""

    def __init__(self, path: str | Path, dim: int, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.path = Path(path)
        self.dim = dim
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._open()
            except sqlite3.DatabaseError as e:  # not a database (a damaged file): set it aside, start afresh
                if "not a database" not in str(e) and "malformed" not in str(e):
                    raise
                aside = self.path.with_name(f"{self.path.name}.damaged-{os.getpid()}")
                log.warning("teacher cache %s is damaged (%s); moved to %s", self.path, e, aside.name)
                self.path.rename(aside)
                self._conn = self._open()
        except (sqlite3.Error, OSError) as e:
            log.warning("teacher cache %s unavailable (%s); embedding without it", self.path, e)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost tail after a power cut is only a few misses
            conn.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def enabled(self) -> bool:
        return self._conn is not None and self.max_entries > 0

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        if not self.enabled or not keys:
            return {}
        out: dict[bytes, np.ndarray] = {}
        size = self.dim * 4
        try:
            with self._lock:
                assert self._conn is not None
                for start in range(0, len(keys), 500):  # under SQLite's bound-parameter limit
                    chunk = keys[start : start + 500]
                    q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
                    for k, v in self._conn.execute(q, chunk):
                        if len(v) == size:  # a row of another width (a damaged file) is a miss
                            out[bytes(k)] = np.frombuffer(v, np.float32).copy()
        except sqlite3.Error as e:
            log.warning("teacher cache read failed (%s); treating as misses", e)
            return {}
        self.hits += len(out)
        self.misses += len(keys) - len(out)
        return out

    def put(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        if not self.enabled:
            return
        rows = [(k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in items]
        if not rows:
            return
        try:
            with self._lock:
                assert self._conn is not None
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", rows)
                    self._evict()
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            log.warning("teacher cache write failed (%s); the vectors are only kept in memory", e)

    def _evict(self) -> None:
        assert self._conn is not None
        (n,) = self._conn.execute("SELECT COUNT(*) FROM emb").fetchone()
        if n > self.max_entries:  # FIFO: rowids grow with insertion
            self._conn.execute("DELETE FROM emb WHERE rowid IN (SELECT rowid FROM emb ORDER BY rowid LIMIT ?)",
                               (n - self.max_entries,))

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
