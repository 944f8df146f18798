"""The clinician feedback store: one local SQLite file (sqlite-utils) of sessions, their steps and the feedback
saved on them, with a versioned schema, and the preference records that `pipeline` trains on.

Durability: WAL journal, synchronous=FULL and one transaction per save, so a save that returned is on disk even if
the process is killed right after. Each call opens its own connection, so concurrent browser sessions are safe.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

VERDICTS = ("accept", "reject")
# Columns of the exported preference records; free-text patient notes stay in the database (privacy).
EXPORT_FIELDS = ("feedback_id", "session_id", "saved_at", "symptoms", "pregnant", "drugs", "unchecked_drugs",
                 "age_group", "sex", "model_sha256", "settings", "draft", "response", "model_herbs", "accepted",
                 "rejected", "accepted_removals", "rejected_removals", "final_herbs", "doses", "rating", "comment")


class StoreError(RuntimeError):
    """A save or read that did not happen, with the reason in words (disk full, locked, unknown session)."""


@dataclass
class SessionRecord:
    """One recommendation as shown to the clinician."""

    symptoms_text: str
    symptoms: list[str]
    unrecognised: list[str]
    pregnant: bool
    age_group: str
    sex: str
    notes: str
    model_path: str
    model_sha256: str
    backend: str
    settings: dict
    analysis: str
    response: str
    summary: str
    steps: list[dict]  # index, action (draft, add, remove), herb, explanation, probability, warnings (dicts)
    warnings: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    drugs: list[str] = field(default_factory=list)  # the patient's Western drugs as recognised (generic names)
    unchecked_drugs: list[str] = field(default_factory=list)  # what was typed as a drug and not recognised
    draft: dict | None = None  # the draft the model revised (rxapp.draft.Draft.to_dict); None when built from nothing


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _v1(db: sqlite_utils.Database) -> None:
    db["sessions"].create({
        "id": str, "created_at": str, "symptoms_text": str, "symptoms": str, "unrecognised": str, "pregnant": int,
        "age_group": str, "sex": str, "notes": str, "model_path": str, "model_sha256": str, "backend": str,
        "settings": str, "analysis": str, "response": str, "summary": str, "herbs": str, "warnings": str,
        "elapsed_s": float}, pk="id")
    db["steps"].create({"session_id": str, "idx": int, "herb": str, "explanation": str, "probability": float,
                        "warnings": str}, pk=("session_id", "idx"), foreign_keys=[("session_id", "sessions", "id")])
    db["feedback"].create({"id": int, "session_id": str, "saved_at": str, "verdicts": str, "prescription": str,
                           "warnings": str, "rating": int, "comment": str}, pk="id",
                          foreign_keys=[("session_id", "sessions", "id")])
    db["feedback"].create_index(["session_id"])


def _v2(db: sqlite_utils.Database) -> None:
    """The patient's Western drugs, kept with each session; sessions saved before have none on record."""
    db["sessions"].add_column("drugs", str, not_null_default="[]")
    db["sessions"].add_column("unchecked_drugs", str, not_null_default="[]")


def _v3(db: sqlite_utils.Database) -> None:
    """Revisions: the draft a session started from, and each step's action (sessions and steps saved before were
    built from nothing, every step an addition)."""
    db["sessions"].add_column("draft", str)
    db["sessions"].add_column("actions", str)  # the steps' actions, in the order of `herbs`
    db["steps"].add_column("action", str, not_null_default="add")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3]  # MIGRATIONS[i] takes version i to i + 1
SCHEMA_VERSION = len(MIGRATIONS)


class FeedbackStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        db.conn.close()
        self.migrate()

    def _connect(self) -> sqlite_utils.Database:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the feedback database {self.path}: {e}") from None
        return sqlite_utils.Database(conn)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite_utils.Database]:
        """A connection in one IMMEDIATE transaction, committed on success; SQLite errors become StoreError."""
        db = self._connect()
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            yield db
            db.conn.execute("COMMIT")
        except BaseException as e:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"not saved: {_reason(e)}") from None
            raise
        finally:
            db.conn.close()

    @property
    def version(self) -> int:
        db = self._connect()
        try:
            return db.conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.conn.close()

    def migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, one migration per transaction; refuse a file from a newer rx."""
        while (found := self.version) < SCHEMA_VERSION:
            with self._transaction() as db:
                MIGRATIONS[found](db)
                db.conn.execute(f"PRAGMA user_version={found + 1}")
        if found > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {found}; this rx reads up to {SCHEMA_VERSION}")

    def save_session(self, record: SessionRecord) -> str:
        session_id = uuid.uuid4().hex[:12]
        row = {k: v for k, v in record.__dict__.items() if k != "steps"}
        row |= {"id": session_id, "created_at": _now(), "pregnant": int(record.pregnant),
                "herbs": [s["herb"] for s in record.steps], "actions": [s["action"] for s in record.steps]}
        with self._transaction() as db:
            db["sessions"].insert(_encode(row))
            db["steps"].insert_all(_encode({"session_id": session_id, "idx": s["index"], "action": s["action"],
                                            "herb": s["herb"], "explanation": s["explanation"],
                                            "probability": s["probability"], "warnings": s["warnings"]})
                                   for s in record.steps)
        return session_id

    def save_feedback(self, session_id: str, verdicts: dict[int, str], prescription: list[dict],
                      warnings: list[dict], rating: int | None, comment: str) -> int:
        """One feedback row on a session; returns its id once it is on disk."""
        bad = {i: v for i, v in verdicts.items() if v not in VERDICTS}
        if bad:
            raise StoreError(f"step verdicts must be accept or reject: {bad}")
        if rating is not None and not 1 <= rating <= 5:
            raise StoreError(f"rating must be 1–5, not {rating}")
        with self._transaction() as db:
            if not db["sessions"].count_where("id = ?", [session_id]):
                raise StoreError(f"no session {session_id!r} in {self.path} (deleted, or from another database?)")
            return db["feedback"].insert(_encode({
                "session_id": session_id, "saved_at": _now(), "verdicts": {str(k): v for k, v in verdicts.items()},
                "prescription": prescription, "warnings": warnings, "rating": rating, "comment": comment})).last_pk

    def session(self, session_id: str) -> dict | None:
        with self._transaction() as db:
            rows = list(db["sessions"].rows_where("id = ?", [session_id]))
            if not rows:
                return None
            steps = list(db["steps"].rows_where("session_id = ?", [session_id], order_by="idx"))
            feedback = list(db["feedback"].rows_where("session_id = ?", [session_id], order_by="id"))
        return _decode(rows[0]) | {"steps": [_decode(s) for s in steps], "feedback": [_decode(f) for f in feedback]}

    def delete_session(self, session_id: str) -> bool:
        """Remove a session with its steps and feedback (patient privacy); False if there was none."""
        with self._transaction() as db:
            if not db["sessions"].count_where("id = ?", [session_id]):
                return False
            db["feedback"].delete_where("session_id = ?", [session_id])
            db["steps"].delete_where("session_id = ?", [session_id])
            db["sessions"].delete(session_id)
        return True

    def preference_records(self, text: str = "", min_rating: int | None = None) -> Iterator[dict]:
        """Every feedback row joined with its session, newest first, as `pipeline` reads it. `text` filters on
        symptoms, herbs and comments; `min_rating` drops lower or unrated rows."""
        db = self._connect()
        try:
            query = ("SELECT f.*, s.symptoms, s.pregnant, s.drugs, s.unchecked_drugs, s.age_group, s.sex, "
                     "s.model_sha256, s.settings, s.draft, s.response, s.herbs, s.actions FROM feedback f "
                     "JOIN sessions s ON s.id = f.session_id ORDER BY f.id DESC")
            for row in db.query(query):
                record = _preference_record(_decode(row))
                if min_rating is not None and (record["rating"] or 0) < min_rating:
                    continue
                haystack = " ".join(record["symptoms"] + record["model_herbs"] + record["final_herbs"]
                                    + [record["comment"] or ""])
                if text and text not in haystack:
                    continue
                yield record
        finally:
            db.conn.close()


def _reason(error: sqlite3.Error) -> str:
    text = str(error)
    if "full" in text:
        return "the disk is full; free some space and save again (the form keeps what you entered)"
    if "locked" in text or "busy" in text:
        return "the database is busy; save again"
    return text


JSON_COLUMNS = {"symptoms", "unrecognised", "settings", "herbs", "warnings", "verdicts", "prescription", "drugs",
                "unchecked_drugs", "draft", "actions"}


def _encode(row: dict) -> dict:
    return {k: json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS else v for k, v in row.items()}


def _decode(row: dict) -> dict:
    return {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


def _preference_record(row: dict) -> dict:
    steps = list(zip(row["actions"] or ["add"] * len(row["herbs"]), row["herbs"], strict=True))
    verdict = {int(i): v for i, v in row["verdicts"].items()}

    def judged(action: str, wanted: str) -> list[str]:
        return [h for i, (a, h) in enumerate(steps, 1) if a == action and verdict.get(i) == wanted]

    kept: dict[str, None] = {}
    for action, herb in steps:
        if action == "remove":
            kept.pop(herb, None)
        else:
            kept[herb] = None
    return {
        "feedback_id": row["id"], "session_id": row["session_id"], "saved_at": row["saved_at"],
        "symptoms": row["symptoms"], "pregnant": bool(row["pregnant"]), "drugs": row["drugs"],
        "unchecked_drugs": row["unchecked_drugs"], "age_group": row["age_group"],
        "sex": row["sex"], "model_sha256": row["model_sha256"], "settings": row["settings"],
        "draft": row["draft"], "response": row["response"], "model_herbs": list(kept),
        "accepted": judged("add", "accept"), "rejected": judged("add", "reject"),
        "accepted_removals": judged("remove", "accept"), "rejected_removals": judged("remove", "reject"),
        "final_herbs": [p["herb"] for p in row["prescription"]],
        "doses": {p["herb"]: p["dose_g"] for p in row["prescription"] if p.get("dose_g") is not None},
        "rating": row["rating"], "comment": row["comment"],
    }


def export_records(records: list[dict], fmt: str) -> str:
    """JSONL (one record per line, what `pipeline` reads) or CSV (lists and dicts as JSON cells)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, EXPORT_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                             for k, v in r.items()})
        return out.getvalue()
    raise ValueError(f"export format must be jsonl or csv, not {fmt!r}")
