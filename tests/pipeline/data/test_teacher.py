import json

import numpy as np
import pytest

from pipeline.data.records import load_split
from pipeline.data.teacher import (
    TrainStats,
    claim_is_grounded,
    echoes,
    explain,
    monograph_action,
    pair_score,
    source_association,
    step_is_relevant,
    teach,
)
from rxapp.knowledge import herb_actions, lead_action
from rxapp.stepformat import Claim, explanation_claims, parse_response


@pytest.fixture(scope="module")
def stats():
    return TrainStats.from_records(load_split("train"))


def test_teacher_responses_parse_and_keep_the_doctors_herbs(stats):
    for record in load_split("validation")[:300]:
        example = teach(record, stats)
        parsed = parse_response(example["response"])
        assert parsed.well_formed, example["response"]
        assert sorted(parsed.herbs) == sorted(record.herbs) and parsed.herbs == example["herbs"]


def test_step_order_is_most_certain_first(stats):
    record = load_split("validation")[0]
    order = teach(record, stats)["herbs"]
    scores = [sum(stats.p(h, s) for s in record.symptoms) for h in order]
    assert scores == sorted(scores, reverse=True)


def test_every_claim_is_a_fact_or_a_training_statistic(stats):
    claims = [(step.herb, record.symptoms, claim)
              for record in load_split("validation")[:300]
              for step in parse_response(teach(record, stats)["response"]).steps
              for claim in explanation_claims(step.explanation)]
    assert len(claims) > 500
    assert all(claim_is_grounded(claim, herb, symptoms, stats) for herb, symptoms, claim in claims)


def test_grounding_check_on_hand_made_claims(stats):
    assert claim_is_grounded(Claim("effect", "回阳救逆"), "附子", ["畏寒"], stats)
    assert not claim_is_grounded(Claim("effect", "清热解毒"), "附子", ["畏寒"], stats)
    assert claim_is_grounded(Claim("indication", "咳嗽"), "甘草", ["咳嗽"], stats)
    assert not claim_is_grounded(Claim("indication", "咳嗽"), "甘草", ["头痛"], stats)  # not this patient's
    assert claim_is_grounded(Claim("usage", "咳嗽"), "杏仁", ["咳嗽"], stats)
    assert not claim_is_grounded(Claim("usage", "不存在"), "杏仁", ["不存在"], stats)


def test_statistics_come_from_the_training_split_only():
    train_only = TrainStats.from_records(load_split("train"))
    with_validation = TrainStats.from_records(load_split("train_full"))
    assert (train_only.popularity < with_validation.popularity).any()


