"""Metrics on cases computed by hand."""

import pytest

from pipeline.metrics import (
    herbs_named,
    jaccard,
    names_a_drug_twice,
    pairwise_incompatibility,
    prescription_metrics,
    ranking_metrics,
    summary_metrics,
)

RANKING_1 = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] + [f"z{i}" for i in range(10)]
RANKING_2 = [f"y{i}" for i in range(20)]


def test_precision_recall_f1_at_k_single():
    m = ranking_metrics([RANKING_1], [{"a", "c", "x"}])
    assert m["P@5"] == pytest.approx(2 / 5) and m["R@5"] == pytest.approx(2 / 3)
    assert m["F1@5"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))  # = 0.5
    assert m["F1@5"] == pytest.approx(0.5)
    assert m["P@10"] == pytest.approx(0.2) and m["P@20"] == pytest.approx(0.1) and m["R@20"] == pytest.approx(2 / 3)


def test_f1_is_taken_of_the_averaged_precision_and_recall():
    m = ranking_metrics([RANKING_1, RANKING_2], [{"a", "c", "x"}, {"q"}])
    assert m["P@5"] == pytest.approx(0.2) and m["R@5"] == pytest.approx(1 / 3)
    assert m["F1@5"] == pytest.approx(0.25)  # 2·0.2·(1/3) / (0.2 + 1/3)
    m = ranking_metrics([RANKING_1, RANKING_2], [{"a", "b", "c", "d", "e"}, {"y0"}])
    # per record: P@5 = 1 and 0.2, R@5 = 1 and 1 -> P 0.6, R 1, F1 0.75 (the mean of per-record F1s would be 2/3)
    assert m["F1@5"] == pytest.approx(0.75)


def test_jaccard():
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard({"a"}, {"a"}) == 1.0 and jaccard({"a"}, {"b"}) == 0.0


def test_incompatibility_rates_and_average_size():
    prescriptions = [["附子", "半夏", "当归"], ["当归", "川芎"], ["甘草", "海藻", "甘遂"], ["人参", "五灵脂"]]
    truths = [set(p) for p in prescriptions]
    m = prescription_metrics(prescriptions, truths)
    assert m["incompat_rate"] == pytest.approx(3 / 4)  # 十八反 in 1 and 3, 十九畏 in 4
    assert m["pairwise_incompat"] == pytest.approx((1 / 3 + 0 + 2 / 3 + 1) / 4)
    assert m["avg_herbs"] == pytest.approx(10 / 4) and m["Jaccard"] == 1.0
    assert m["safety_cost"] == pytest.approx((2 + 0 + 4 + 1) / 4)  # 十八反 severe (2 each), 十九畏 a warning (1)
    assert pairwise_incompatibility(["附子"]) == 0.0


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError):
        ranking_metrics([RANKING_1], [])


def test_a_drug_named_twice_is_counted():
    assert names_a_drug_twice(["杏", "杏仁"]) and names_a_drug_twice(["麦门冬", "麦冬"])
    assert names_a_drug_twice(["附子", "白附子"]) and not names_a_drug_twice(["附子", "半夏"])
    assert not names_a_drug_twice(["杏"])  # one name, even if not the drug's usual one


def test_summary_metrics_catch_loops_missing_and_foreign_herbs():
    herbs = ["白附子", "甘草", "茯苓"]
    good = summary_metrics(["白附子祛风痰，治中风；甘草、茯苓补脾益气。"], [herbs])
    assert good == {"summary_coverage": 1.0, "summary_foreign": 0.0, "summary_repeats": 0.0}  # 附子 is not read
    broken = summary_metrics(["甘草补脾益气；半夏燥湿化痰；半夏燥湿化痰。"], [herbs])
    assert broken["summary_coverage"] == pytest.approx(1 / 3)
    assert broken["summary_foreign"] == 1.0 and broken["summary_repeats"] == 1.0


def test_herbs_are_read_apart_from_the_actions_that_contain_their_names():
    assert herbs_named("石菖蒲醒神益智，治耳聋；白附子祛风痰。") == ["石菖蒲", "白附子"]
