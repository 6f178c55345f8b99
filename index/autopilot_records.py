"""What the store keeps for autopilot: each collection's policy with its trigger marks, and its rounds.

A round is claimed in one transaction that checks the number of rounds started so far and that no
round is in flight, so two schedulers (a lost leader that has not noticed yet, say) can never start
two rounds for one collection: the second claim finds the count moved and does nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

AUTOPILOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS autopilot (
    collection TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    rounds INTEGER NOT NULL DEFAULT 0,          -- rounds started so far: the claim's compare-and-set
    feedback_mark INTEGER NOT NULL DEFAULT 0,   -- last feedback id when the last round started (or the policy)
    seq_mark INTEGER NOT NULL DEFAULT 0,        -- store watermark then
    learned_mark INTEGER NOT NULL DEFAULT 0,    -- feedback up to this id is learnt by an activated round
    marked_at REAL NOT NULL,                    -- when the marks were set
    failures INTEGER NOT NULL DEFAULT 0,        -- failed rounds in a row
    backoff_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS autopilot_rounds (
    collection TEXT NOT NULL,
    round INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    triggers TEXT NOT NULL,
    feedback_from INTEGER NOT NULL,
    feedback_to INTEGER NOT NULL,
    yardstick TEXT NOT NULL,
    reference REAL,
    outcome TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (collection, round)
);
"""

IN_FLIGHT = ("queued", "running")


