"""The patient's Western drugs: the two tables as data, reading a medication list, the name traps, and the
interaction warnings and screen they lead to."""

import csv
import math

import pytest

from rxapp.drugs import (
    ATC_CODE,
    DRUGS_FILE,
    EVIDENCE,
    INTERACTION_SEVERITY,
    INTERACTIONS_FILE,
    MedicationInputError,
    drug_vocab,
)
from rxapp.safety import INTERACTION_RULE, Patient, check_safety_weight, interaction_summary, rules, safety_cost
from rxapp.stepper import StepperConfig, screen_costs
from rxapp.vocab import SMGCN, read_mapping, vocab


def read(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def patient(*medications, pregnant=False):
    return Patient.from_input(pregnant, list(medications))


def interaction_warnings(herbs, *medications, doses=None):
    return [w for w in rules().check_prescription(herbs, patient(*medications), doses) if w.rule == INTERACTION_RULE]


def test_every_row_is_sourced_graded_and_names_known_herbs_and_drugs():
    rows = read(INTERACTIONS_FILE)
    assert len(rows) == 63  # the reference's table, whole
    kg = {line.split(",")[1].strip() for line in (SMGCN.parent / "kdhr-kg" / "entity" / "herbID.csv")
          .read_text(encoding="utf-8").splitlines()[1:]}
    smgcn = set(read_mapping(SMGCN / "herb_mapping.txt"))
    drugs = {d.name for d in drug_vocab().drugs}
    for row in rows:
        names = [row["herb"], *filter(None, row["herb_aliases"].split(";"))]
        assert all(n in smgcn or n in kg for n in names), names
        assert row["severity"] in INTERACTION_SEVERITY and set(row["evidence"].split("+")) <= EVIDENCE.keys()
        assert row["source"] and all("<" in part and ">" in part for part in row["source"].split(" | ")), row["herb"]
        assert (row["verified"] == "false") == ("unverified" in row["source"])
        assert {d for d in row["drugs"].split(";") if not d.startswith("(")} <= drugs, row["drugs"]
        assert row["concern"] and all(ATC_CODE.match(code) for code in row["atc_prefix"].split(";"))
    assert sum(row["severity"] == "major" for row in rows) == 22  # the reference's count: 22 major, 31 moderate


def test_every_drug_has_a_valid_atc_code_and_a_source():
    for row in read(DRUGS_FILE):
        assert row["kind"] in ("drug", "class") and row["name_zh"] and row["source"], row["name"]
        assert all(ATC_CODE.match(code) for code in row["atc"].split(";")), row["atc"]


@pytest.mark.parametrize(("typed", "expected"), [
    ("华法林", ["warfarin"]), ("Warfarin 5 mg, digoxin 0.125mg", ["warfarin", "digoxin"]),
    ("华法林钠片、地高辛", ["warfarin", "digoxin"]), ("cyclosporine and frusemide", ["ciclosporin", "furosemide"]),
    ("华法林地高辛", ["warfarin", "digoxin"]), ("metoprolol succinate", ["metoprolol"]),
    ("warfarin 华法林 WARFARIN", ["warfarin"]),  # one drug in two languages and cases: once
    ("torsemide；chlortalidone", ["torasemide", "chlorthalidone"]), ("beta blockers", ["beta-blockers"]),
    ("c03ca01", ["furosemide"]), ("C03CA02", ["bumetanide"]), ("", []),
])
def test_a_medication_list_is_read_by_name_spelling_language_or_atc_code(typed, expected):
    parsed = drug_vocab().parse(typed)
    assert [d.name for d in parsed.drugs] == expected and parsed.unrecognised == []


def test_what_is_not_recognised_is_kept_with_suggestions_never_matched_inside_a_longer_name():
    parsed = drug_vocab().parse(["sertralin", "氨茶碱", "😀😀", "warfarin\x07"])
    assert [d.name for d in parsed.drugs] == ["warfarin"]
    assert parsed.unrecognised == ["sertralin", "氨茶碱", "😀😀"]  # 茶碱 is inside 氨茶碱, and is not read there
    assert parsed.suggestions["sertralin"] == ["舍曲林（sertraline）"]
    warnings = rules().check_prescription(["甘草"], patient("sertralin", "😀😀"))
    assert [w.drug for w in warnings if w.rule == "未识别"] == ["sertralin", "😀😀"]  # shown as not checked


def test_absurd_lists_get_a_clear_error():
    with pytest.raises(MedicationInputError, match="characters long"):
        drug_vocab().parse("warfarin " * 2000)
    with pytest.raises(MedicationInputError, match="medications given"):
        drug_vocab().parse([d.name for d in drug_vocab().drugs][:40])
    long_garbage = drug_vocab().parse("x " * 600 + "\n" + "😀" * 700)  # within the limit: read, kept, not checked
    assert long_garbage.drugs == [] and [len(u) for u in long_garbage.unrecognised] == [60, 60]
    assert [d.name for d in drug_vocab().parse("酒石酸美托洛尔缓释片 47.5mg qd").drugs] == ["metoprolol"]


@pytest.mark.parametrize(("trap", "real", "drug"), [
    ("白果", "白果叶", "warfarin"), ("胡黄连", "黄连", "ciclosporin"), ("白附子", "附子", "amiodarone"),
    ("西红花", "红花", "warfarin"), ("片姜黄", "姜黄", "tacrolimus"), ("麻黄根", "麻黄", "phenelzine"),
    ("人参叶", "人参", "warfarin"), ("川牛膝", "牛膝", "warfarin"), ("土三七", "三七", "warfarin"),
])
def test_name_traps_do_not_inherit_an_interaction(trap, real, drug):
    assert interaction_warnings([trap], drug) == []
    assert [w.herbs for w in interaction_warnings([real], drug)] == [(real,)]


def test_processed_forms_and_aliases_do():
    assert interaction_warnings(["炙甘草"], "digoxin")[0].severity == "severe"
    assert interaction_warnings(["红参"], "warfarin")[0].interactions[0]["herb"] == "人参"


def test_one_warning_per_drug_and_concern_names_every_herb_behind_it():
    warnings = interaction_warnings(["甘草", "大黄", "茯苓"], "呋塞米", doses={"甘草": 9})
    assert [(w.severity, w.herbs, w.drug) for w in warnings] == [("severe", ("甘草", "大黄"), "furosemide")]
    message = warnings[0].message
    assert "低血钾" in message and "理论推测" in message  # 大黄's row is theoretical and says so
    assert "甘草 9 g/日" in message and "不按剂量降级" in message  # no verified gram threshold: not downgraded
    assert all(s.url for s in warnings[0].sources)
    assert interaction_warnings(["甘草", "大黄"]) == []  # no drugs, no interaction warnings
    assert interaction_summary(warnings) == "甘草、大黄 与 呋塞米（furosemide）：低血钾（严重）"


def test_severity_follows_the_grade_and_a_wider_class_is_a_possibility():
    assert [w.severity for w in interaction_warnings(["枳实"], "felodipine")] == ["info"]  # minor
    assert [w.severity for w in interaction_warnings(["当归"], "warfarin")] == ["warning"]  # moderate
    assert "外推" in interaction_warnings(["黄柏"], "metformin")[0].message  # extrapolated says so
    possible = interaction_warnings(["甘草"], "diuretics")  # a wider class than loop diuretics: the row may apply
    assert {w.interactions[0]["applies"] for w in possible} == {"possible"} and "若所用药物属于" in possible[0].message


def test_the_screen_forbids_a_major_interaction_for_this_patient_only():
    index = vocab().herb_id
    on_warfarin = patient("华法林")
    assert math.isinf(screen_costs([], on_warfarin, StepperConfig())[index["丹参"]])  # major: forbidden
    assert screen_costs([], on_warfarin, StepperConfig())[index["当归"]] == 4.0  # moderate: the weight
    assert screen_costs([], Patient(), StepperConfig())[index["丹参"]] == 0.0
    assert safety_cost(["丹参", "当归"], on_warfarin) == 3.0 and safety_cost(["丹参", "当归"]) == 0.0
    assert "丹参" not in rules().addition_risks([], patient("metformin"))  # no row of 丹参 with metformin


@pytest.mark.parametrize("weight", [-5, -0.1, math.nan, math.inf, True, "1"])
def test_a_negative_or_non_finite_safety_weight_is_refused(weight):
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        check_safety_weight(weight, "screen_weight")
    with pytest.raises(ValueError, match="screen_weight"):
        StepperConfig(screen_weight=weight)
