import dataclasses
from collections import Counter

import pytest

import rxapp.knowledge as knowledge_module
from pipeline.data.records import load_split
from rxapp.knowledge import decoction_actions, facts_for, herb_actions, knowledge, main_actions, names, treats
from rxapp.stepformat import NO_RECORD
from rxapp.vocab import vocab


def test_every_vocabulary_herb_has_an_entry():
    assert set(knowledge()) == set(vocab().herbs)


def test_facts_of_a_well_known_herb():
    facts = facts_for("附子")
    assert facts.kg_match == "exact"
    assert "回阳救逆" in facts.effects and "热" in facts.nature and "辛" in facts.flavour
    assert set(facts.channels) == {"肾", "脾", "心"}
    assert "功效 回阳救逆" in facts.summary()


def test_family_fallback_and_missing_entries_are_explicit():
    assert (facts_for("瓜蒌皮").kg_name, facts_for("瓜蒌皮").kg_match) == ("瓜蒌", "family")
    missing = facts_for("萝卜")  # neither a graph entry nor curated main actions
    assert missing.kg_match is None and "萝卜" not in main_actions() and missing.summary() == NO_RECORD
    # no graph entry, but curated actions: the card says them
    assert facts_for("芍药").kg_match is None
    assert facts_for("芍药").summary() == "功效 养血调经、敛阴止汗、柔肝止痛、平抑肝阳"


def test_a_card_says_the_textbook_actions_where_they_are_curated_else_the_graphs_mixed_list():
    # the graph lists 甘草's actions among indications (补脾益气、气短、腰痛 …); the card gives the textbook's
    assert facts_for("甘草").summary().startswith("功效 补脾益气、清热解毒、祛痰止咳、缓急止痛、调和诸药；性味 甘、平")
    assert "蝼蛄" not in main_actions() and facts_for("蝼蛄").summary().startswith("功效主治 ")


def test_a_card_marks_curated_actions_not_verified(monkeypatch):
    row = dataclasses.replace(main_actions()["甘草"], verified=False)
    monkeypatch.setattr(knowledge_module, "main_actions", lambda: {"甘草": row})
    assert facts_for("甘草").summary().startswith("功效 补脾益气、清热解毒、祛痰止咳、缓急止痛、调和诸药（未核实）；")
    assert facts_for("炒白术").herb == "白术"
    assert facts_for("不存在的药") is None


# -- main actions (assets/knowledge/main_actions.csv, transcribed from the reference notes herb-main-actions.md) --

# Herbs whose vocabulary name the reference maps to a drug only by inference or with a doubt (its FLAG, or ⚑ in part B)
FLAGGED = {"附子", "木香", "芍药", "黄连", "杏", "桑", "豆蔻", "桃", "茴香", "乌头", "牛蒡", "藜",
           "沙参", "寒水石", "何首乌", "皂荚", "枇杷", "郁李", "竹叶", "白芥", "小麦", "女贞"}


def test_every_main_actions_row_is_a_vocabulary_herb_with_actions():
    table = main_actions()
    assert len(table) == 250
    assert set(table) <= set(vocab().herbs)
    assert all(m.actions and all(m.actions) for m in table.values())
    assert all(m.herb == herb and m.sources for herb, m in table.items())


def test_main_actions_cover_nine_tenths_of_the_training_prescriptions():
    counts = Counter(h for r in load_split("train") for h in r.herbs)
    share = sum(n for h, n in counts.items() if h in main_actions()) / sum(counts.values())
    assert share >= 0.9, f"main_actions.csv covers {share:.2%} of herb occurrences in the training split"


