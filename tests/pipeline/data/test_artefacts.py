"""The substring-artefact map: found by its rule on the data, and the cleaned lists it gives."""

from collections import Counter

from pipeline.data.artefacts import differences, find_artefacts
from pipeline.data.records import load_split
from rxapp.vocab import vocab


def test_the_reviewed_map_is_what_the_rule_finds_with_the_datas_counts():
    assert differences(load_split("train_full")) == []


def test_the_rule_finds_the_known_artefacts_and_not_a_frequent_herb_by_chance():
    found = find_artefacts(load_split("train_full"))
    assert found["附子"]["白附子"] == (556, 556) and found["杏"]["杏仁"] == (1619, 1619)
    assert {"蒺藜", "藜芦"} <= found["藜"].keys() and "胡黄连" in found["黄连"] and "麻黄根" in found["麻黄"]
    assert "芍药" not in found  # below the rule's coverage: in the map by review
    assert vocab().artefacts["芍药"].found_by == "review"


def test_every_artefact_says_what_it_means_alone():
    for token, artefact in vocab().artefacts.items():
        assert artefact.certainty in ("itself", "clear", "inferred", "unclear"), token
        assert (artefact.means is not None) == (artefact.certainty in ("clear", "inferred")), token


def test_clean_lists_hold_no_artefact_beside_its_longer_name_and_one_name_per_drug():
    v = vocab()
    raw, clean = load_split("train_full"), load_split("train_full", "clean")
    assert [r.id for r in raw] == [r.id for r in clean] and [r.symptoms for r in raw] == [r.symptoms for r in clean]
    for record in clean:
        herbs = set(record.herbs)
        assert len(herbs) == len(record.herbs) and herbs, record.id
        assert not any(v.longer_names.get(h, frozenset()) & herbs for h in herbs), record.id
        assert len({v.identity(h) for h in herbs}) == len(herbs), record.id
    counts = Counter(h for r in clean for h in r.herbs)
    assert counts["杏"] == 0 and counts["麦门冬"] == 0 and counts["郁李"] == 0  # mapped to 杏仁, 麦冬, 郁李仁
    assert counts["附子"] == 2395 - 556 and counts["桑"] == 594  # real 附子 kept; 桑 alone stays (inferred only)
