"""Tuning the stop rule: each threshold and herb limit is scored on the list where its rule would stop, the shortest
rule that ties the best is chosen, and a revision's pass runs the app's stepper on a draft without stopping."""

import shutil
from dataclasses import replace
from itertools import pairwise

from pipeline.config import StoppingConfig
from pipeline.data.records import load_split
from pipeline.model.generation import decode
from pipeline.model.llm import load_trained
from pipeline.model.stopping import (
    HERB_LIMITS,
    MAX_REVISION_STEPS,
    THRESHOLDS,
    best_threshold,
    revision_pass,
    shortest_tied_rule,
    tune_stopping,
)
from rxapp.backends import load_backend
from rxapp.modelinfo import StopThresholds, saved_stop_thresholds, write_model_metadata
from rxapp.stepformat import SUMMARY_HEADER, parse_response


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


def test_a_from_nothing_pass_is_the_unstopped_decoding_cut_at_the_herb_limit(micro_export):
    model, tokenizer = load_trained(micro_export / "hf")
    symptom_sets = [r.symptoms for r in load_split("validation", "clean")[:4]]
    never = decode(model, tokenizer, symptom_sets, StopThresholds(scratch=0.0), max_new_tokens=160)
    cut = decode(model, tokenizer, symptom_sets, StopThresholds(scratch=0.0, herb_limit=3), max_new_tokens=160,
                 steps_only=True)
    for (text, probabilities), (whole, all_probabilities) in zip(cut, never, strict=True):
        assert len(parse_response(whole).herbs) > 3  # so that the cut is at the limit, not where the text ran out
        assert parse_response(text).herbs == parse_response(whole).herbs[:3]
        assert probabilities == all_probabilities[:2]  # asked at the first two boundaries; the third must stop
        assert text.endswith("【") and SUMMARY_HEADER not in text  # the steps alone


def test_the_shortest_rule_that_ties_the_best_is_chosen():
    herbs = ["甘草", "桂枝", "麻黄", "杏仁", "生姜", "大枣", "白芍", "茯苓", "当归", "白术", "人参", "黄芪"]
    never = ([0.99] * (len(herbs) - 1), [herbs[: i + 1] for i in range(len(herbs))])  # no threshold below 1 stops
    passes, four, five = [never] * 40, set(herbs[:4]), set(herbs[:5])
    assert shortest_tied_rule(passes, [four] * 40)[1:] == (4, 1.0)  # the doctors' list exactly, at the limit
    # 21 cases want five herbs and 19 four: five scores best by .01, which no interval tells from chance, so the
    # tie goes to the shorter list
    assert shortest_tied_rule(passes, [four] * 19 + [five] * 21)[1] == 4
    # when every case needs six, a shorter rule loses on every case, and is no tie
    assert shortest_tied_rule(passes, [set(herbs[:6])] * 40)[1:] == (6, 1.0)


def test_tuning_writes_the_rule_or_keeps_the_from_nothing_one(micro_export, tmp_path):
    validation = [{"symptoms": r.symptoms, "herbs": r.herbs} for r in load_split("validation", "clean")[:8]]
    folder = tmp_path / "hf"
    shutil.copytree(micro_export / "hf", folder)
    settings = StoppingConfig(cases=8, revision_cases=2)
    tuned = tune_stopping(folder, validation, "cpu", settings)
    assert saved_stop_thresholds(folder) == tuned
    assert tuned.scratch in THRESHOLDS and tuned.herb_limit in HERB_LIMITS and tuned.revision in THRESHOLDS
    write_model_metadata(folder, StopThresholds(0.37, 0.5, 7))
    kept = tune_stopping(folder, validation, "cpu", settings, kept=StopThresholds(0.37, 0.5, 7))
    assert (kept.scratch, kept.herb_limit) == (0.37, 7) and saved_stop_thresholds(folder) == kept
