"""`python -m rxapp check|parse` as a user runs them: exit codes, JSON, and no traceback on bad input."""

import json

import pytest


def check_json(cli, *args):
    result = cli("-m", "rxapp", "check", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("herbs", [["附子", "半夏"], ["甘草", "海藻"], ["炙甘草", "甘遂"]])
def test_antagonisms_give_severe_warnings(cli, herbs):
    report = check_json(cli, "--herbs", *herbs)
    assert any(w["severity"] == "severe" and w["rule"] == "十八反" for w in report["warnings"])


def test_nineteen_fears_give_a_warning(cli):
    report = check_json(cli, "--herbs", "人参", "五灵脂")
    assert [(w["severity"], w["rule"]) for w in report["warnings"]] == [("warning", "十九畏")]


def test_musk_in_pregnancy_is_severe(cli):
    report = check_json(cli, "--herbs", "麝香", "--pregnant")
    assert [(w["severity"], w["rule"]) for w in report["warnings"]] == [("severe", "妊娠禁用")]
    assert report["warnings"][0]["sources"][0]["url"]


def test_classic_trio_gives_no_warnings(cli):
    assert check_json(cli, "--herbs", "当归", "川芎", "白芍")["warnings"] == []


def test_dose_over_the_limit(cli):
    report = check_json(cli, "--herbs", "附子", "--doses", "附子=30")
    assert ("severe", "超量") in {(w["severity"], w["rule"]) for w in report["warnings"]}


def test_unknown_herb_is_reported_and_the_rest_still_checked(cli):
    report = check_json(cli, "--herbs", "附子", "半夏", "巴拉巴拉")
    assert report["unknown_herbs"] == ["巴拉巴拉"]
    assert {w["rule"] for w in report["warnings"]} >= {"十八反", "未识别"}


def test_human_readable_output(cli):
    result = cli("-m", "rxapp", "check", "--herbs", "附子", "半夏")
    assert result.returncode == 0 and "[severe]" in result.stdout and "十八反" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["check", "--herbs", ""], "no herbs given"),
    (["check", "--herbs", "草" * 10_000], "limit"),
    (["check", "--herbs", "附子", "--doses", "附子=-3"], "positive"),
    (["check", "--herbs", "附子", "--doses", "附子=5000"], "implausible"),
    (["check", "--herbs", "附子", "--doses", "附子=abc"], "not a number"),
    (["check", "--herbs", "附子", "--doses", "半夏=6"], "not in the prescription"),
    (["parse", "--symptoms", ""], "no symptoms given"),
    (["parse", "--symptoms", "咳" * 10_000], "limit"),
    (["check"], "required"),
    ([], "required"),
])
def test_usage_errors_exit_2_with_one_clear_line(cli, args, message):
    result = cli("-m", "rxapp", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["😀😀", "<script>alert(1)</script>", "xyz 不明"])
def test_only_unknown_symptoms_exit_3_and_echo_the_fragments(cli, text):
    result = cli("-m", "rxapp", "parse", "--symptoms", text, "--json")
    assert result.returncode == 3 and "none of the input was recognised" in result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["symptoms"] == [] and parsed["unrecognised"]


def test_parse_json(cli):
    result = cli("-m", "rxapp", "parse", "--symptoms", "恶寒发热，咳嗽 😀", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["symptoms"] == ["恶寒发热", "咳嗽"]
    assert json.loads(result.stdout)["unrecognised"] == ["😀"]


def test_drugs_give_one_sourced_warning_per_drug_and_concern(cli):
    report = check_json(cli, "--herbs", "丹参", "当归", "茯苓", "--drugs", "华法林", "warfarin", "sertralin")
    assert [d["name"] for d in report["drugs"]] == ["warfarin"]  # entered twice, in two languages: once
    assert report["unchecked_drugs"] == [{"text": "sertralin", "suggestions": ["舍曲林（sertraline）"]}]
    interactions = [w for w in report["warnings"] if w["rule"] == "药物相互作用"]
    assert [(w["severity"], w["herbs"], w["drug"]) for w in interactions] == [("severe", ["丹参", "当归"], "warfarin")]
    rows = interactions[0]["interactions"]
    assert [(r["herb"], r["severity"]) for r in rows] == [("丹参", "major"), ("当归", "moderate")]
    assert all(r["effect"] and r["management"] and r["evidence"] for r in rows) and interactions[0]["sources"]
    assert any(w["rule"] == "未识别" and w["drug"] == "sertralin" for w in report["warnings"])


def test_a_medication_list_that_cannot_be_read_is_one_line(cli):
    result = cli("-m", "rxapp", "check", "--herbs", "甘草", "--drugs", "x" * 3000)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
