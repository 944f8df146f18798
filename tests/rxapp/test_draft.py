"""Reading the draft a revision starts from: typed herbs or a classical formula, one name per drug, nothing dropped."""

import pytest

from rxapp.draft import MAX_DRAFT_HERBS, DraftInputError, read_draft
from rxapp.formulas import FormulaInputError, formula_named
from rxapp.vocab import vocab


def test_a_formula_is_read_by_its_name_or_its_pinyin_with_or_without_tones():
    for name in ("麻黄汤", " 麻黄汤 ", "má huáng tāng", "mahuangtang", "Ma Huang Tang"):
        draft = read_draft(formula=name)
        assert draft.herbs == ("麻黄", "桂枝", "炙甘草", "杏仁") and draft.formula.name == "麻黄汤"
        assert draft.label == "麻黄汤（《伤寒论》）" and not draft.unknown


def test_an_unknown_formula_gets_the_closest_names():
    with pytest.raises(FormulaInputError, match="小柴胡汤"):
        formula_named("小柴胡")
    with pytest.raises(FormulaInputError, match="麻黄汤"):
        formula_named("麻皇汤")
    with pytest.raises(FormulaInputError, match="no formula name"):
        formula_named("  ")


def test_typed_herbs_take_one_name_per_drug_and_unknown_names_are_kept_not_dropped():
    draft = read_draft("麻黄、麦门冬 麦冬，炒白术 鬼药")
    assert draft.herbs == ("麻黄", "麦冬", "白术") and draft.unknown == ("鬼药",) and draft.formula is None
    assert dict(draft.merged) == {"麦门冬": "麦冬", "炒白术": "白术"}
    assert draft.label == "初稿" and draft.to_dict()["unknown"] == ["鬼药"]
    assert read_draft(["杏仁", "杏"]).herbs == ("杏仁",)  # 杏 is the data's artefact of 杏仁: one drug


def test_no_draft_or_a_bad_one():
    assert read_draft() is None and read_draft("  ", None) is None
    with pytest.raises(DraftInputError, match="not both"):
        read_draft("麻黄", "麻黄汤")
    with pytest.raises(DraftInputError, match="at most"):
        read_draft([h for h in vocab().herbs if vocab().identity(h) == h][: MAX_DRAFT_HERBS + 1])
