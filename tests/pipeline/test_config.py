import re

import pytest

from pipeline.config import PipelineConfig

CONFIGS = ["configs/micro.yaml", "configs/default.yaml", "configs/qwen2.5-0.5b.yaml", "configs/qwen2.5-7b.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    cfg = PipelineConfig.load(path)
    assert cfg.model.intermediate_size % 256 == 0 and cfg.model.hidden_size % cfg.model.heads == 0


def test_unknown_settings_are_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        PipelineConfig.load(path)


def test_the_shipped_stage_must_be_a_trained_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ship: small\n")
    with pytest.raises(ValueError, match="ship must be one of sft, dpo, grpo"):
        PipelineConfig.load(path)


def test_the_defaults_are_the_shipped_model_settings():
    # configs/default.yaml trained the shipped model; it overrides nothing, so a drift in a dataclass default would
    # silently change what every other config inherits
    shipped = PipelineConfig.load("configs/default.yaml").to_dict()
    assert shipped == {**PipelineConfig().to_dict(), "name": "default"}
    assert shipped["ship"] == "grpo" and shipped["sft"]["set_loss"] == "sum" and shipped["sft"]["epochs"] == 2
    assert shipped["grpo"]["start"] == "sft" and shipped["grpo"]["policy_share"] == 1.0  # the shipped GRPO model's
    assert shipped["herb_lists"] == "clean"


def test_a_base_to_adapt_and_a_model_to_continue_exclude_each_other(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  base: some/qwen\n  init: runs/default/sft/best\n")
    with pytest.raises(ValueError, match="exclude each other"):
        PipelineConfig.load(path)


def test_the_herb_lists_must_be_raw_or_clean(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("herb_lists: cleaned\n")
    with pytest.raises(ValueError, match="herb_lists must be one of raw, clean"):
        PipelineConfig.load(path)


@pytest.mark.parametrize(("setting", "message"), [
    ("grpo:\n  lr: 1e-5\n", "grpo:lr: expected a number, got '1e-5'"),  # YAML 1.1 reads 1e-5 as text
    ("sft:\n  epochs: 2.5\n", "sft:epochs: expected a whole number, got 2.5"),
    ("evaluate:\n  limit: many\n", "evaluate:limit: expected a whole number or null, got 'many'"),
    ("evaluate:\n  tradeoff_alphas: [0, x]\n", "tradeoff_alphas: expected a list of numbers"),
    ("grpo:\n  retune_stop: 1\n", "grpo:retune_stop: expected true or false, got 1"),
    ("grpo:\n  alpha: -5\n", "grpo: alpha must be a finite number ≥ 0, got -5"),  # it would reward unsafe herbs
    ("grpo:\n  alpha: .nan\n", "grpo: alpha must be a finite number ≥ 0, got nan"),
    ("grpo:\n  start: small\n", "grpo: start must be sft or dpo, got 'small'"),
    ("grpo:\n  revision_share: 1.5\n", "grpo: revision_share must be between 0 and 1, got 1.5"),
    ("sft:\n  precision: fp16\n", "sft: precision must be auto, bf16 or fp32, got 'fp16'"),
    ("sft:\n  validation_loss_cases: 0\n", "sft: validation_loss_cases must be at least 1 (or null: all), got 0"),
    ("evaluate:\n  tradeoff_alphas: [0, -1]\n", "evaluate: each of tradeoff_alphas must be a finite number ≥ 0"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_its_key(tmp_path, setting, message):
    path = tmp_path / "bad.yaml"
    path.write_text(setting)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        PipelineConfig.load(path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("alpha", ["-5", "nan"])
def test_a_negative_or_non_finite_alpha_on_the_command_line_is_one_line(cli, tmp_path, alpha):
    result = cli("-m", "pipeline", "grpo", "--config", "configs/micro.yaml", "--out", str(tmp_path), "--alpha", alpha)
    assert result.returncode == 2 and "alpha must be a finite number ≥ 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "grpo").exists()