def test_main_actions_spot_checks_from_the_reference():
    table = main_actions()
    assert table["麻黄"].actions == ("发汗解表", "宣肺平喘", "利水消肿")
    assert "发汗散寒" in table["麻黄"].identity  # the 药典 2020 wording the cited page did not have
    assert "调和诸药" in table["甘草"].role and "调和诸药" in table["甘草"].actions
    assert table["防风"].actions == ("祛风解表", "胜湿止痛", "止痉")
    assert table["防风"].indications == ("感冒头痛", "风湿痹痛", "风疹瘙痒", "破伤风")
    assert "奔豚" in table["桂枝"].indications and "平冲降气" in table["桂枝"].actions
    assert table["何首乌"].actions[0] == "[生]解毒" and "[制]补肝肾" in table["何首乌"].actions
    assert "胸胁、脘腹胀痛" in table["木香"].indications  # a term with a comma-like 、 stays one term
    assert "ccwanglong.com" in table["猪苓"].sources and table["当归"].role == "酒当归长于活血通经"


def test_main_actions_keep_the_references_flags_and_verification():
    table = main_actions()
    # the reference reads every row's actions and indications in a cited page: none is verified=false
    assert {h for h, m in table.items() if not m.verified} == set()
    assert {h for h, m in table.items() if "FLAG" in m.identity} == FLAGGED
    assert table["沙参"].identity.startswith("FLAG: AMBIGUOUS") and table["竹叶"].identity.startswith("FLAG: 竹叶")
    # identities the reference calls unverified (inferred readings of a short or classical name) say so
    for herb in ("芍药", "桑", "桃", "茴香", "乌头", "藜"):
        assert "unverified" in table[herb].identity and "FLAG" in table[herb].identity, herb
    assert table["芍药"].identity.startswith("Fields = 白芍") and table["白芍"].identity == ""


def test_main_actions_reject_unknown_herbs_and_empty_actions(tmp_path, monkeypatch):
    header = "herb,actions,indications,role,identity,source,verified\n"
    for body, message in (("甘草,补脾益气,,,,s,true\n不存在的药,止痛,,,,s,true\n", "line 3: '不存在的药' is not"),
                          ("甘草,,脾胃虚弱,,,s,true\n", "line 2: 甘草 has no actions")):
        path = tmp_path / "main_actions.csv"
        path.write_text(header + body, encoding="utf-8")
        monkeypatch.setattr(knowledge_module, "MAIN_ACTIONS_FILE", path)
        main_actions.cache_clear()
        try:
            with pytest.raises(ValueError, match=message) as err:
                main_actions()
            assert str(path) in str(err.value)
        finally:
            main_actions.cache_clear()


def test_a_herb_treats_the_symptoms_its_sources_name_in_their_own_words():
    assert treats("草果", "腹痛")  # inside its knowledge-graph effect 心腹痛
    assert treats("茯苓", "浮肿") and treats("茯苓", "腹泻") and treats("茯苓", "不寐")  # 水肿, 泄泻, 失眠
    assert treats("土茯苓", "腹痛") and not treats("土茯苓", "产后腹痛")  # an effect names no longer symptom
    assert not treats("茯苓", "咳血")


def test_only_the_actions_of_the_form_a_decoction_takes_are_cited():
    assert herb_actions("石膏") == ("清热泻火", "除烦止渴")  # (生用) counts; (煅用) holds for 收湿 and what follows
    assert "祛风除湿" in herb_actions("羌活")  # its other wording (祛风胜湿) dropped, the action kept
    assert decoction_actions(["(外用)解毒杀虫", "燥湿止痒", "(内服)止血止泻", "祛除风痰", "(枯矾)收湿敛疮"]) == [
        "止血止泻", "祛除风痰"]
    assert decoction_actions(["峻下冷积", "祛痰(豁痰)利咽", "外用蚀疮"]) == ["峻下冷积", "祛痰利咽"]


def test_a_monograph_term_names_a_symptom_in_its_own_words():
    assert names("咳嗽痰多", "咳嗽") and names("头痛", "头痛") and names("脾虚泄泻", "腹泻")
    assert names("腰膝酸痛", "腰痛") and names("胸胁胀痛", "胸痛") and names("胸胁胀痛", "胁痛")
    assert not names("厥阴头痛", "阴痛") and not names("阴疽肿痛", "阴痛") and not names("肺热喘咳", "热咳")
    assert treats("杜仲", "腰痛") and treats("柴胡", "寒热往来")
