"""`python -m rxapp recommend` as a user runs it, on the micro model the pipeline exported: one case, a batch, bad
input and a missing model."""

import json
import re

import pytest

from rxapp import DEFAULT_MODEL
from rxapp.engine import Engine, model_card
from rxapp.formulas import resembled
from rxapp.modelinfo import file_sha256
from rxapp.safety import Patient, interaction_summary, rules
from rxapp.stepper import UNREVISED
from rxapp.vocab import vocab


def test_one_case_as_json(cli, micro_export):
    result = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽 恶寒", "--pregnant", "--model",
                 str(micro_export / "model-q4_k_m.gguf"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert {"id", "analysis", "steps", "summary", "formula", "warnings", "ranking"} <= out.keys()
    assert out["symptoms"] == ["咳嗽", "恶寒"] and out["pregnant"] is True
    assert out["steps"] and {"action", "herb", "explanation", "facts", "warnings", "safety"} <= out["steps"][0].keys()
    herbs = [s["herb"] for s in out["steps"]]
    assert out["formula"] == (resembled(herbs).describe() if resembled(herbs) else None)
    forbidden = {h for h, warnings in rules().addition_risks([], Patient(pregnant=True)).items()
                 if any(w.severity == "severe" for w in warnings)}
    assert set(out["ranking"][: len(herbs)]) - set(herbs) <= forbidden  # greedy: the best the screen allows
    assert len(out["ranking"]) == len(vocab().herbs) >= 20
    assert all(w["sources"] or w["rule"] == "未识别" for s in out["steps"] for w in s["warnings"])


def test_batch_keeps_order_and_reports_bad_lines_in_place(cli, micro_export, tmp_path):
    batch = tmp_path / "cases.jsonl"
    batch.write_text("\n".join([json.dumps({"id": "a", "symptoms": "咳嗽", "pregnant": False}, ensure_ascii=False),
                                "not json",
                                json.dumps({"id": "c", "symptoms": "@@@"}),
                                json.dumps({"id": "d", "symptoms": "头痛 发热", "pregnant": True},
                                           ensure_ascii=False),
                                json.dumps({"id": "e", "symptoms": ["咳嗽", "头痛"]}, ensure_ascii=False),
                                json.dumps({"id": "f", "symptoms": 3})]) + "\n", encoding="utf-8")
    result = cli("-m", "rxapp", "recommend", "--batch", str(batch), "--model", str(micro_export / "model-f16.gguf"))
    assert result.returncode == 2  # some lines failed; the others are still answered
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["a", 2, "c", "d", "e", "f"]
    assert "error" in lines[1] and "error" in lines[2] and "symptom" in lines[2]["error"]
    assert lines[0]["steps"] and lines[3]["pregnant"] is True
    assert lines[4]["symptoms"] == ["咳嗽", "头痛"] and lines[4]["unrecognised"] == []  # a list is read as the symptoms
    assert "must be text or a list" in lines[5]["error"]


def test_missing_model_and_empty_symptoms_give_one_line(cli, micro_export, tmp_path):
    missing = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽", "--model", str(tmp_path / "nope.gguf"))
    assert missing.returncode == 2 and "nope.gguf" in missing.stderr and "Traceback" not in missing.stderr
    empty = cli("-m", "rxapp", "recommend", "--symptoms", "   ", "--model", str(micro_export / "model-f16.gguf"))
    assert empty.returncode == 2 and "Traceback" not in empty.stderr and empty.stderr.startswith("error:")


def test_shipped_default_model_recommends_with_its_card(cli):
    result = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽 恶寒 头痛", "--json")  # no --model: the shipped one
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert len(out["steps"]) >= 3 and all(s["herb"] in vocab().herbs for s in out["steps"])
    card = model_card(DEFAULT_MODEL)
    assert "not a diagnosis" in card and file_sha256(DEFAULT_MODEL) in card  # the card describes this very file


def test_hf_weights_in_4_bits_and_a_gguf_refusing_them(cli, micro_export):
    result = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽 恶寒", "--model", str(micro_export / "hf"),
                 "--quantization", "4bit", "--json")  # bitsandbytes NF4; on this CPU-only machine, on the CPU
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(s["herb"] in vocab().herbs for s in json.loads(result.stdout)["steps"])
    refused = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽", "--model", str(micro_export / "model-f16.gguf"),
                  "--quantization", "4bit")
    assert refused.returncode == 2 and "GGUF" in refused.stderr and "Traceback" not in refused.stderr
    with Engine() as engine:
        engine.load(micro_export / "hf", "hf", "cpu", "8bit")
        assert engine.model is not None and "weights 8bit" in engine.status(), engine.status()


