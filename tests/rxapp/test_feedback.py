"""The feedback store on real SQLite files: schema versions, saves, privacy deletes, exports, concurrency, full disk."""

import json
import sqlite3
import threading

import pytest

from rxapp.feedback import SCHEMA_VERSION, FeedbackStore, SessionRecord, StoreError, export_records


def session(herbs=("麻黄", "桂枝", "甘草")) -> SessionRecord:
    steps = [{"index": i, "action": "add", "herb": h, "explanation": f"{h}：主治 恶寒", "probability": 0.5,
              "warnings": []} for i, h in enumerate(herbs, 1)]
    return SessionRecord("恶寒发热，头痛", ["恶寒发热", "头痛"], [], False, "成人 14–64", "女", "patient name here",
                         "model.gguf", "ab" * 32, "llama", {"screen_weight": 4.0}, "主症：恶寒发热、头痛", "…", "方解",
                         steps)


def test_new_file_is_migrated_to_the_current_schema_in_wal_mode(tmp_path):
    store = FeedbackStore(tmp_path / "sub" / "rx.sqlite")
    assert store.version == SCHEMA_VERSION
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"sessions", "steps", "feedback"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    FeedbackStore(store.path)  # reopening an up-to-date file changes nothing
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="schema version"):
        FeedbackStore(store.path)


