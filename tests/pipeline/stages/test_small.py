"""The small BART of the preference stage trains on the micro config and is evaluated like every model."""

import json

from pipeline.data.records import load_split
from pipeline.model.bart import BART_MAX_HERBS, is_small_model, load_small, predict, rankings
from rxapp.vocab import vocab


def test_small_trains_and_keeps_the_best_epoch(micro_small):
    assert is_small_model(micro_small) and not is_small_model(micro_small.parent.parent / "sft" / "best")
    log = json.loads((micro_small.parent / "log.json").read_text())
    assert len(log) == 2 and log[-1]["train_loss"] < 6.0 and max(e["val_F1@10"] for e in log) > 0.1


def test_small_writes_vocabulary_herb_lists_and_full_rankings(micro_small):
    model, tokenizer = load_small(micro_small)
    symptom_sets = [r.symptoms for r in load_split("test")[:30]]
    lists, scores = predict(model, tokenizer, symptom_sets)
    assert scores.shape == (30, len(vocab().herbs))
    for herbs in lists:
        assert 1 <= len(herbs) == len(set(herbs)) <= BART_MAX_HERBS and set(herbs) <= set(vocab().herbs)
    _, ranked = rankings(model, tokenizer, symptom_sets)
    assert all(set(r[: len(h)]) == set(h) and len(r) == len(vocab().herbs) for r, h in zip(ranked, lists, strict=True))


def test_small_is_a_row_of_the_evaluation(micro_small, cli, tmp_path):
    out = tmp_path / "small.json"
    result = cli("-m", "pipeline", "evaluate", "--model", str(micro_small), "--split", "validation", "--limit", "40",
                 "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    row, clean = [r for r in json.loads(result.stdout) if not r["model"].startswith("Δ")]  # Δ: against baselines
    assert clean["lists"] == "clean" and row["n"] == 40 and {"P@5", "F1@10", "Jaccard", "avg_herbs"} <= row.keys()
    assert "grounding" not in row  # it writes herb lists, not explanations
    assert "cooccurrence" in result.stderr
