import json

import pytest

from pipeline.data import load_split
from pipeline.teacher import TrainStats, teach
from rxapp.knowledge import knowledge
from rxapp.stepformat import explanation_claims, parse_response


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
    checked = 0
    for record in load_split("validation")[:300]:
        for step in parse_response(teach(record, stats)["response"]).steps:
            facts = knowledge()[step.herb]
            for claim in explanation_claims(step.explanation):
                checked += 1
                assert {
                    "effect": claim.value in facts.effects,
                    "indication": claim.value in facts.effects and claim.value in record.symptoms,
                    "usage": claim.value in record.symptoms and stats.p(step.herb, claim.value) > 0,
                }[claim.kind], (step.herb, claim)
    assert checked > 3000


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