class AutopilotRecords:
    """Autopilot persistence, mixed into ``DocumentStore`` (same file, same transactions)."""

    def _tx(self) -> Any:  # provided by DocumentStore
        raise NotImplementedError

    def _conn(self) -> Any:
        raise NotImplementedError

    # -- policy -----------------------------------------------------------------------
    def put_autopilot(self, collection: str, policy: dict[str, Any], enabled: bool = True) -> None:
        """Create or replace the policy. Marks are kept on a replacement; a new policy counts feedback and
        document changes from now."""
        now = time.time()
        with self._tx() as db:
            fb = db.execute("SELECT COALESCE(MAX(id), 0) FROM feedback WHERE collection = ?", (collection,)).fetchone()[0]
            seq = db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0]
            db.execute(
                "INSERT INTO autopilot (collection, policy, enabled, feedback_mark, seq_mark, marked_at, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (collection) DO UPDATE SET policy = excluded.policy,"
                " enabled = excluded.enabled, failures = 0, backoff_until = NULL, updated_at = excluded.updated_at",
                (collection, json.dumps(policy), int(enabled), fb, seq, now, now, now),
            )

    def disable_autopilot(self, collection: str) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE autopilot SET enabled = 0, updated_at = ? WHERE collection = ?",
                              (time.time(), collection)).rowcount > 0

    def get_autopilot(self, collection: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM autopilot WHERE collection = ?", (collection,)).fetchone()
        return _policy_row(row) if row is not None else None

    def enabled_autopilots(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM autopilot WHERE enabled = 1 ORDER BY collection").fetchall()
        return [_policy_row(r) for r in rows]

    # -- trigger counts -------------------------------------------------------------------
    def feedback_count_since(self, collection: str, after_id: int) -> tuple[int, int]:
        """(feedback events with id > ``after_id``, the highest feedback id)."""
        row = self._conn().execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM feedback WHERE collection = ? AND id > ?",
            (collection, after_id)).fetchone()
        return int(row[0]), max(int(row[1]), after_id)

    def changes_count_since(self, collection: str, seq: int) -> int:
        """Documents written, rewritten or deleted after ``seq``."""
        return int(self._conn().execute(
            "SELECT COUNT(*) FROM documents WHERE collection = ? AND seq > ?", (collection, seq)).fetchone()[0])

    def feedback_between(self, collection: str, after_id: int, upto_id: int) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT id, query, positive_ids, negative_ids FROM feedback WHERE collection = ? AND id > ? AND id <= ?"
            " ORDER BY id", (collection, after_id, upto_id)).fetchall()
        return [{"id": r[0], "query": r[1], "positive_ids": json.loads(r[2]), "negative_ids": json.loads(r[3])}
                for r in rows]

    # -- rounds -----------------------------------------------------------------------
    def claim_round(self, collection: str, rounds_seen: int, *, job_id: str, triggers: dict[str, Any],
                    feedback_from: int, feedback_to: int, seq_mark: int, yardstick: list[dict[str, Any]]) -> int | None:
        """Start round ``rounds_seen + 1`` if nobody else did: the policy is still enabled, its round count is
        still ``rounds_seen`` and no round is in flight. Returns the round number, or None."""
        now = time.time()
        with self._tx() as db:
            busy = db.execute(
                f"SELECT 1 FROM autopilot_rounds WHERE collection = ? AND state IN ({','.join('?' * len(IN_FLIGHT))})",
                (collection, *IN_FLIGHT)).fetchone()
            if busy:
                return None
            cur = db.execute(
                "UPDATE autopilot SET rounds = rounds + 1, feedback_mark = ?, seq_mark = ?, marked_at = ?,"
                " updated_at = ? WHERE collection = ? AND rounds = ? AND enabled = 1",
                (feedback_to, seq_mark, now, now, collection, rounds_seen))
            if cur.rowcount != 1:
                return None
            number = rounds_seen + 1
            db.execute(
                "INSERT INTO autopilot_rounds (collection, round, job_id, state, triggers, feedback_from, feedback_to,"
                " yardstick, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (collection, number, job_id, "queued", json.dumps(triggers), feedback_from, feedback_to,
                 json.dumps(yardstick), now))
            return number

    def finish_round(self, collection: str, number: int, state: str, outcome: dict[str, Any], *,
                     reference: float | None = None, learned_to: int | None = None, failed: bool = False,
                     backoff_s: float = 0.0) -> bool:
        """Close an in-flight round (once: False if it was closed already) and update the policy's marks:
        an activated round moves what is learnt; a failed one counts towards the backoff."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE autopilot_rounds SET state = ?, outcome = ?, reference = ?, finished_at = ?"
                f" WHERE collection = ? AND round = ? AND state IN ({','.join('?' * len(IN_FLIGHT))})",
                (state, json.dumps(outcome), reference, now, collection, number, *IN_FLIGHT))
            if cur.rowcount != 1:
                return False
            if failed:
                db.execute("UPDATE autopilot SET failures = failures + 1, backoff_until = ?, updated_at = ?"
                           " WHERE collection = ?", (now + backoff_s, now, collection))
            else:
                db.execute("UPDATE autopilot SET failures = 0, backoff_until = NULL, updated_at = ?"
                           " WHERE collection = ?", (now, collection))
            if learned_to is not None:
                db.execute("UPDATE autopilot SET learned_mark = CASE WHEN learned_mark > ? THEN learned_mark ELSE ? END"
                           " WHERE collection = ?", (learned_to, learned_to, collection))
            return True

    def set_round_state(self, collection: str, number: int, state: str) -> None:
        with self._tx() as db:
            db.execute(f"UPDATE autopilot_rounds SET state = ? WHERE collection = ? AND round = ?"
                       f" AND state IN ({','.join('?' * len(IN_FLIGHT))})", (state, collection, number, *IN_FLIGHT))

    def rounds_in_flight(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            f"SELECT collection, round, job_id, created_at, feedback_to FROM autopilot_rounds"
            f" WHERE state IN ({','.join('?' * len(IN_FLIGHT))})", IN_FLIGHT).fetchall()
        return [dict(r) for r in rows]

    def list_rounds(self, collection: str, limit: int | None = None, with_yardstick: bool = False) -> list[dict[str, Any]]:
        """Rounds newest first."""
        rows = self._conn().execute(
            "SELECT * FROM autopilot_rounds WHERE collection = ? ORDER BY round DESC LIMIT ?",
            (collection, limit if limit is not None else 2**62)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["triggers"] = json.loads(d["triggers"])
            d["outcome"] = json.loads(d["outcome"])
            ys = json.loads(d.pop("yardstick"))
            d["yardstick_pairs"] = len(ys)
            if with_yardstick:
                d["yardstick"] = ys
            out.append(d)
        return out

    def drop_autopilot(self, db: Any, collection: str) -> None:
        """Inside ``delete_collection``'s transaction."""
        db.execute("DELETE FROM autopilot WHERE collection = ?", (collection,))
        db.execute("DELETE FROM autopilot_rounds WHERE collection = ?", (collection,))


def _policy_row(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["policy"] = json.loads(d["policy"])
    d["enabled"] = bool(d["enabled"])
    return d
