import pytest

from rxapp.vocab import HerbInputError, SymptomInputError, split_herb_list, vocab


def test_vocabulary_sizes_and_ids():
    v = vocab()
    assert len(v.herbs) == 753 and len(v.symptoms) == 360
    assert v.herbs[v.herb_id["附子"]] == "附子"
    assert v.symptoms[v.symptom_id["咳嗽"]] == "咳嗽"


@pytest.mark.parametrize(("name", "family"), [
    ("炙甘草", "甘草"), ("法半夏", "半夏"), ("姜半夏", "半夏"), ("制川乌", "川乌"), ("浙贝母", "贝母"),
    ("川贝母", "贝母"), ("天花粉", "瓜蒌"), ("瓜蒌皮", "瓜蒌"), ("玄明粉", "芒硝"), ("白芍", "芍药"),
])
def test_families_join_processed_forms_and_sibling_species(name, family):
    assert vocab().family(name) == family


def test_resolution_exact_alias_processed_unknown():
    v = vocab()
    assert v.resolve_herb("附子").via == "exact"
    assert (v.resolve_herb("姜半夏").herb, v.resolve_herb("姜半夏").via) == ("半夏", "alias")
    assert (v.resolve_herb("炒白术").herb, v.resolve_herb("炒白术").via) == ("白术", "processed")
    assert (v.resolve_herb("ＡＢＣ").herb, v.resolve_herb("ＡＢＣ").text) == (None, "ABC")  # NFKC-normalised
    assert v.resolve_herb("白附子").family == "白附子"  # a different herb, not a form of 附子


def test_tables_point_only_at_vocabulary_entries():
    v = vocab()
    assert set(v.aliases.values()) <= set(v.herbs)
    assert {s for targets in v.synonyms.values() for s in targets} <= set(v.symptoms)


def test_parser_finds_longest_terms_synonyms_and_reports_the_rest():
    parsed = vocab().parse_symptoms("恶寒发热，头疼两天，伴有失眠")
    assert parsed.symptoms == ["恶寒发热", "头痛", "不寐"]
    assert parsed.unrecognised == ["两天"]


def test_parser_accepts_a_list_and_multi_symptom_synonyms():
    assert vocab().parse_symptoms(["咳嗽", "咽喉肿痛"]).symptoms == ["咳嗽", "咽喉痛", "咽肿"]


def test_ambiguous_term_is_reported_with_suggestions_not_guessed():
    parsed = vocab().parse_symptoms("发热")
    assert parsed.symptoms == [] and parsed.unrecognised == ["发热"]
    assert "恶寒发热" in parsed.suggestions["发热"]


@pytest.mark.parametrize(("text", "fragments"), [
    ("😀咳嗽", ["😀"]),
    ("<b>咳嗽</b>", ["<b>", "</b>"]),
    ("hello 咳嗽", ["hello"]),
])
def test_garbage_is_reported_never_dropped(text, fragments):
    parsed = vocab().parse_symptoms(text)
    assert parsed.symptoms == ["咳嗽"] and parsed.unrecognised == fragments


@pytest.mark.parametrize("text", ["", "   ", "，、。", "咳" * 10_000])
def test_empty_or_huge_input_is_a_clear_error(text):
    with pytest.raises(SymptomInputError):
        vocab().parse_symptoms(text)


def test_herb_list_splitting_and_limits():
    assert split_herb_list("附子、半夏, 甘草 附子") == ["附子", "半夏", "甘草"]
    for bad in ["", "草" * 30, " ".join(f"药{i}" for i in range(61))]:
        with pytest.raises(HerbInputError):
            split_herb_list(bad)


def test_cleaning_drops_artefacts_beside_their_longer_names_and_merges_synonyms():
    v = vocab()
    assert v.clean_herbs(["白附子", "附子", "半夏"]) == ["白附子", "半夏"]  # 附子 was an artefact of 白附子
    assert v.clean_herbs(["附子", "半夏"]) == ["附子", "半夏"]  # 附子 alone is 附子
    assert v.clean_herbs(["杏", "杏仁", "苦杏仁", "麦门冬"]) == ["杏仁", "麦冬"]
    assert v.clean_herbs(["杏", "麻黄"]) == ["杏仁", "麻黄"]  # alone, 杏 clearly means 杏仁
    assert v.clean_herbs(["桑", "杏仁"]) == ["桑", "杏仁"]  # alone, 桑 is only inferred to be 桑白皮: kept
    assert v.clean_herbs(["芍药", "赤芍"]) == ["赤芍"]  # 赤芍药 written in full


def test_second_names_and_display_names():
    v = vocab()
    assert {"杏", "苦杏仁", "附子", "麦门冬"} <= v.second_names(["杏仁", "白附子", "麦冬"])
    assert "白附子" in v.second_names(["附子"]) and "半夏" not in v.second_names(["附子"])
    assert v.display_name("杏") == "杏仁" and v.display_name("麦门冬") == "麦冬" and v.display_name("附子") == "附子"
    assert "桑白皮" in v.display_name("桑") and "推定" in v.display_name("桑")
    assert "未定" in v.display_name("桃")


def test_one_drugs_names_share_its_safety_family():
    v = vocab()
    assert v.family("杏") == v.family("杏仁") == v.family("苦杏仁")  # the 苦杏仁 rules reach 杏仁 and 杏
    assert v.family("麦门冬") == v.family("麦冬")
