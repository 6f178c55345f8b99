"""Durable document store: SQLite in WAL mode (one file per data directory, the default) or PostgreSQL.

Every write gets a monotonically increasing sequence number (``seq``) from one
counter shared by all collections, and every stored document revision gets a
row id (``rid``, the FAISS id; equal to the seq of the write that created it).
A write is committed (``synchronous=FULL``) before the caller acknowledges it.

Several processes (API replicas, trainer workers) may open the same store: SQLite serialises
the writers and WAL lets readers proceed; PostgreSQL serves replicas on other hosts
(:mod:`strop.index.sqlbackend`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.index.autopilot_records import AUTOPILOT_SCHEMA, AutopilotRecords
from strop.index.sqlbackend import SCHEMA_VERSION, PostgresBackend, SchemaError, SQLiteBackend, open_backend

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    modality TEXT NOT NULL,
    encoder TEXT NOT NULL,
    index_spec TEXT NOT NULL,
    teacher TEXT,
    teacher_metrics TEXT,
    created_at REAL NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    rid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    text TEXT,
    image BLOB,
    metadata TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents (collection, seq);
CREATE UNIQUE INDEX IF NOT EXISTS documents_rid ON documents (rid);
CREATE TABLE IF NOT EXISTS vectors (
    version TEXT NOT NULL,
    rid INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (version, rid)
);
-- a rewritten or deleted document drops its vectors by rid: without this index each such DELETE scans the
-- whole table (deleting a 14k-document collection took minutes, holding the write lock)
CREATE INDEX IF NOT EXISTS vectors_rid ON vectors (rid);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    query TEXT NOT NULL,
    positive_ids TEXT NOT NULL,
    negative_ids TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_collection ON feedback (collection, id);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    spec TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    details TEXT NOT NULL DEFAULT '{}',
    version TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_collection ON jobs (collection, created_at);
-- versions a job builds on (its snapshot's parent), kept by retention while the job is queued or running
-- the active version of each collection when versions live in object storage (STROP_ARTIFACTS_URL)
CREATE TABLE IF NOT EXISTS active_versions (
    collection TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    activated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS version_pins (
    collection TEXT NOT NULL,
    version TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (collection, owner, version)
);
""" + AUTOPILOT_SCHEMA


class StoreError(Exception):
    """Base class for store errors that map to a 4xx."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


@dataclass
class CollectionRecord:
    name: str
    modality: str
    encoder: str
    index_spec: dict[str, Any]
    teacher: str | None
    teacher_metrics: dict[str, Any] | None
    created_at: float


@dataclass
class Document:
    id: str
    text: str | None = None
    image: bytes | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    rid: int = 0
    seq: int = 0


@dataclass
class Change:
    """One row of the change feed: the document's current state after ``seq``."""

    id: str
    rid: int
    seq: int
    deleted: bool


