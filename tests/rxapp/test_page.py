"""The page's actions called directly, with no server: a recommendation streamed on the micro model and saved in a
real SQLite file, refused input, no model, the review's save, and the feedback tab's browse, export and delete."""

import csv
import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from rxapp import page
from rxapp.engine import Engine, model_card
from rxapp.feedback import EXPORT_FIELDS, FeedbackStore, SessionRecord
from rxapp.stepper import UNREVISED
from tests.rxapp.conftest import feedback_rows

SETTINGS = (False, "未填", "未填", "", 4.0, 20, page.DECODING[0], 0.7, 0)  # pregnant, age, sex, notes, screen, …


@pytest.fixture(scope="module")
def engine(micro_export):
    with Engine() as engine:
        engine.load(micro_export / "model-f16.gguf", "llama", "cpu")
        assert engine.model is not None, engine.error
        yield engine


@pytest.fixture
def store(tmp_path):
    return FeedbackStore(tmp_path / "rx.sqlite")


def count(store: FeedbackStore, table: str) -> int:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def stored_session(store: FeedbackStore, symptoms: list[str], herbs: list[str]) -> str:
    """A session saved as the page saves one, without running the model."""
    steps = [{"index": i, "action": "add", "herb": h, "explanation": "", "probability": 0.5, "warnings": []}
             for i, h in enumerate(herbs, 1)]
    return store.save_session(SessionRecord("，".join(symptoms), symptoms, [], False, "未填", "未填", "", "m.gguf",
                                            "0" * 64, "llama", {}, "", "", "", steps))


def test_recommend_streams_one_more_card_per_step_then_saves_the_session(engine, store, symptom_text):
    *streamed, final = page.recommend(engine, store, symptom_text, [], *SETTINGS)
    counts = [u.html.count('class="rx-step"') for u in streamed]
    assert len(counts) >= 2 and counts == list(range(1, len(counts) + 1)), counts
    assert all("生成中" in u.html and u.session_id == "" for u in streamed)
    assert {(u.steps, u.prescription, u.prescription_check, u.save_status) for u in streamed} == {(None,) * 4}

    assert re.fullmatch(r"[0-9a-f]{12}", final.session_id) and final.save_status == ""
    herbs = final.prescription.split("、")
    assert final.steps == [f"{i} 加 {h}" for i, h in enumerate(herbs, 1)] and len(herbs) == counts[-1]
    assert "方解" in final.html and "整方安全核查" in final.html and "生成中" not in final.html
    assert final.prescription_check == page.recheck(final.prescription, False)
    saved = store.session(final.session_id)
    assert [s["herb"] for s in saved["steps"]] == herbs and saved["symptoms_text"] == symptom_text
    assert saved["model_sha256"] == engine.model.sha256 and saved["settings"]["screen_weight"] == 4.0


def test_a_formula_is_checked_and_shown_first_then_revised_and_saved_with_its_draft(engine, store):
    *streamed, final = page.recommend(engine, store, "恶寒 发热 无汗 咳嗽", [], *SETTINGS, None, "", "麻黄汤")
    assert "初稿 · 麻黄汤（《伤寒论》）" in streamed[0].html and "rx-step" not in streamed[0].html  # checked first
    assert final.html.count('data-action="draft"') == 4 and "类方：" in final.html
    assert all(label.split()[1] in ("加", "减") for label in final.steps)  # the draft's own herbs are not reviewed
    assert (UNREVISED in final.html) == (not final.steps)  # a revision that stopped at once says so
    saved = store.session(final.session_id)
    assert saved["draft"]["formula"] == "麻黄汤" and [s["action"] for s in saved["steps"]][:4] == ["draft"] * 4
    left = [s["herb"] for s in saved["steps"] if s["action"] != "remove"]
    left = [h for h in left if h not in {s["herb"] for s in saved["steps"] if s["action"] == "remove"}]
    assert final.prescription.split("、") == left  # the draft with the model's additions, less its removals