def test_session_feedback_and_preference_record_round_trip(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    sid = store.save_session(session())
    fid = store.save_feedback(sid, {1: "accept", 3: "reject"}, [{"herb": "麻黄", "dose_g": 9.0},
                                                               {"herb": "杏仁", "dose_g": None}], [], 4, "去甘草加杏仁")
    saved = store.session(sid)
    assert [s["herb"] for s in saved["steps"]] == ["麻黄", "桂枝", "甘草"] and saved["notes"] == "patient name here"
    assert saved["feedback"][0]["id"] == fid and saved["feedback"][0]["verdicts"] == {"1": "accept", "3": "reject"}
    [record] = store.preference_records()
    assert record["accepted"] == ["麻黄"] and record["rejected"] == ["甘草"]
    assert record["final_herbs"] == ["麻黄", "杏仁"] and record["doses"] == {"麻黄": 9.0}
    assert record["model_herbs"] == ["麻黄", "桂枝", "甘草"] and record["rating"] == 4
    assert "notes" not in record  # free-text patient notes never leave the database
    assert list(store.preference_records("杏仁")) and not list(store.preference_records("附子"))
    assert not list(store.preference_records(min_rating=5))
    lines = export_records([record], "jsonl").splitlines()
    assert json.loads(lines[0]) == record
    csv_text = export_records([record], "csv")
    assert csv_text.splitlines()[0].startswith("feedback_id,session_id") and "去甘草加杏仁" in csv_text


def test_bad_feedback_is_refused_with_a_reason_and_nothing_is_written(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    sid = store.save_session(session())
    with pytest.raises(StoreError, match="no session"):
        store.save_feedback("nope", {}, [], [], None, "")
    with pytest.raises(StoreError, match="accept or reject"):
        store.save_feedback(sid, {1: "maybe"}, [], [], None, "")
    with pytest.raises(StoreError, match="rating"):
        store.save_feedback(sid, {}, [], [], 9, "")
    assert store.session(sid)["feedback"] == []


def test_delete_removes_the_session_its_steps_and_feedback(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    kept, gone = store.save_session(session()), store.save_session(session(("附子",)))
    store.save_feedback(gone, {}, [], [], 2, "")
    assert store.delete_session(gone) and not store.delete_session(gone)
    assert store.session(gone) is None and store.session(kept) is not None
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM steps WHERE session_id = ?", [gone]).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0


def test_concurrent_saves_from_many_threads_all_land(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    sid = store.save_session(session())
    ids, errors = [], []

    def save(n):
        try:
            ids.append(store.save_feedback(sid, {}, [{"herb": "麻黄", "dose_g": float(n + 1)}], [], None, str(n)))
        except StoreError as e:
            errors.append(e)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 40
    assert sorted(r["comment"] for r in store.preference_records()) == sorted(str(n) for n in range(40))


def test_a_full_disk_is_reported_and_earlier_saves_stay(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    sid = store.save_session(session())
    store.save_feedback(sid, {}, [], [], 3, "before")
    connect = store._connect

    def full_connect():  # SQLite's own size cap gives the same SQLITE_FULL error as a full disk
        db = connect()
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count={pages}")
        return db

    monkeypatch.setattr(store, "_connect", full_connect)
    with pytest.raises(StoreError, match="disk is full"):
        store.save_feedback(sid, {}, [], [], 3, "x" * 200_000)
    monkeypatch.undo()
    assert [r["comment"] for r in store.preference_records()] == ["before"]


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    bad = tmp_path / "rx.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a database"):
        FeedbackStore(bad)


def test_a_version_1_file_is_upgraded_in_place_and_keeps_everything(tmp_path):
    from rxapp.feedback import MIGRATIONS

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=0")
    old = FeedbackStore.__new__(FeedbackStore)  # a store as the previous rx wrote it: schema 1, no drugs column
    old.path = path
    with old._transaction() as db:
        MIGRATIONS[0](db)
        db.conn.execute("PRAGMA user_version=1")
    conn.close()
    row = {k: v for k, v in session().__dict__.items() if k not in ("steps", "drugs", "unchecked_drugs", "draft")}
    with old._transaction() as db:
        db["sessions"].insert({**{k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                                  for k, v in row.items()}, "id": "old1", "created_at": "2026-01-01",
                               "herbs": json.dumps(["麻黄"], ensure_ascii=False)})
        db["feedback"].insert({"session_id": "old1", "saved_at": "2026-01-01", "verdicts": "{}",
                               "prescription": json.dumps([{"herb": "麻黄", "dose_g": 9}], ensure_ascii=False),
                               "warnings": "[]", "rating": 5, "comment": "旧"})
    store = FeedbackStore(path)  # opening it migrates
    assert store.version == SCHEMA_VERSION == 3
    [record] = store.preference_records()
    assert record["comment"] == "旧" and record["final_herbs"] == ["麻黄"] and record["drugs"] == []
    assert record["draft"] is None and record["model_herbs"] == ["麻黄"]  # built from nothing, every step an addition
    assert store.session("old1")["symptoms_text"] == "恶寒发热，头痛"


def test_the_patients_drugs_are_kept_with_the_session_and_exported(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    record = session()
    record.drugs, record.unchecked_drugs = ["warfarin", "digoxin"], ["sertralin"]
    sid = store.save_session(record)
    store.save_feedback(sid, {}, [{"herb": "麻黄", "dose_g": None}], [], None, "")
    [exported] = store.preference_records()
    assert exported["drugs"] == ["warfarin", "digoxin"] and exported["unchecked_drugs"] == ["sertralin"]
    assert '"[""warfarin"", ""digoxin""]"' in export_records([exported], "csv")


def test_a_revision_keeps_its_draft_and_each_steps_action_and_exports_the_verdicts_by_action(tmp_path):
    store = FeedbackStore(tmp_path / "rx.sqlite")
    record = session(("麻黄", "桂枝", "附子", "杏仁"))
    actions = ["draft", "draft", "remove", "add"]
    record.steps = [{**s, "action": a} for s, a in zip(record.steps, actions, strict=True)]
    record.steps[2]["herb"] = "桂枝"  # 减桂枝: step 3 removes the draft's second herb
    record.draft = {"herbs": ["麻黄", "桂枝"], "unknown": ["鬼药"], "merged": [], "formula": None}
    sid = store.save_session(record)
    store.save_feedback(sid, {3: "accept", 4: "reject"}, [{"herb": "麻黄", "dose_g": 9.0}], [], 4, "")
    assert [s["action"] for s in store.session(sid)["steps"]] == actions
    [exported] = store.preference_records()
    assert exported["draft"]["unknown"] == ["鬼药"] and exported["model_herbs"] == ["麻黄", "杏仁"]
    assert (exported["accepted"], exported["rejected"]) == ([], ["杏仁"])
    assert (exported["accepted_removals"], exported["rejected_removals"]) == (["桂枝"], [])
    assert json.loads(export_records([exported], "jsonl"))["accepted_removals"] == ["桂枝"]
    assert "accepted_removals" in export_records([exported], "csv").splitlines()[0]