class DocumentStore(AutopilotRecords):
    """Thread-safe facade over one SQLite file (a connection per thread)."""

    def __init__(self, url: str | Path):
        """``url``: a SQLite file path (or ``sqlite:///path``) or ``postgresql://user@host:port/db``."""
        self.url = str(url)
        self.backend: SQLiteBackend | PostgresBackend = open_backend(self.url)
        self.path = getattr(self.backend, "path", None)  # the SQLite file
        self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or check the one there: a newer strop's schema, or a migration that did not
        finish, is refused at start with what to do."""
        self.backend.script(SCHEMA)
        with self._tx() as db:
            db.execute("INSERT INTO counters (name, value) VALUES ('seq', 0) ON CONFLICT (name) DO NOTHING")
            db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?) ON CONFLICT (name) DO NOTHING",
                       (str(SCHEMA_VERSION),))
            rows = {r[0]: r[1] for r in db.execute("SELECT name, value FROM meta")}
        if "migrating_to" in rows:
            raise SchemaError(f"the store at {self.backend.describe()} holds a schema migration to version "
                              f"{rows['migrating_to']} that did not finish (from version {rows['schema_version']}); "
                              "restore the database from a backup taken before the upgrade, or finish that "
                              "migration with the strop version that started it")
        if int(rows["schema_version"]) > SCHEMA_VERSION:
            raise SchemaError(f"the store at {self.backend.describe()} has schema version {rows['schema_version']}, "
                              f"newer than this strop's ({SCHEMA_VERSION}): upgrade strop")

    # -- plumbing ---------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.backend.name

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What the database raises when it fails (a busy SQLite file, a lost PostgreSQL connection)."""
        return self.backend.errors

    def _conn(self) -> Any:
        return self.backend.conn()

    def _tx(self) -> Any:
        return self.backend.tx()

    def close(self) -> None:
        self.backend.close()

    @staticmethod
    def _next_seqs(db: Any, n: int) -> int:
        """Reserve ``n`` sequence numbers inside the open transaction; returns the first."""
        row = db.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'seq' RETURNING value", (n,)
        ).fetchone()
        return int(row[0]) - n + 1

    # -- collections ------------------------------------------------------------------
    def create_collection(self, name: str, modality: str, encoder: str, index_spec: dict[str, Any]) -> None:
        try:
            with self._tx() as db:
                if db.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
                    raise Conflict(f"collection {name!r} already exists")
                db.execute(
                    "INSERT INTO collections (name, modality, encoder, index_spec, created_at) VALUES (?,?,?,?,?)",
                    (name, modality, encoder, json.dumps(index_spec), time.time()),
                )
        except self.backend.integrity_errors:  # created by another replica at the same moment
            raise Conflict(f"collection {name!r} already exists") from None

    def get_collection(self, name: str) -> CollectionRecord:
        row = self._conn().execute("SELECT * FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"collection {name!r} does not exist")
        return CollectionRecord(
            name=row["name"],
            modality=row["modality"],
            encoder=row["encoder"],
            index_spec=json.loads(row["index_spec"]),
            teacher=row["teacher"],
            teacher_metrics=json.loads(row["teacher_metrics"]) if row["teacher_metrics"] else None,
            created_at=row["created_at"],
        )

    def list_collections(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM collections ORDER BY name")]

    def delete_collection(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"collection {name!r} does not exist")
            rids = [r[0] for r in db.execute("SELECT rid FROM documents WHERE collection = ?", (name,))]
            db.execute("DELETE FROM documents WHERE collection = ?", (name,))
            db.execute("DELETE FROM feedback WHERE collection = ?", (name,))
            db.execute("DELETE FROM version_pins WHERE collection = ?", (name,))
            self.drop_autopilot(db, name)
            db.execute("DELETE FROM active_versions WHERE collection = ?", (name,))
            db.executemany("DELETE FROM vectors WHERE rid = ?", ((r,) for r in rids))

    def next_version_number(self, name: str) -> int:
        with self._tx() as db:
            row = db.execute(
                "UPDATE collections SET next_version = next_version + 1 WHERE name = ? RETURNING next_version",
                (name,),
            ).fetchone()
            if row is None:
                raise NotFound(f"collection {name!r} does not exist")
            return int(row[0])

    def set_teacher(self, name: str, teacher: str | None, metrics: dict[str, Any] | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE collections SET teacher = ?, teacher_metrics = ? WHERE name = ?",
                (teacher, json.dumps(metrics) if metrics is not None else None, name),
            )

    # -- documents --------------------------------------------------------------------
    def upsert(
        self,
        collection: str,
        docs: Sequence[Document],
        vectors: dict[str, np.ndarray] | None = None,
    ) -> list[Document]:
        """Store ``docs`` (new revisions) and, optionally, their vectors per version.

        ``vectors`` maps a version id to an ``(len(docs), dim)`` float32 array in
        the order of ``docs``. Returns the documents with ``rid``/``seq`` filled.
        Everything commits in one transaction.
        """
        if not docs:
            return []
        with self._tx() as db:
            if db.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone() is None:
                raise NotFound(f"collection {collection!r} does not exist")
            first = self._next_seqs(db, len(docs))
            out = []
            for i, d in enumerate(docs):
                seq = first + i
                old = db.execute(
                    "SELECT rid FROM documents WHERE collection = ? AND id = ?", (collection, d.id)
                ).fetchone()
                if old is not None:
                    db.execute("DELETE FROM vectors WHERE rid = ?", (old[0],))
                db.execute(
                    "INSERT INTO documents (collection, id, rid, seq, deleted, text, image, metadata)"
                    " VALUES (?,?,?,?,0,?,?,?) ON CONFLICT (collection, id) DO UPDATE SET rid = excluded.rid,"
                    " seq = excluded.seq, deleted = 0, text = excluded.text, image = excluded.image,"
                    " metadata = excluded.metadata",
                    (collection, d.id, seq, seq, d.text, d.image, json.dumps(d.metadata)),
                )
                out.append(Document(d.id, d.text, d.image, d.metadata, rid=seq, seq=seq))
            for version, arr in (vectors or {}).items():
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                db.executemany(
                    "INSERT INTO vectors (version, rid, vec) VALUES (?,?,?)"
                    " ON CONFLICT (version, rid) DO UPDATE SET vec = excluded.vec",
                    ((version, out[i].rid, arr[i].tobytes()) for i in range(len(out))),
                )
            return out

    def delete(self, collection: str, doc_id: str) -> int:
        """Mark a document deleted (keeps a tombstone row for the change feed); returns the seq."""
        with self._tx() as db:
            row = db.execute(
                "SELECT rid FROM documents WHERE collection = ? AND id = ? AND deleted = 0", (collection, doc_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"document {doc_id!r} does not exist in collection {collection!r}")
            seq = self._next_seqs(db, 1)
            db.execute("DELETE FROM vectors WHERE rid = ?", (row[0],))
            db.execute(
                "UPDATE documents SET deleted = 1, seq = ?, text = NULL, image = NULL, metadata = '{}'"
                " WHERE collection = ? AND id = ?",
                (seq, collection, doc_id),
            )
            return seq

    def get(self, collection: str, doc_id: str) -> Document:
        row = self._conn().execute(
            "SELECT * FROM documents WHERE collection = ? AND id = ? AND deleted = 0", (collection, doc_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"document {doc_id!r} does not exist in collection {collection!r}")
        return _doc(row)

    def get_many(self, collection: str, doc_ids: Iterable[str]) -> dict[str, Document]:
        ids = list(dict.fromkeys(doc_ids))
        out: dict[str, Document] = {}
        for chunk in _chunks(ids, 500):
            q = ",".join("?" * len(chunk))
            for row in self._conn().execute(
                f"SELECT * FROM documents WHERE collection = ? AND deleted = 0 AND id IN ({q})",
                (collection, *chunk),
            ):
                out[row["id"]] = _doc(row)
        return out

    def by_rids(self, rids: Sequence[int], with_text: bool = True, with_image: bool = False) -> dict[int, Document]:
        cols = "id, rid, seq, metadata" + (", text" if with_text else "") + (", image" if with_image else "")
        out: dict[int, Document] = {}
        for chunk in _chunks(list(rids), 500):
            q = ",".join("?" * len(chunk))
            for row in self._conn().execute(
                f"SELECT {cols} FROM documents WHERE deleted = 0 AND rid IN ({q})", tuple(chunk)
            ):
                out[row["rid"]] = Document(
                    row["id"],
                    row["text"] if with_text else None,
                    row["image"] if with_image else None,
                    json.loads(row["metadata"]),
                    rid=row["rid"],
                    seq=row["seq"],
                )
        return out

    def count(self, collection: str) -> int:
        return int(
            self._conn()
            .execute("SELECT COUNT(*) FROM documents WHERE collection = ? AND deleted = 0", (collection,))
            .fetchone()[0]
        )

    def watermark(self) -> int:
        """The highest sequence number handed out so far (all collections)."""
        return int(self._conn().execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0])

    def iter_documents(
        self, collection: str, max_seq: int | None = None, batch: int = 2000, with_images: bool = True
    ) -> Iterator[Document]:
        """Live documents in rid order, optionally only those written at or before ``max_seq``."""
        last = -1
        cols = "*" if with_images else "id, rid, seq, text, NULL AS image, metadata"
        while True:
            rows = self._conn().execute(
                f"SELECT {cols} FROM documents WHERE collection = ? AND deleted = 0 AND rid > ?"
                " AND seq <= ? ORDER BY rid LIMIT ?",
                (collection, last, max_seq if max_seq is not None else 2**62, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield _doc(r)
            last = rows[-1]["rid"]

    def documents_in_rids(self, collection: str, lo: int, hi: int, max_seq: int) -> list[Document]:
        """Live documents with ``lo <= rid <= hi`` written at or before ``max_seq`` (a shard of a snapshot), text
        and metadata only."""
        rows = self._conn().execute(
            "SELECT id, rid, seq, text, NULL AS image, metadata FROM documents WHERE collection = ? AND deleted = 0"
            " AND rid >= ? AND rid <= ? AND seq <= ? ORDER BY rid", (collection, lo, hi, max_seq)).fetchall()
        return [_doc(r) for r in rows]

    def list_documents(self, collection: str, after: str = "", limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """(id, metadata) of live documents in id order, starting after ``after`` (keyset paging)."""
        rows = self._conn().execute(
            "SELECT id, metadata FROM documents WHERE collection = ? AND deleted = 0 AND id > ? ORDER BY id LIMIT ?",
            (collection, after, limit),
        ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def live_rids(self, collection: str) -> dict[str, int]:
        return {
            r[0]: r[1]
            for r in self._conn().execute(
                "SELECT id, rid FROM documents WHERE collection = ? AND deleted = 0", (collection,)
            )
        }

    def changes_since(self, collection: str, seq: int, limit: int = 10000) -> list[Change]:
        rows = self._conn().execute(
            "SELECT id, rid, seq, deleted FROM documents WHERE collection = ? AND seq > ? ORDER BY seq LIMIT ?",
            (collection, seq, limit),
        ).fetchall()
        return [Change(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def filter_rids(self, collection: str, where: dict[str, Any]) -> np.ndarray:
        """Row ids of live documents whose metadata equals ``where`` on every key (AND)."""
        if self.dialect == "postgresql":  # jsonb equality: types must match (true is not 1), 1 equals 1.0
            sql = "SELECT rid FROM documents WHERE collection = ? AND deleted = 0" + "".join(
                " AND (metadata::jsonb -> ?) = ?::jsonb" for _ in where)
            params: list[Any] = [collection]
            for key, value in where.items():
                params += [key, json.dumps(value)]
            return np.fromiter((r[0] for r in self._conn().execute(sql, params)), dtype=np.int64)
        clauses = []
        params = [collection]
        for key, value in where.items():
            path = "$." + json.dumps(key)
            if isinstance(value, bool):
                clauses.append("json_extract(metadata, ?) = ?")
                params += [path, 1 if value else 0]
                clauses.append("json_type(metadata, ?) = ?")
                params += [path, "true" if value else "false"]
            elif value is None:
                clauses.append("json_type(metadata, ?) = 'null'")
                params.append(path)
            elif isinstance(value, (int, float, str)):
                clauses.append("json_extract(metadata, ?) = ?")
                params += [path, value]
                clauses.append("json_type(metadata, ?) = ?")
                params += [path, "text" if isinstance(value, str) else ("integer" if isinstance(value, int) else "real")]
            else:
                clauses.append("json_extract(metadata, ?) = json(?)")
                params += [path, json.dumps(value)]
        sql = "SELECT rid FROM documents WHERE collection = ? AND deleted = 0"
        if clauses:
            sql += " AND " + " AND ".join(clauses)
        return np.fromiter((r[0] for r in self._conn().execute(sql, params)), dtype=np.int64)

    # -- vectors (per version, for rows written after a version's watermark) ------------
    def put_vectors(self, version: str, rids: Sequence[int], vecs: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        with self._tx() as db:
            db.executemany(
                "INSERT INTO vectors (version, rid, vec) VALUES (?,?,?)"
                " ON CONFLICT (version, rid) DO UPDATE SET vec = excluded.vec",
                ((version, int(r), vecs[i].tobytes()) for i, r in enumerate(rids)),
            )

    def get_vectors(self, version: str, rids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for chunk in _chunks(list(rids), 500):
            q = ",".join("?" * len(chunk))
            for rid, blob in self._conn().execute(
                f"SELECT rid, vec FROM vectors WHERE version = ? AND rid IN ({q})", (version, *chunk)
            ):
                v = np.frombuffer(blob, dtype=np.float32)
                if v.shape[0] == dim:
                    out[int(rid)] = v
        return out

    def drop_vectors(self, version: str, collection: str | None = None) -> int:
        """Delete a version's vector rows; returns how many. Version ids are per collection (``v0003`` exists
        in many), so pass ``collection`` to touch only that collection's rows."""
        with self._tx() as db:
            if collection is None:
                return db.execute("DELETE FROM vectors WHERE version = ?", (version,)).rowcount
            return db.execute(
                "DELETE FROM vectors WHERE version = ? AND rid IN (SELECT rid FROM documents WHERE collection = ?)",
                (version, collection),
            ).rowcount

    def vector_usage(self, collection: str) -> dict[str, tuple[int, int]]:
        """Per version of ``collection`` that has vector rows: (rows, bytes of their vectors)."""
        # driven from the vector rows (few: only writes after a version was built), each checked against its
        # document by rid: a join driven from documents read all of the collection's rows (22 ms at 100k)
        rows = self._conn().execute(
            "SELECT v.version, COUNT(*), COALESCE(SUM(LENGTH(v.vec)), 0) FROM vectors v WHERE EXISTS"
            " (SELECT 1 FROM documents d WHERE d.rid = v.rid AND d.collection = ?) GROUP BY v.version",
            (collection,),
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    # -- the active pointer (versions in object storage) ------------------------------------
    def set_active(self, collection: str, version: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO active_versions (collection, version, activated_at) VALUES (?,?,?)"
                       " ON CONFLICT (collection) DO UPDATE SET version = excluded.version,"
                       " activated_at = excluded.activated_at", (collection, version, time.time()))

    def get_active(self, collection: str) -> tuple[str, float] | None:
        row = self._conn().execute("SELECT version, activated_at FROM active_versions WHERE collection = ?",
                                   (collection,)).fetchone()
        return (row[0], float(row[1])) if row else None

    # -- version pins (what running jobs build on) --------------------------------------
    def pin_version(self, collection: str, version: str, owner: str) -> None:
        """Record that ``owner`` (a job id) builds on ``version``: retention keeps it while the job is live."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO version_pins (collection, version, owner, created_at) VALUES (?,?,?,?)"
                " ON CONFLICT (collection, owner, version) DO UPDATE SET created_at = excluded.created_at",
                (collection, version, owner, time.time()),
            )

    def unpin_versions(self, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM version_pins WHERE owner = ?", (owner,))

    def pinned_versions(self, collection: str, stale_s: float = 600.0) -> set[str]:
        """Versions of ``collection`` pinned by a live owner, dropping the pins of dead ones.

        An owner that is a job is live while it is queued or running and its heartbeat (or start) is
        younger than ``stale_s``; a finished, failed or long-silent job's pins are deleted here. An owner
        that is not a job stays pinned until :meth:`unpin_versions`.
        """
        now = time.time()
        live: set[str] = set()
        dead: list[str] = []
        for r in self._conn().execute(
            "SELECT p.version, p.owner, j.state, COALESCE(j.heartbeat_at, j.started_at, j.created_at),"
            " j.id IS NOT NULL FROM version_pins p LEFT JOIN jobs j ON j.id = p.owner WHERE p.collection = ?",
            (collection,),
        ):
            version, owner, state, beat, is_job = r
            if not is_job or (state in ("queued", "running") and beat is not None and now - beat < stale_s):
                live.add(version)
            else:
                dead.append(owner)
        if dead:
            with self._tx() as db:
                db.executemany("DELETE FROM version_pins WHERE collection = ? AND owner = ?",
                               ((collection, o) for o in set(dead)))
        return live

    # -- feedback ---------------------------------------------------------------------
    def add_feedback(self, collection: str, query: str, positive_ids: list[str], negative_ids: list[str]) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO feedback (collection, query, positive_ids, negative_ids, created_at) VALUES (?,?,?,?,?)"
                " RETURNING id",
                (collection, query, json.dumps(positive_ids), json.dumps(negative_ids), time.time()),
            ).fetchone()
            return int(row[0])

    def list_feedback(self, collection: str) -> list[dict[str, Any]]:
        return [
            {
                "query": r["query"],
                "positive_ids": json.loads(r["positive_ids"]),
                "negative_ids": json.loads(r["negative_ids"]),
            }
            for r in self._conn().execute(
                "SELECT * FROM feedback WHERE collection = ? ORDER BY id", (collection,)
            )
        ]

    # -- jobs ---------------------------------------------------------------------------
    def create_job(self, job_id: str, collection: str, kind: str, spec: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, collection, kind, state, stage, spec, created_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, collection, kind, "queued", "queued", json.dumps(spec), time.time()),
            )

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols, vals = [], []
        for k, v in fields.items():
            if k not in {"state", "stage", "progress", "metrics", "details", "version", "error",
                         "started_at", "finished_at", "heartbeat_at"}:
                raise ValueError(f"unknown job field {k}")
            cols.append(f"{k} = ?")
            vals.append(json.dumps(v) if isinstance(v, (dict, list)) else v)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {', '.join(cols)} WHERE id = ?", (*vals, job_id))

    def finish_job_if(self, job_id: str, from_states: Sequence[str], **fields: Any) -> bool:
        """Compare-and-set a job's state: update only while it is in one of ``from_states``."""
        cols, vals = [], []
        for k, v in fields.items():
            cols.append(f"{k} = ?")
            vals.append(json.dumps(v) if isinstance(v, (dict, list)) else v)
        q = ",".join("?" * len(from_states))
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(cols)} WHERE id = ? AND state IN ({q})", (*vals, job_id, *from_states)
            )
            return cur.rowcount > 0

    def get_job(self, job_id: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return _job(row)

    def list_jobs(self, collection: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if collection is None:
            rows = self._conn().execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self._conn().execute(
                "SELECT * FROM jobs WHERE collection = ? ORDER BY created_at DESC LIMIT ?", (collection, limit)
            )
        return [_job(r) for r in rows]


def _doc(row: Any) -> Document:
    return Document(
        id=row["id"],
        text=row["text"],
        image=row["image"],
        metadata=json.loads(row["metadata"]),
        rid=row["rid"],
        seq=row["seq"],
    )


def _job(row: Any) -> dict[str, Any]:
    d = dict(row)
    for k in ("spec", "progress", "metrics", "details"):
        d[k] = json.loads(d[k]) if d[k] else {}
    return d


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
