from rxapp.knowledge import facts_for, knowledge
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
    missing = facts_for("芍药")
    assert missing.kg_match is None and missing.summary() == NO_RECORD
    assert facts_for("炒白术").herb == "白术"
    assert facts_for("不存在的药") is None
