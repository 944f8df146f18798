"""The token-level claim rule of a step's explanation (rxapp.decoding.claim_rule), under the domain tokenizer."""

from functools import cache

import pytest

from pipeline.model.tokenizer import build_tokenizer
from rxapp.decoding import claim_rule
from rxapp.knowledge import associated, herb_actions, lead_action, treats
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


def test_a_step_may_cite_only_the_herbs_best_pair_with_this_patient(one):
    rule = claim_rule(tokenize, "麻黄", SYMPTOMS)
    pairs = [(score, a, s) for a, scores in associated("麻黄").items() for s, score in scores.items() if s in SYMPTOMS]
    assert len({a for _, a, _ in pairs}) > 1  # several actions of 麻黄 go with this patient; the best is cited
    _, action, symptom = max(pairs)
    mark = one(EXPLANATION_MARK)
    assert rule.allowed([]) == [mark]  # the step format's colon first: without it nothing below would hold
    assert rule.allowed([mark]) == [one(action)]
    assert rule.allowed([mark, one(action)]) == [one(CLAUSE_SEPARATOR)]
    word = INDICATION if treats("麻黄", symptom) else USAGE
    assert rule.allowed([mark, one(action), one(CLAUSE_SEPARATOR)]) == [one(word)]
    assert rule.allowed([mark, one(action), one(CLAUSE_SEPARATOR), one(word)]) == [one(symptom)]
    assert rule.allowed([mark, one(action), one(CLAUSE_SEPARATOR), one(word), one(symptom)]) == [one("\n")]


def test_a_removal_may_cite_any_citable_action_and_the_patients_symptoms(one):
    mark = one(EXPLANATION_MARK)
    removal = claim_rule(tokenize, "麻黄", SYMPTOMS, tie=False)  # a removal's reason: nothing is tied
    assert set(removal.allowed([mark])) == {one(a) for a in herb_actions("麻黄")}
    assert removal.allowed([mark, one("发汗解表")]) is None
    assert set(removal.allowed([mark, one("发汗解表"), one(CLAUSE_SEPARATOR), one(USAGE)])) == {
        one(s) for s in SYMPTOMS}



def test_a_herb_tied_to_none_of_the_symptoms_cites_its_lead_action_alone(one):
    mark = one(EXPLANATION_MARK)
    lonely = claim_rule(tokenize, "人参", ["无汗"])  # no action of 人参 goes with 无汗
    assert not any("无汗" in scores for scores in associated("人参").values())
    assert lonely.allowed([mark]) == [one(lead_action("人参"))]
    assert lonely.allowed([mark, one(lead_action("人参"))]) == [one("\n")]  # no symptom is claimed