def test_distill_writes_jsonl_and_reuses_its_cache(cli, tmp_path):
    result = cli("-m", "pipeline", "distill", "--split", "validation", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2292 and json.loads(lines[0])["id"] == "train-5"
    stamp = (tmp_path / "validation.jsonl").stat().st_mtime_ns
    assert cli("-m", "pipeline", "distill", "--split", "validation", "--out", str(tmp_path)).returncode == 0
    assert (tmp_path / "validation.jsonl").stat().st_mtime_ns == stamp


def test_a_step_cites_a_main_action_for_a_symptom_that_goes_with_it(stats):
    symptoms = ["恶寒发热", "无汗", "头痛", "身痛", "咳嗽", "气喘"]
    assert explain("麻黄", symptoms, stats) == "宣肺平喘，主治气喘"
    for herb in ("甘草", "杏仁", "桂枝", "防风", "茯苓", "干姜"):
        claims = explanation_claims(explain(herb, symptoms, stats))
        assert claims[0].kind == "effect" and claims[0].value in herb_actions(herb), (herb, claims)
        assert step_is_relevant(herb, explain(herb, symptoms, stats), symptoms) or len(claims) == 1


def test_pairs_the_prescriptions_confounded_are_not_cited(stats):
    """The association measured on prescriptions tied these; the sources do not pair them."""
    for herb, action, symptom in [("黄芩", "安胎", "恶寒发热"), ("甘草", "祛痰止咳", "潮热"),
                                  ("麻黄", "利水消肿", "气喘"), ("杏仁", "润肠通便", "身痛"),
                                  ("白术", "安胎", "恶寒"), ("甘草", "清热解毒", "噎膈")]:
        assert pair_score(herb, action, symptom, stats) == -np.inf, (herb, action, symptom)
    for herb, action, symptom in [("麻黄", "发汗解表", "无汗"), ("川芎", "祛风止痛", "头痛"),
                                  ("杏仁", "降气止咳平喘", "咳嗽")]:
        assert pair_score(herb, action, symptom, stats) > 0, (herb, action, symptom)


def test_the_sources_pairing_of_action_words_and_symptoms():
    sources = source_association()
    assert sources.lift("宣肺平喘", "气喘") == max(sources.lift("宣肺", "气喘"), sources.lift("平喘", "气喘"))
    assert sources.lift("宣肺平喘", "气喘") > sources.lift("利水消肿", "气喘")
    assert sources.lift("敛阴止汗", "无汗") == -np.inf  # no herb pairs 止汗 with 无汗
    assert "气喘" in sources.symptoms("宣肺平喘") and "无汗" not in sources.symptoms("敛阴止汗")
    assert echoes("祛风止痛", "头痛") and echoes("疏散退热", "壮热") and not echoes("补血活血", "吐血")


def test_a_herb_tied_to_no_symptom_is_explained_by_its_role_or_lead_action(stats):
    assert lead_action("甘草") == "调和诸药" and lead_action("当归") == herb_actions("当归")[0] == "补血活血"
    assert explain("甘草", ["角弓反张"], stats) == "调和诸药"
    assert explain("人参", ["耳痛"], stats) == "大补元气"


def test_where_the_sources_pair_nothing_the_herbs_own_monograph_gives_the_action(stats):
    """柴胡's 主治 holds 寒热往来, which no other herb's sources name: its monograph ties it to 疏散退热, the action
    that shares 热 with the term."""
    assert monograph_action("柴胡", "寒热往来") == ("疏散退热", False)  # by 热, which 14 symptoms hold
    assert explain("柴胡", ["寒热往来"], stats) == "疏散退热，主治寒热往来"
    assert monograph_action("杜仲", "腰痛") == ("强筋骨", False)  # no action shares a character: the sources' best
    assert monograph_action("柴胡", "咳嗽") is None and monograph_action("麻黄根", "自汗") is None  # not curated
    assert explain("川芎", ["胁痛"], stats) == "活血行气，主治胁痛"  # 祛风止痛 shares only 痛: the sources' pair first
    assert 0 < pair_score("柴胡", "疏散退热", "寒热往来", stats) < pair_score("川芎", "活血行气", "胁痛", stats)


def test_a_monograph_pair_by_a_telling_character_comes_before_the_sources(stats):
    assert monograph_action("桔梗", "咳嗽") == ("祛痰", True)  # 咳嗽痰多, not the sources' 利咽
    assert explain("桔梗", ["咳嗽"], stats) == "祛痰，主治咳嗽"
    assert explain("半夏", ["胸闷"], stats) == "消痞散结，主治胸闷"  # 胸脘痞闷


def test_step_relevance_on_hand_made_steps():
    assert step_is_relevant("麻黄", "发汗解表，主治无汗", ["无汗"])
    assert not step_is_relevant("防风", "安神，用于恶寒发热", ["恶寒发热"])  # not a main action of 防风
    assert not step_is_relevant("麻黄", "发汗解表，用于头晕", ["无汗"])  # not this patient's symptom
    assert not step_is_relevant("黄芩", "安胎，用于恶寒发热", ["恶寒发热"])  # a main action the sources do not pair
    assert step_is_relevant("甘草", "调和诸药", ["咳嗽"]) and not step_is_relevant("麻黄", "发汗解表", [])
    assert step_is_relevant("柴胡", "疏散退热，主治寒热往来", ["寒热往来"])  # its monograph's pair
    assert not step_is_relevant("柴胡", "升举阳气，主治寒热往来", ["寒热往来"])


def test_the_cited_symptom_is_the_likeliest_not_the_first(stats):
    cited = [(claim.value, record.symptoms[0])
             for record in load_split("validation")[:600] if len(record.symptoms) >= 2
             for step in parse_response(teach(record, stats)["response"]).steps
             for claim in explanation_claims(step.explanation) if claim.kind != "effect"]
    assert len(cited) > 300 and sum(c == first for c, first in cited) / len(cited) < 0.6
