import json

import pytest

from pipeline.data.records import load_split
from pipeline.data.teacher import TrainStats, claim_is_grounded, teach
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