def test_a_patients_drugs_screen_the_steps_and_reach_the_warnings(cli, micro_export, tmp_path):
    model = str(micro_export / "model-q4_k_m.gguf")
    result = cli("-m", "rxapp", "recommend", "--symptoms", "胸痛 心悸", "--drugs", "华法林", "氢氯噻嗪", "--model",
                 model, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert [d["name"] for d in out["drugs"]] == ["warfarin", "hydrochlorothiazide"]
    on_drugs = Patient.from_input(False, ["华法林", "氢氯噻嗪"])
    forbidden = {h for h, warnings in rules().addition_risks([], on_drugs).items()
                 if any(w.severity == "severe" for w in warnings)}
    assert {"丹参", "甘草"} <= forbidden and not forbidden & {s["herb"] for s in out["steps"]}
    expected = rules().check_prescription([s["herb"] for s in out["steps"]], on_drugs)
    assert [w["message"] for w in out["warnings"]] == [w.message for w in expected]
    assert out["interactions"] == interaction_summary(expected)  # beside the 方解
    batch = tmp_path / "drugs.jsonl"
    batch.write_text("\n".join([json.dumps({"id": "a", "symptoms": "咳嗽", "drugs": ["digoxin"]}),
                                json.dumps({"id": "b", "symptoms": "咳嗽", "drugs": 5})]) + "\n", encoding="utf-8")
    lines = [json.loads(line) for line in cli("-m", "rxapp", "recommend", "--batch", str(batch), "--model",
                                              model).stdout.splitlines()]
    assert lines[0]["drugs"][0]["name"] == "digoxin" and "drugs" in lines[1]["error"]


@pytest.mark.parametrize("weight", ["-5", "nan", "inf"])
def test_a_negative_or_non_finite_screen_weight_is_refused(cli, weight):
    result = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽", "--screen-weight", weight)
    assert result.returncode == 2 and "finite number ≥ 0" in result.stderr and "Traceback" not in result.stderr


def test_revising_a_formula_or_a_draft_from_the_command_line(cli, micro_export, tmp_path):
    model = str(micro_export / "model-f16.gguf")
    result = cli("-m", "rxapp", "recommend", "--symptoms", "恶寒 发热 无汗 咳嗽", "--formula", "麻黄汤", "--model",
                 model, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["draft"]["formula"] == "麻黄汤" and out["draft"]["herbs"] == ["麻黄", "桂枝", "炙甘草", "杏仁"]
    assert [s["action"] for s in out["steps"][:4]] == ["draft"] * 4
    assert {s["action"] for s in out["steps"][4:]} <= {"add", "remove"}
    assert out["unrevised"] == (len(out["steps"]) == 4) and out["unrecognised"] == ["发热"]  # 发热: which fever?
    assert set(out["suggestions"]["发热"]) >= {"恶寒发热", "小儿发热"}
    match = out["formula_match"]
    assert match is None or (match["text"] == out["formula"] and match["modification"].startswith(match["formula"]))
    printed = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽，发热", "--start", "附子", "半夏", "鬼药", "--model",
                  model)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "初稿: 附子、半夏  未核查: 鬼药" in printed.stdout and "十八反" in printed.stdout
    assert "1. 初稿 附子" in printed.stdout and "类方：" in printed.stdout
    changes = re.findall(r"^\d+\. [加减] ", printed.stdout, flags=re.MULTILINE)
    assert (UNREVISED in printed.stdout) == (not changes) and "未识别: '发热'" in printed.stdout


def test_a_bad_formula_or_draft_is_reported_before_the_model_loads(cli, micro_export, tmp_path):
    unknown = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽", "--formula", "麻皇汤", "--model",
                  str(tmp_path / "missing.gguf"))
    assert unknown.returncode == 2 and "麻黄汤" in unknown.stderr and "missing.gguf" not in unknown.stderr
    both = cli("-m", "rxapp", "recommend", "--symptoms", "咳嗽", "--start", "麻黄", "--formula", "麻黄汤")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    batch = tmp_path / "drafts.jsonl"
    batch.write_text("\n".join([json.dumps({"id": "a", "symptoms": "咳嗽", "formula": "桂枝汤"}, ensure_ascii=False),
                                json.dumps({"id": "b", "symptoms": "咳嗽", "start": ["麻黄", "杏仁"]},
                                           ensure_ascii=False),
                                json.dumps({"id": "c", "symptoms": "咳嗽", "formula": "无此方"}, ensure_ascii=False),
                                json.dumps({"id": "d", "symptoms": "咳嗽", "start": 3})]) + "\n", encoding="utf-8")
    result = cli("-m", "rxapp", "recommend", "--batch", str(batch), "--model", str(micro_export / "model-f16.gguf"))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 2 and [line["id"] for line in lines] == ["a", "b", "c", "d"]
    assert lines[0]["draft"]["formula"] == "桂枝汤" and lines[1]["draft"]["herbs"] == ["麻黄", "杏仁"]
    assert "无此方" in lines[2]["error"] and "start" in lines[3]["error"]
