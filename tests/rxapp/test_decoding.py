"""The token-level claim rule of a step's explanation (rxapp.decoding.claim_rule), under the domain tokenizer."""

from functools import cache

import pytest

from pipeline.model.tokenizer import build_tokenizer
from rxapp.decoding import claim_rule
from rxapp.knowledge import associated, herb_actions, treats
from rxapp.stepformat import CLAUSE_SEPARATOR, EXPLANATION_MARK, INDICATION, USAGE

SYMPTOMS = ["恶寒发热", "无汗", "头痛", "身痛", "咳嗽", "气喘"]


@cache
def tokenizer():
    return build_tokenizer()


def tokenize(text: str) -> list[int]:
    return tokenizer().encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def one():
    def token(text: str) -> int:
        ids = tokenize(text)
        assert len(ids) == 1, text
        return ids[0]
    return token


def test_an_action_is_tied_to_a_symptom_it_goes_with(one):
    rule = claim_rule(tokenize, "麻黄", SYMPTOMS)
    pairs = {(a, s) for a, lifts in associated("麻黄").items() for s in lifts if s in SYMPTOMS}
    mark = one(EXPLANATION_MARK)
    assert set(rule.allowed([mark])) == {one(a) for a, _ in pairs}  # only the actions tied to this patient
    action = one("发汗解表")
    assert rule.allowed([mark, action]) == [one(CLAUSE_SEPARATOR)]
    words = rule.allowed([mark, action, one(CLAUSE_SEPARATOR)])
    assert set(words) <= {one(INDICATION), one(USAGE)} and words
    for word in words:
        named = word == one(INDICATION)
        expected = {one(s) for a, s in pairs if a == "发汗解表" and treats("麻黄", s) == named}
        assert set(rule.allowed([mark, action, one(CLAUSE_SEPARATOR), word])) == expected
    assert rule.allowed([mark, action, one(CLAUSE_SEPARATOR), words[0], rule.allowed(
        [mark, action, one(CLAUSE_SEPARATOR), words[0]])[0]]) is None  # then free: the line ends


def test_without_a_tie_any_citable_action_and_the_patients_symptoms(one):
    mark = one(EXPLANATION_MARK)
    removal = claim_rule(tokenize, "麻黄", SYMPTOMS, tie=False)  # a removal's reason
    assert set(removal.allowed([mark])) == {one(a) for a in herb_actions("麻黄")}
    assert removal.allowed([mark, one("发汗解表")]) is None
    assert set(removal.allowed([mark, one("发汗解表"), one(CLAUSE_SEPARATOR), one(USAGE)])) == {
        one(s) for s in SYMPTOMS}
    lonely = claim_rule(tokenize, "人参", ["无汗"])  # no action of 人参 goes with 无汗
    assert not any("无汗" in lifts for lifts in associated("人参").values())
    assert set(lonely.allowed([mark])) == {one(a) for a in herb_actions("人参")}
