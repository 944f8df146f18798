"""`pipeline run` on the micro config, end to end: every stage once, then only what a change touches."""

import json
import shutil

import pytest

from pipeline.config import GrpoConfig, PipelineConfig
from pipeline.release.ship import ship
from pipeline.run import active_stages, making_stages
from pipeline.runfolder import RunFolder
from rxapp.backends import load_backend
from rxapp.modelinfo import file_sha256, saved_stop_thresholds
from tests.conftest import ROOT

MICRO = ROOT / "configs" / "micro.yaml"

FIRST_OUTPUTS = {"config.yaml", "stages", "logs", "data", "knowledge", "distill", "sft"}  # the stages up to sft
STAGES = ["prepare", "knowledge", "distill", "sft", "small", "prefs", "dpo", "grpo", "export", "evaluate", "card"]


def statuses(out) -> dict[str, str]:
    return {r["stage"]: r["status"] for r in json.loads((out / "run.json").read_text())["stages"]}


def test_run_trains_every_stage_then_redoes_only_what_changed(cli, micro_run, tmp_path):
    out = tmp_path / "run"  # the first stages of the shared micro run, which `pipeline run --until sft` made
    out.mkdir()
    for name in FIRST_OUTPUTS:
        (shutil.copytree if (micro_run / name).is_dir() else shutil.copyfile)(micro_run / name, out / name)
    start = ["-m", "pipeline", "run", "--out", str(out)]
    first = cli(*start, "--config", "configs/micro.yaml", "--until", "sft", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert statuses(out) == dict.fromkeys(STAGES[:4], "current")  # a moved run folder is still current

    rest = cli(*start, "--config", "configs/micro.yaml", "--resume", timeout=900)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert statuses(out) == dict.fromkeys(STAGES[:4], "current") | dict.fromkeys(STAGES[4:], "ran")
    rows = json.loads((out / "evaluate" / "test.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in rows[:4]] == ["sft", "dpo", "grpo α=1 (this export)", "Δ dpo − sft"]
    assert all(r["n"] == 16 and r["decoding"] == "stepper:llama" for r in rows[:3])
    card = (out / "export" / "card.md").read_text(encoding="utf-8")
    assert "DPO from the SFT model" in card and "stepper's decisions (α 1" in card and f"{rows[2]['F1@10']:.4f}" in card
    revision = json.loads((out / "evaluate" / "revision-test.json").read_text(encoding="utf-8"))
    assert revision["n"] + revision["too_long"] == 16 and revision["n"]
    assert "## Revising a draft" in card and f"{revision['Jaccard model']:.4f}" in card
    assert "sft epoch" in (out / "logs" / "sft.log").read_text(encoding="utf-8")
    # the revision stop is tuned once, at export, for the model that ships; the trained stages tune from nothing
    tuned = saved_stop_thresholds(out / "export" / "hf")
    [export_log] = [json.loads(line) for line in (out / "logs" / "export.log").read_text(encoding="utf-8").splitlines()
                    if line.startswith("{")]
    assert export_log["kept"] and export_log["revision_stop_threshold"] == tuned.revision
    assert tuned.scratch == saved_stop_thresholds(out / "grpo-a1" / "best").scratch
    assert all("revision_stop_threshold" not in (out / "logs" / f"{stage}.log").read_text(encoding="utf-8")
               for stage in ("sft", "dpo", "grpo"))
    assert (out / "config.yaml").read_text(encoding="utf-8") == MICRO.read_text(encoding="utf-8")

    shipped = tmp_path / "default"
    result = cli("-m", "pipeline", "ship", "--export", str(out / "export"), "--to", str(shipped))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (shipped / "card.md").read_text(encoding="utf-8") == card
    assert file_sha256(shipped / "model-q4_k_m.gguf") == file_sha256(out / "export" / "model-q4_k_m.gguf")
    for backend, path in (("llama", shipped / "model-q4_k_m.gguf"), ("hf", shipped / "hf")):
        assert load_backend(path, backend).name == backend  # the app loads either
    with pytest.raises(ValueError, match="over the 0 MiB limit"):
        ship(out / "export", tmp_path / "too-small", limit=1000)

    changed = tmp_path / "micro-fewer-updates.yaml"
    changed.write_text(MICRO.read_text(encoding="utf-8").replace("updates: 3", "updates: 2"), encoding="utf-8")
    again = cli(*start, "--config", str(changed), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(out) == dict.fromkeys(STAGES[:7], "current") | dict.fromkeys(STAGES[7:], "ran")
    assert len(json.loads((out / "grpo-a1" / "log.json").read_text())["updates"]) == 2

    shipping_sft = tmp_path / "micro-ship-sft.yaml"
    shipping_sft.write_text(changed.read_text(encoding="utf-8") + "ship: sft\n", encoding="utf-8")
    sft_shipped = cli(*start, "--config", str(shipping_sft), timeout=900)
    assert sft_shipped.returncode == 0, sft_shipped.stderr[-3000:]
    assert statuses(out) == dict.fromkeys(STAGES[:8], "current") | dict.fromkeys(STAGES[8:], "ran")
    rows = json.loads((out / "evaluate" / "test.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in rows[:3]] == ["sft (this export)", "dpo", "grpo α=1"]
    card = (out / "export" / "card.md").read_text(encoding="utf-8")
    assert "SFT (" in card and "DPO from the SFT model" not in card  # only the stages that made the model

    refused = cli(*start, "--config", "configs/micro.yaml", "--resume")
    assert refused.returncode == 2 and "differs from the config" in refused.stderr


def test_grpo_starts_from_the_model_its_config_names_and_the_card_lists_only_what_made_it(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.start_model("grpo") == folder.start_model("tradeoff", "sft") == folder.best("sft")
    assert folder.start_model("grpo", "dpo") == folder.best("dpo")
    from_sft = PipelineConfig(ship="grpo")  # the default grpo.start
    assert making_stages(from_sft) == ["prepare", "knowledge", "distill", "sft", "grpo", "export"]
    from_dpo = PipelineConfig(ship="grpo", grpo=GrpoConfig(start="dpo"))
    assert making_stages(from_dpo) == [*STAGES[:8], "export"]
    # a run trains only what makes its model: the preference stage is left to its own commands
    assert [s.name for s in active_stages(from_sft)] == ["prepare", "knowledge", "distill", "sft", "grpo", "export",
                                                         "evaluate", "card"]
    assert [s.name for s in active_stages(from_dpo)] == [s for s in STAGES if s != "tradeoff"]
