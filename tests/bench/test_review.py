import json
import re

from bench.review import score, write_changed_sheet


def recommendation(case: str, steps: list[tuple[str, str]]) -> dict:
    return {"id": case, "symptoms": ["咳嗽"], "steps": [
        {"action": "add", "herb": herb, "name": herb, "explanation": reason} for herb, reason in steps]}


def test_a_changed_sheet_holds_both_reasons_of_each_changed_step_and_scores_them_apart(tmp_path, capsys):
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    cases = [(recommendation("a", [("桔梗", "利咽，主治咳嗽"), ("甘草", "调和诸药")]),
              recommendation("a", [("桔梗", "祛痰，主治咳嗽"), ("甘草", "调和诸药")])),
             (recommendation("b", [("陈皮", "理气健脾"), ("杏仁", "降气止咳平喘，主治咳嗽")]),
              recommendation("b", [("陈皮", "燥湿化痰，主治咳嗽"), ("半夏", "燥湿化痰")]))]
    for path, side in ((before, 0), (after, 1)):
        path.write_text("".join(json.dumps(c[side], ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    write_changed_sheet(before, after, pairs=60, seed=0, out=tmp_path / "sheet")
    sheet = (tmp_path / "sheet" / "sheet.md").read_text(encoding="utf-8")
    items = dict(re.findall(r"\*\*(S\d+)\*\* 症状：咳嗽 ｜ 加 (.+)", sheet))
    # the two changed steps, each in both versions; the unchanged 甘草 and the steps of one side alone are left out
    assert sorted(items.values()) == sorted(["桔梗：利咽，主治咳嗽", "桔梗：祛痰，主治咳嗽", "陈皮：理气健脾",
                                             "陈皮：燥湿化痰，主治咳嗽"])
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"{item} {2 if '祛痰' in text or '燥湿' in text else 1}\n"
                             for item, text in items.items()), encoding="utf-8")
    score(tmp_path / "sheet", marks)
    tally = capsys.readouterr().out
    assert "after  step  n=2  2: 100%" in tally and "before  step  n=2  2: 0% 1: 100%" in tally
