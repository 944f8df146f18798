"""Baselines through the one evaluator, and the evaluate command."""

import json

import pytest

from pipeline.data.records import load_split
from pipeline.evaluate import Prediction, baseline_predictor, evaluate, format_table, score


def test_cooccurrence_matches_the_independent_computation(cli, tmp_path):
    out = tmp_path / "cooc.json"
    result = cli("-m", "pipeline", "evaluate", "--baseline", "cooccurrence", "--split", "test", "--lists", "raw",
                 "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row == json.loads(out.read_text(encoding="utf-8"))
    # computed independently for this issue: P@5 ≈ 0.2875, F1@10 ≈ 0.2692 (agreement to 3 decimals)
    assert row["P@5"] == pytest.approx(0.2875, abs=5e-4)
    assert row["F1@10"] == pytest.approx(0.2692, abs=5e-4)
    assert row["n"] == 3443 and {"R@20", "Jaccard", "incompat_rate", "avg_herbs"} <= row.keys()
    assert "TCMRGCL (published)" in result.stderr  # the table goes to stderr with --json


def test_baselines_rank_in_the_expected_order_on_validation():
    train, validation = load_split("train"), load_split("validation")
    scores = {name: evaluate(baseline_predictor(name, train, size=7, k=50), validation)["P@5"]
              for name in ("popularity", "cooccurrence", "knn")}
    assert scores["popularity"] < scores["cooccurrence"] and scores["popularity"] < scores["knn"]
    assert all(0.1 < s < 0.5 for s in scores.values())


def test_evaluator_refuses_rankings_shorter_than_20():
    records = load_split("test")[:2]
    with pytest.raises(ValueError, match="fewer than 20"):
        evaluate(lambda rs: [Prediction(["甘草"], ["甘草"]) for _ in rs], records)


def test_table_shows_published_rows_on_test_only():
    row = {"model": "m", "P@5": 0.3}
    assert "TCMRGCL" in format_table([row], "test") and "TCMRGCL" not in format_table([row], "validation")


def test_unknown_baseline_is_a_usage_error(cli):
    result = cli("-m", "pipeline", "evaluate", "--baseline", "magic")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_clean_lists_score_predictions_by_one_name_per_drug():
    records = load_split("test", "clean")[:3]
    ranking = ["杏", "杏仁", "麦门冬", "麦冬", *load_split("train")[0].herbs, *[f"h{i}" for i in range(20)]]
    predictions = [Prediction(ranking, ["杏", "杏仁", "麦门冬"]) for _ in records]
    clean, raw = score(predictions, records, "clean"), score(predictions, records, "raw")
    assert clean["two_names"] == raw["two_names"] == 1.0  # counted as written, whatever the view
    assert clean["avg_herbs"] == 2.0 and raw["avg_herbs"] == 3.0  # 杏仁 and 麦冬 once each, cleaned


def test_evaluate_reports_raw_and_clean_lists_with_the_doctors_rates(cli, tmp_path):
    out = tmp_path / "pop.json"
    result = cli("-m", "pipeline", "evaluate", "--baseline", "popularity", "--split", "test", "--limit", "300",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["lists"] for r in rows] == ["raw", "clean"]
    assert "test split, raw herb lists" in result.stdout and "test split, clean herb lists" in result.stdout
    doctors = [line for line in result.stdout.splitlines() if line.startswith("doctors")]
    assert len(doctors) == 2 and doctors[0] != doctors[1]  # the doctors' own lists change when cleaned


def test_the_cooccurrence_revision_takes_as_many_steps_as_asked_and_removes_its_lowest_scored():
    from pipeline.evaluate import cooccurrence_revision, cooccurrence_scores, revision_cases
    from rxapp.vocab import vocab

    cases = revision_cases("validation", 40)
    assert cases == revision_cases("validation", 40)  # seeded
    assert all(len(c.corruption.wrong) <= 2 and len(c.corruption.dropped) <= 2 for c in cases)
    scores = cooccurrence_scores(cases)
    revised = cooccurrence_revision(cases, scores, [1] * 40, [2] * 40)
    for case, herbs, row in zip(cases, revised, scores, strict=True):
        draft = case.corruption.draft
        assert len(set(draft) - set(herbs)) == min(1, len(draft)) and len(set(herbs) - set(draft)) == 2
        assert set(draft) - set(herbs) == {min(draft, key=lambda h: row[vocab().herb_id[h]])}


def test_foreign_drafts_take_their_wrong_herbs_from_other_cases_prescriptions():
    from pipeline.evaluate import revision_cases

    cases = revision_cases("validation", 60, wrong="foreign")
    assert cases == revision_cases("validation", 60, wrong="foreign")  # seeded
    lists = [set(c.record.herbs) for c in cases]
    for i, case in enumerate(cases):
        wrong = set(case.corruption.wrong)
        assert not wrong & lists[i] and set(case.corruption.draft) - lists[i] == wrong
        assert all(any(h in herbs for j, herbs in enumerate(lists) if j != i) for h in wrong)
    assert sum(len(c.corruption.wrong) == 2 for c in cases) >= 58  # fewer only where the other lists are all taken
    plausible = revision_cases("validation", 60)
    assert [c.corruption.wrong for c in cases] != [c.corruption.wrong for c in plausible]


def test_evaluate_revision_scores_a_models_revisions_beside_the_statistics(cli, micro_export, tmp_path):
    out = tmp_path / "revision.json"
    result = cli("-m", "pipeline", "evaluate", "--model", str(micro_export / "model-f16.gguf"), "--revision",
                 "--split", "validation", "--limit", "12", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(out.read_text(encoding="utf-8"))
    assert row["n"] + row["too_long"] == 12 and row["n"]
    assert 0 <= row["removal_precision"] <= 1 and 0 <= row["restored"] <= 1
    assert 0 <= row["cooccurrence_removal_precision"] <= 1
    assert row["Jaccard draft"] > 0 and {"Jaccard model", "Jaccard cooccurrence"} <= row.keys()
    low, high = row["Jaccard model − draft CI"]
    assert low <= row["Jaccard model"] - row["Jaccard draft"] <= high
    assert "co-occurrence revision" in result.stdout and "removal precision" in result.stdout