def test_a_drafts_severe_conflict_is_proposed_for_removal_on_a_card_that_says_so(engine, store):
    pregnant = (True, *SETTINGS[1:])  # 四逆汤's 附子 is forbidden in pregnancy
    *_, final = page.recommend(engine, store, "四肢厥冷 腹痛", [], *pregnant, None, "", "四逆汤")
    assert "第 4 步 · 减 附子（安全核查提出）" in final.html and "减去此药，解除：" in final.html
    assert UNREVISED not in final.html  # after the safety check's removal, "no change to the draft" is untrue
    assert final.steps[0] == "4 减 附子" and "附子" not in final.prescription.split("、")
    step = store.session(final.session_id)["steps"][3]
    assert (step["action"], step["herb"], step["explanation"]) == ("remove", "附子", "妊娠禁用")


@pytest.mark.parametrize(("start", "formula", "expected"), [("", "麻皇汤", "麻黄汤"), ("麻黄", "麻黄汤", "not both")])
def test_a_draft_it_cannot_read_gets_a_message_and_nothing_is_saved(engine, store, start, formula, expected):
    [update] = page.recommend(engine, store, "咳嗽", [], *SETTINGS, None, start, formula)
    assert expected in update.html and "rx-step" not in update.html and count(store, "sessions") == 0


@pytest.mark.parametrize(("text", "expected"), [("", "no symptoms given"), ("qwerty zxcv", "No known symptom")])
def test_symptoms_it_cannot_use_get_a_message_and_nothing_is_saved(engine, store, text, expected):
    [update] = page.recommend(engine, store, text, [], *SETTINGS)
    assert expected in update.html and 'class="rx-message"' in update.html and "rx-step" not in update.html
    assert update.session_id == "" and update.steps is None and update.prescription is None
    assert count(store, "sessions") == 0


def test_without_a_model_the_page_gives_the_engines_status(store, symptom_text, tmp_path):
    with Engine() as engine:
        [update] = page.recommend(engine, store, symptom_text, [], *SETTINGS)
        assert update.html == page.message("未加载模型 No model loaded（安全核查与药物知识仍可使用）")
        engine.load(tmp_path / "missing.gguf")
        [update] = page.recommend(engine, store, symptom_text, [], *SETTINGS)
        assert "模型未能加载 Model not loaded: model not found" in update.html and update.session_id == ""
    assert count(store, "sessions") == 0


def test_save_refuses_what_it_cannot_save_and_says_why(store):
    session_id = stored_session(store, ["咳嗽"], ["麻黄", "杏仁"])
    refusals = {
        "make a recommendation first": ("  ", [], [], "麻黄 9g"),
        "accepted and rejected — 1 麻黄": (session_id, ["1 麻黄"], ["1 麻黄", "2 杏仁"], "麻黄 9g"),
        "implausible": (session_id, [], [], "麻黄 900g"),
        "no session '000000000000'": ("0" * 12, [], [], "麻黄 9g"),
    }
    for reason, (sid, accepted, rejected, prescription) in refusals.items():
        status = page.save_feedback(store, sid, accepted, rejected, prescription, False, 3, "")
        assert status.startswith("未保存") and reason in status, status
    assert count(store, "feedback") == 0


def test_save_stores_the_review_in_the_sqlite_file(store):
    session_id = stored_session(store, ["咳嗽"], ["麻黄", "杏仁", "甘草"])
    status = page.save_feedback(store, f" {session_id} ", ["1 麻黄"], ["2 杏仁"], "麻黄 9g、附子 6g、半夏 6g", True, 4,
                                "加附子")
    [row] = feedback_rows(store.path)
    warnings = json.loads(row["warnings"])
    assert status == f"已保存 Saved: feedback #{row['id']} · session {session_id} · {len(warnings)} warning(s)"
    assert row["session_id"] == session_id and row["rating"] == 4 and row["comment"] == "加附子"
    assert json.loads(row["verdicts"]) == {"1": "accept", "2": "reject"}
    assert json.loads(row["prescription"]) == [{"herb": "麻黄", "dose_g": 9.0}, {"herb": "附子", "dose_g": 6.0},
                                               {"herb": "半夏", "dose_g": 6.0}]
    assert any(w["rule"] == "十八反" for w in warnings)  # 附子 with 半夏, checked as saved


