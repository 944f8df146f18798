"""`pipeline tradeoff`: the α sweep of step-wise GRPO. For each α the GRPO model (trained when missing) and the
model it started from are exported to Q4_K_M and scored on one split through the app's stepper with the app's own
safety cost off (α_app = 0), so that only training moves the incompatibility rate. Writes RUN/tradeoff.json, a
Markdown table and RUN/tradeoff.png (incompatibility rate against F1@10), which the model card embeds."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.evaluate import evaluate_model, write_json
from pipeline.export import shipped_gguf
from pipeline.grpo import alpha_folder, train_grpo


def scored(model_dir: Path, export_dir: Path, split: str, limit: int | None) -> dict:
    return evaluate_model(shipped_gguf(model_dir, export_dir), split, limit, "llama", 0.0)


def sweep(cfg: PipelineConfig, run_dir: Path, start: Path, alphas: Sequence[float], split: str,
          limit: int | None = None) -> list[dict]:
    """One row for the starting model, then one per α (its GRPO model trained first when RUN/grpo-aα/best is
    missing)."""
    rows = [scored(start, run_dir / "grpo-start" / "export", split, limit) | {"grpo_alpha": None}]
    for alpha in alphas:
        folder = alpha_folder(run_dir, alpha)
        if not (folder / "best" / "config.json").exists():
            at_alpha = copy.deepcopy(cfg)
            at_alpha.grpo.alpha = alpha
            train_grpo(at_alpha, run_dir, start)
        rows.append(scored(folder / "best", folder / "export", split, limit) | {"grpo_alpha": alpha})
    write_json(rows, run_dir / "tradeoff.json")
    plot_tradeoff(rows, run_dir / "tradeoff.png")
    return rows


def label(row: dict) -> str:
    return "start (no GRPO)" if row["grpo_alpha"] is None else f"GRPO α={row['grpo_alpha']:g}"


def tradeoff_table(rows: Sequence[dict]) -> str:
    """Markdown: per model, F1@10, its change relative to α = 0, P@5, Jaccard, incompatibility rate and average
    herbs."""
    reference = next((r for r in rows if r["grpo_alpha"] == 0), None)
    lines = ["| model | n | F1@10 | F1@10 vs α=0 | P@5 | Jaccard | holds a 十八反/十九畏 pair | avg herbs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        relative = f"{(r['F1@10'] / reference['F1@10'] - 1) * 100:+.1f} %" if reference else "—"
        lines.append(f"| {label(r)} | {r['n']} | {r['F1@10']:.4f} | {relative} | {r['P@5']:.4f} | {r['Jaccard']:.4f} | "
                     f"{r['incompat_rate'] * 100:.2f} % | {r['avg_herbs']:.1f} |")
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["incompat_rate"] * 100, r["F1@10"], marker="s" if r["grpo_alpha"] is None else "o")
        ax.annotate(label(r), (r["incompat_rate"] * 100, r["F1@10"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.set_xlabel("prescriptions holding an incompatible pair, 18 fan / 19 wei (%)")
    ax.set_ylabel("F1@10")
    ax.set_title(f"GRPO incompatibility penalty α ({rows[0]['split']} split, Q4_K_M, app α = 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
