"""Corrupted drafts and the teacher's revision examples: what SFT learns 减 from, and what the revision test uses."""

import random

import pytest

from pipeline.data.records import load_split
from pipeline.data.revision import MAX_CHANGES, corrupt, plausible, teach_revisions
from pipeline.data.teacher import TrainStats
from rxapp.stepformat import NOT_NEEDED, parse_response, render_prompt
from rxapp.vocab import vocab


@pytest.fixture(scope="module")
def stats():
    return TrainStats.from_records(load_split("train", "clean"))


def test_a_corruption_drops_true_herbs_and_adds_plausible_wrong_ones_naming_no_true_drug(stats):
    records = load_split("validation", "clean")[:300]
    rng, v = random.Random(0), vocab()
    for record, candidates in zip(records, plausible(stats, [r.symptoms for r in records]), strict=True):
        c = corrupt(record.herbs, candidates, 2, 2, rng)
        truth = set(record.herbs)
        assert set(c.dropped) <= truth and not set(c.wrong) & truth and set(c.wrong) <= set(candidates)
        assert sorted(c.draft) == sorted((truth - set(c.dropped)) | set(c.wrong))
        assert len(c.dropped) == min(2, len(truth) - 1) and truth - set(c.dropped)  # at least one true herb kept
        assert not {v.identity(h) for h in c.wrong} & {v.identity(h) for h in truth}
        assert not set(c.wrong) & v.second_names(truth)
    drafts = [corrupt(r.herbs, ["甘草"], 1, 1, random.Random(7)).draft for r in records[:5]]
    assert drafts == [corrupt(r.herbs, ["甘草"], 1, 1, random.Random(7)).draft for r in records[:5]]  # seeded


def test_revision_examples_give_the_draft_then_remove_the_wrong_and_restore_the_dropped(stats):
    records = load_split("train", "clean")[:400]
    examples = teach_revisions(records, stats)
    assert examples == teach_revisions(records, stats)  # reproducible
    changed = 0
    for example, record in zip(examples, records, strict=True):
        parsed = parse_response(example["response"])
        assert parsed.well_formed and sorted(parsed.herbs) == sorted(record.herbs)
        assert example["response"].startswith(example["given"])
        assert example["prompt"] == render_prompt(record.symptoms, draft=example["draft"])
        given = parse_response(example["given"], final=False)
        assert given.herbs == example["draft"] and all(s.action == "add" for s in given.steps)
        moves = parsed.steps[len(given.steps):]
        removed = [s.herb for s in moves if s.action == "remove"]
        assert sorted(removed) == sorted(example["wrong"])
        assert sorted(s.herb for s in moves if s.action == "add") == sorted(example["dropped"])
        assert [s.action for s in moves] == sorted((s.action for s in moves), reverse=True)  # 减 before 加
        assert all(s.explanation.endswith(NOT_NEEDED) for s in moves if s.action == "remove")
        assert len(example["dropped"]) <= MAX_CHANGES and len(example["wrong"]) <= MAX_CHANGES
        changed += bool(moves)
    assert changed > 0.9 * len(examples)
