import pytest

from rxapp.formulas import Resemblance, count, formulas, resembled, substitutes
from rxapp.vocab import vocab


def test_every_formula_is_sourced_and_written_in_vocabulary_names():
    table = formulas()
    assert len(table) == 120 and len({f.name for f in table}) == 120
    assert all(f.sources and f.herbs and set(f.herbs) <= set(vocab().herbs) for f in table)


def test_a_whole_formula_is_named_with_its_book_and_herbs():
    found = resembled(["麻黄", "桂枝", "杏仁", "甘草", "桔梗"])  # 甘草 stands for the formula's 炙甘草
    assert found.formula.name == "麻黄汤" and not found.missing
    assert found.describe() == "类方：麻黄汤（《伤寒论》：麻黄、桂枝、炙甘草、杏仁），本方全含。"


def test_a_large_formula_short_of_one_herb_is_named_with_what_it_lacks():
    found = resembled(["柴胡", "黄芩", "人参", "半夏", "甘草", "生姜"])
    assert found.formula.name == "小柴胡汤" and found.missing == ("大枣",)
    assert found.describe().endswith("本方含其六味，缺大枣。")


def test_a_second_name_of_a_drug_counts_as_the_formula_herb():
    # 麦门冬 is the vocabulary's second name of 麦冬, which 生脉散 lists
    assert resembled(["人参", "麦门冬", "五味子"]).formula.name == "生脉散"


def test_herbs_the_vocabulary_lacks_are_said():
    assert resembled(["生地黄", "当归", "升麻", "黄连"]).describe().endswith("原方另有牡丹皮，词表未收。")


@pytest.mark.parametrize("herbs", [
    ["麻黄", "桂枝", "甘草"],  # 麻黄汤 short of 杏仁: a four-herb formula must be whole
    ["甘草", "生姜", "大枣", "白芍"],  # harmonising herbs alone do not make a formula
    ["黄芪", "丹参", "葛根"],
    [],
])
def test_no_formula_is_named_without_enough_of_one(herbs):
    assert resembled(herbs) is None


def test_the_formula_holding_most_herbs_wins():
    # 四君子汤 is inside 六君子汤: the prescription holding all of the larger one resembles it
    found = resembled(["人参", "白术", "茯苓", "甘草", "陈皮", "半夏"])
    assert isinstance(found, Resemblance) and found.formula.name == "六君子汤"


def test_counts_in_chinese_numerals():
    assert [count(n) for n in (3, 10, 12, 20, 47)] == ["三", "十", "十二", "二十", "四十七"]


def test_a_prescription_is_named_as_the_formula_modified():
    found = resembled(["麻黄", "桂枝", "杏仁", "甘草", "石膏", "桔梗"])
    assert found.added == ("石膏", "桔梗") and found.modification() == "麻黄汤加减：+石膏 +桔梗"
    assert resembled(["柴胡", "黄芩", "人参", "半夏", "甘草", "生姜"]).modification() == "小柴胡汤加减：−大枣"
    assert resembled(["麻黄", "桂枝", "杏仁", "炙甘草"]).modification() == "麻黄汤原方"
    record = found.to_dict()
    assert record["formula"] == "麻黄汤" and record["added"] == ["石膏", "桔梗"] and record["removed"] == []
    assert record["text"] == found.describe()


def test_a_common_substitute_stands_in_for_a_formula_herb_and_is_said():
    # 党参 is another drug than 人参 (never one name), written in its place by modern practice
    assert substitutes() == {"人参": "党参"} and vocab().identity("党参") != vocab().identity("人参")
    found = resembled(["党参", "白术", "茯苓", "甘草"])
    assert found.formula.name == "四君子汤" and found.substituted == (("人参", "党参"),) and not found.missing
    assert set(found.present) == {"白术", "茯苓", "炙甘草"} and found.added == ()
    assert found.describe().endswith("本方含其三味，以党参代人参。")
    assert found.modification() == "四君子汤加减：党参代人参"
    assert found.to_dict()["substituted"] == [{"formula_herb": "人参", "herb": "党参"}]


def test_the_formula_herb_itself_is_preferred_to_its_substitute():
    found = resembled(["人参", "党参", "白术", "茯苓", "甘草"])
    assert found.substituted == () and found.added == ("党参",) and found.modification() == "四君子汤加减：+党参"
    # a substitute does not make a formula that lacks another herb whole: 小柴胡汤 without 大枣, 党参 for 人参
    found = resembled(["柴胡", "黄芩", "党参", "半夏", "甘草", "生姜"])
    assert found.formula.name == "小柴胡汤" and found.missing == ("大枣",)
    assert found.describe().endswith("本方含其五味，以党参代人参，缺大枣。")
