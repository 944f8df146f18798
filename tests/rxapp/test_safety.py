import pytest

from rxapp.safety import DoseError, Patient, incompatible_pairs, parse_dose, parse_doses, rules, safety_cost


def severe_rules(herbs, pregnant=False, doses=None):
    return {w.rule for w in rules().check_prescription(herbs, Patient(pregnant), doses) if w.severity == "severe"}


@pytest.mark.parametrize("herbs", [["附子", "半夏"], ["甘草", "海藻"], ["炙甘草", "甘遂"], ["制川乌", "浙贝母"],
                                   ["草乌", "天花粉"], ["藜芦", "白芍"], ["藜芦", "北沙参"], ["甘草", "京大戟"]])
def test_eighteen_antagonisms_are_severe(herbs):
    assert "十八反" in severe_rules(herbs)


def test_nineteen_fears_are_warnings():
    warnings = rules().check_prescription(["人参", "五灵脂"])
    assert [(w.severity, w.rule, w.herbs) for w in warnings] == [("warning", "十九畏", ("人参", "五灵脂"))]


def test_pregnancy_rules_apply_only_when_pregnant():
    assert severe_rules(["麝香"], pregnant=True) == {"妊娠禁用"}
    assert severe_rules(["麝香"], pregnant=False) == set()
    caution = rules().check_prescription(["红花"], Patient(pregnant=True))
    assert [(w.severity, w.rule) for w in caution] == [("warning", "妊娠慎用")]


def test_a_clean_prescription_has_no_warnings():
    assert rules().check_prescription(["当归", "川芎", "白芍"], Patient(pregnant=False)) == []


def test_toxicity_by_grade_exact_name_first():
    by_herb = {w.herbs[0]: (w.severity, w.rule) for w in rules().check_prescription(["川乌", "制川乌", "苦杏仁"])
               if w.rule in {"大毒", "有毒", "小毒"}}
    assert by_herb == {"川乌": ("warning", "大毒"), "制川乌": ("warning", "有毒"), "苦杏仁": ("info", "小毒")}


def test_withdrawn_aristolochic_herbs_are_severe_and_marked_unverified():
    [w] = rules().check_prescription(["关木通"])
    assert (w.severity, w.rule, w.verified) == ("severe", "马兜铃酸", False)
    assert "未核实" in w.message


def test_dose_limits():
    assert "超量" in severe_rules(["附子"], doses={"附子": 30})
    assert "超量" not in severe_rules(["附子"], doses={"附子": 9})
    assert "超量" in severe_rules(["制附子"], doses={"制附子": 20})  # alias falls back to the family's limit


def test_addition_check_reports_only_what_the_candidate_brings():
    warnings = rules().check_addition(["甘草", "当归"], "海藻")
    assert [(w.rule, w.herbs) for w in warnings] == [("十八反", ("甘草", "海藻"))]


def test_every_warning_is_sourced():
    all_herbs = ["附子", "半夏", "人参", "五灵脂", "麝香", "马兜铃", "川乌", "水牛角"]
    for w in rules().check_prescription(all_herbs, Patient(pregnant=True), {"附子": 60}):
        assert w.sources and all(s.title for s in w.sources), w


def test_unknown_herb_is_flagged_as_unchecked():
    [w] = rules().check_prescription(["不存在的药"])
    assert (w.rule, w.severity) == ("未识别", "warning")


def test_incompatible_pair_count_ignores_information_only_pairs():
    assert incompatible_pairs(["甘草", "海藻", "甘遂", "当归"]) == 2
    assert incompatible_pairs(["川乌", "水牛角"]) == 0


@pytest.mark.parametrize("bad", ["-3", "0", "abc", "nan", "inf", "1e9", "300"])
def test_bad_doses_are_refused(bad):
    with pytest.raises(DoseError):
        parse_dose(bad)


def test_dose_parsing():
    assert parse_dose("9g") == 9.0
    assert parse_doses(["附子=9", "半夏=6"], ["附子", "半夏"]) == {"附子": 9.0, "半夏": 6.0}
    for items in (["附子"], ["当归=9"], ["=9"]):
        with pytest.raises(DoseError):
            parse_doses(items, ["附子"])


def test_safety_cost_weighs_each_pair_and_pregnancy_rule_by_severity():
    assert safety_cost(["甘草", "甘遂", "麻黄"]) == 2.0  # 十八反 (severe)
    assert safety_cost(["人参", "五灵脂"]) == 1.0  # 十九畏 (a warning)
    assert safety_cost(["甘草", "海藻", "甘遂", "人参", "五灵脂"]) == 5.0
    assert safety_cost(["甘草", "当归"]) == 0.0 and safety_cost([]) == 0.0
    assert safety_cost(["麝香"], Patient(pregnant=True)) == 2.0 and safety_cost(["麝香"]) == 0.0  # 妊娠禁用
    # the order of the list does not matter: the cost of the whole is the sum of what each addition brings
    assert safety_cost(["甘遂", "麻黄", "甘草"]) == safety_cost(["甘草", "甘遂", "麻黄"])