@pytest.fixture
def two_reviews(store):
    """A low-rated review of a cough and a high-rated one of a headache, the headache saved last."""
    cough = stored_session(store, ["咳嗽"], ["麻黄", "杏仁"])
    headache = stored_session(store, ["头痛"], ["川芎"])
    page.save_feedback(store, cough, ["1 麻黄"], ["2 杏仁"], "麻黄 9g", False, 2, "first")
    page.save_feedback(store, headache, [], [], "川芎 6g、白芷 6g", False, 5, "second")
    return cough, headache


def test_browse_filters_by_text_and_minimum_rating(store, two_reviews):
    cough, headache = two_reviews
    rows = page.browse_feedback(store, "", 0)
    assert [r[2] for r in rows] == [headache, cough] and all(len(r) == len(page.FEEDBACK_COLUMNS) for r in rows)
    assert rows[1][3:] == ["咳嗽", "麻黄、杏仁", "麻黄", 1, 1, 2, "first"]
    assert [r[2] for r in page.browse_feedback(store, "白芷", 0)] == [headache]  # a herb the clinician added
    assert [r[2] for r in page.browse_feedback(store, "first", None)] == [cough]
    assert [r[2] for r in page.browse_feedback(store, "", 3)] == [headache]
    assert page.browse_feedback(store, "咳嗽", 3) == []


def test_export_writes_jsonl_and_csv_that_parse_back(store, two_reviews):
    cough, headache = two_reviews
    jsonl, csv_file = Path(page.export_feedback(store, "", 0, "jsonl")), Path(page.export_feedback(store, "", 3, "csv"))
    try:
        records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
        assert jsonl.suffix == ".jsonl" and [r["session_id"] for r in records] == [headache, cough]
        assert records[0]["doses"] == {"川芎": 6.0, "白芷": 6.0} and records[1]["rejected"] == ["杏仁"]
        rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
        assert csv_file.suffix == ".csv" and tuple(rows[0]) == EXPORT_FIELDS
        assert [(r["session_id"], r["rating"], json.loads(r["final_herbs"])) for r in rows] == [
            (headache, "5", ["川芎", "白芷"])]
    finally:
        for path in (jsonl, csv_file):
            shutil.rmtree(path.parent)


def test_delete_removes_a_session_with_its_feedback_and_reports_a_missing_one(store, two_reviews):
    cough, headache = two_reviews
    assert page.delete_session(store, f"{cough} ") == f"已删除会话 {cough} 及其反馈 Deleted."
    assert store.session(cough) is None and store.session(headache) is not None
    assert [r["session_id"] for r in feedback_rows(store.path)] == [headache]
    assert page.delete_session(store, cough) == f"没有会话 {cough!r} No such session."


def test_loading_a_missing_or_corrupt_file_leaves_no_model_and_says_why(micro_export, tmp_path):
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    with Engine() as engine:
        status, card = page.load_model(engine, f" {micro_export / 'model-f16.gguf'} ", "llama", "cpu", "none")
        assert status.startswith("已加载 Loaded:") and "backend llama · device cpu" in status
        assert card and card == model_card(micro_export / "model-f16.gguf")
        previous = engine.model.backend
        status, card = page.load_model(engine, tmp_path / "missing.gguf", "auto", "cpu", "none")
        assert engine.model is None and previous.llm is None  # the model it replaced is closed
        assert status.startswith("模型未能加载 Model not loaded: model not found") and card == ""
        status, card = page.load_model(engine, corrupt, "auto", "cpu", "none")
        assert engine.model is None and card == ""
        assert status.startswith("模型未能加载 Model not loaded: llama.cpp could not load"), status


def test_an_engine_closes_its_model_on_leaving_its_with_block(micro_export):
    with Engine() as engine:
        engine.load(micro_export / "model-q4_k_m.gguf", "llama", "cpu")
        backend = engine.model.backend
        assert backend.llm is not None
    assert engine.model is None and backend.llm is None and engine.status() == "未加载模型 No model loaded"


def test_the_actions_load_without_gradio(cli):
    result = cli("-c", "import sys, rxapp.page; assert 'gradio' not in sys.modules, 'gradio imported'")
    assert result.returncode == 0, result.stderr[-2000:]
