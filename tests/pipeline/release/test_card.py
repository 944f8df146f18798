"""Stepper evaluation of an exported GGUF, and the model card written from its results."""

import json
import shutil

from rxapp.engine import model_card
from rxapp.modelinfo import HF_METADATA, file_sha256, stop_thresholds


def test_stepper_evaluation_and_model_card(micro_export, cli, tmp_path):
    gguf = micro_export / "model-q4_k_m.gguf"
    out = tmp_path / "eval.json"
    result = cli("-m", "pipeline", "evaluate", "--model", str(gguf), "--split", "test", "--limit", "8",
                 "--screen-weight", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))
    row, clean = [r for r in rows if not r["model"].startswith("Δ")]  # one row per herb-list view: raw, then clean
    differences = [r for r in rows if r["model"].startswith("Δ")]  # the model against each baseline, per view
    assert len(differences) == 2 * 3 and all(r["P@5 CI"][0] <= r["P@5"] <= r["P@5 CI"][1] for r in differences)
    assert row["decoding"] == "stepper:llama" and row["screen_weight"] == 1 and row["n"] == 8
    assert row["format_validity"] == 1.0 and 0 <= row["P@5"] <= 1  # the stepper only writes parseable steps
    assert (row["lists"], clean["lists"]) == ("raw", "clean") and row["two_names"] == clean["two_names"] == 0
    assert row["summary_coverage"] == 1.0 and row["summary_foreign"] == row["summary_repeats"] == 0  # composed

    result = cli("-m", "pipeline", "card", "--export", str(micro_export), "--config", "configs/micro.yaml",
                 "--eval", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    card = model_card(gguf)
    assert card == (micro_export / "card.md").read_text(encoding="utf-8")
    assert "not a diagnosis" in card and "TCMRGCL (published)" in card
    assert f"{row['P@5']:.4f}" in card and f"{clean['P@5']:.4f}" in card and "stepper:llama, screen 1" in card
    assert "herb lists as published" in card and "cleaned of their substring artefacts" in card
    assert file_sha256(gguf) in card
    assert model_card(micro_export / "hf") == card  # an export's hf/ folder shows the export's card

    shipped = tmp_path / "gguf-only"  # a folder like assets/models/default: the GGUF without hf/
    shipped.mkdir()
    shutil.copyfile(gguf, shipped / gguf.name)
    result = cli("-m", "pipeline", "card", "--export", str(shipped), "--config", "configs/micro.yaml",
                 "--eval", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = stop_thresholds(json.loads((micro_export / "hf" / HF_METADATA).read_text()))
    stopping = f"falls to\n{tuned.scratch:g} building from nothing and to {tuned.revision:g} revising a draft"
    limit = f"ends at {tuned.herb_limit} herbs at most" if tuned.herb_limit else "herbs at most"
    card = model_card(shipped / gguf.name)  # read from the GGUF itself
    assert stopping in card and (limit in card) == bool(tuned.herb_limit)


def test_card_needs_an_export(cli, tmp_path):
    result = cli("-m", "pipeline", "card", "--export", str(tmp_path), "--config", "configs/micro.yaml",
                 "--eval", str(tmp_path / "none.json"))
    assert result.returncode == 2 and "no exported model" in result.stderr
