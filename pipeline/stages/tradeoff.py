"""`pipeline tradeoff`: the α sweep of step-wise GRPO. For each α the GRPO model (trained when missing) and the
model it started from are exported to Q4_K_M and scored on one split through the app's stepper with the app's own
safety cost off (α_app = 0), so that only training moves the incompatibility rate. Writes RUN/tradeoff.json, a
Markdown table and RUN/tradeoff.png (incompatibility rate against F1@10), which the model card embeds."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.evaluate import evaluate_model, without_cases
from pipeline.release.card import plot_tradeoff
from pipeline.release.export import shipped_gguf
from pipeline.runfolder import RunFolder, read_json, write_json
from pipeline.stages.grpo import train_grpo

SWEEP_SETTINGS = ("updates", "states", "group", "kl", "lr")  # the GRPO settings the card names for the sweep


def scored(model_dir: Path, export_dir: Path, split: str, limit: int | None) -> dict:
    [row] = evaluate_model(shipped_gguf(model_dir, export_dir), split, limit, "llama", 0.0, lists=("raw",))
    return row


def sweep(cfg: PipelineConfig, run_folder: RunFolder, start: Path, alphas: Sequence[float], split: str,
          limit: int | None = None) -> list[dict]:
    """One row for the starting model, then one per α (its GRPO model trained first when RUN/grpo-aα/best is
    missing)."""
    rows = [scored(start, run_folder.sweep_start / "export", split, limit) | {"grpo_alpha": None}]
    for alpha in alphas:
        folder = run_folder.stage("grpo", alpha)
        if not (folder / "best" / "config.json").exists():
            at_alpha = copy.deepcopy(cfg)
            at_alpha.grpo.alpha = alpha
            train_grpo(at_alpha, run_folder, start)
        trained_by = read_json(folder / "log.json")["settings"]  # this model's own, which may predate the config's
        rows.append(scored(folder / "best", folder / "export", split, limit)
                    | {"grpo_alpha": alpha, "grpo_settings": {k: trained_by[k] for k in SWEEP_SETTINGS}})
    write_json(without_cases(rows), run_folder.tradeoff)
    plot_tradeoff(rows, run_folder.tradeoff.with_suffix(".png"))
    return rows
