"""Tuning the stop thresholds: each threshold is scored on the list where its rule would stop, and a revision's pass
runs the app's stepper on a draft without stopping."""

from dataclasses import replace
from itertools import pairwise

from pipeline.data.records import load_split
from pipeline.model.stopping import MAX_REVISION_STEPS, THRESHOLDS, best_threshold, revision_pass
from rxapp.backends import load_backend


def test_each_threshold_scores_the_list_where_its_rule_stops():
    truth = {"甘草", "桂枝"}
    # still open 0.9, 0.6 and 0.3 at the boundaries where the rule was asked; the pass ends on a fourth list
    lists = [["甘草"], ["甘草", "桂枝"], ["甘草", "桂枝", "麻黄"], ["甘草", "桂枝", "麻黄", "杏仁"]]
    best, score = best_threshold([([0.9, 0.6, 0.3], lists)], [truth])
    assert score == 1.0 and 0.6 <= best < 0.9  # those stop at the second boundary, on the doctors' list
    never = best_threshold([([0.99], [["甘草", "麻黄"], ["甘草", "桂枝"]])], [truth])
    assert never == (THRESHOLDS[0], 1.0)  # a pass no threshold below 1 stops is scored on its last list
    # 1 stops at the first boundary: for a revision, no change, the best answer when every change hurts
    assert best_threshold([([0.99], [["甘草", "桂枝"], ["甘草", "桂枝", "麻黄"]])], [truth]) == (1.0, 1.0)


def test_a_revision_pass_holds_the_list_at_every_boundary_and_is_cut(micro_export):
    record = load_split("validation", "clean")[0]
    draft = [*record.herbs[:3], "附子", "大黄"]
    with load_backend(micro_export / "hf") as backend:
        backend.stop_thresholds = replace(backend.stop_thresholds, revision=0.0)  # never stop: every prefix
        opens, lists = revision_pass(backend, record.symptoms, draft)
    assert lists[0] == draft and len(lists) == len(opens) + 1 and len(lists) <= MAX_REVISION_STEPS + 1
    assert all(0.0 <= o <= 1.0 for o in opens) and list(opens) == sorted(opens, reverse=True)  # Π(1 − p) falls
    assert all(len(set(before) ^ set(after)) == 1 for before, after in pairwise(lists))  # one herb per step
