import json

import pytest

from pipeline.data.records import load_split
from pipeline.data.teacher import TrainStats, claim_is_grounded, explain, step_is_relevant, teach
from rxapp.knowledge import herb_actions
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
    assert explain("麻黄", symptoms, stats) == "发汗解表，主治无汗"
    for herb in ("甘草", "杏仁", "桂枝", "防风", "茯苓", "干姜"):
        claims = explanation_claims(explain(herb, symptoms, stats))
        assert claims[0].kind == "effect" and claims[0].value in herb_actions(herb), (herb, claims)
        assert step_is_relevant(herb, explain(herb, symptoms, stats), symptoms, stats) or len(claims) == 1


def test_step_relevance_on_hand_made_steps(stats):
    assert step_is_relevant("麻黄", "发汗解表，主治无汗", ["无汗"], stats)
    assert not step_is_relevant("防风", "安神，用于恶寒发热", ["恶寒发热"], stats)  # not a main action of 防风
    assert not step_is_relevant("麻黄", "发汗解表，用于头晕", ["无汗"], stats)  # not this patient's symptom
    assert step_is_relevant("甘草", "调和诸药", ["咳嗽"], stats) and not step_is_relevant("麻黄", "发汗解表", [], stats)


def test_the_cited_symptom_is_the_likeliest_not_the_first(stats):
    cited = [(claim.value, record.symptoms[0])
             for record in load_split("validation")[:300] if len(record.symptoms) >= 2
             for step in parse_response(teach(record, stats)["response"]).steps
             for claim in explanation_claims(step.explanation) if claim.kind != "effect"]
    assert len(cited) > 300 and sum(c == first for c, first in cited) / len(cited) < 0.6
