"""The model card: a Markdown page beside an export (data, stages, metrics against the baselines and the published
results, the app's safety α, file hashes) that the app's model tab shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.data import load_split
from pipeline.evaluate import PUBLISHED
from rxapp.engine import file_sha256
from rxapp.stepper import StepperConfig

CARD_COLUMNS = ("P@5", "F1@5", "F1@10", "F1@20", "Jaccard", "incompat_rate", "avg_herbs", "grounding",
                "format_validity")


def metrics_table(rows: Sequence[dict]) -> str:
    """Markdown table of evaluation rows (missing metrics shown as —)."""
    head = "| model | n | " + " | ".join(c.replace("_", " ") for c in CARD_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(CARD_COLUMNS) + 2)]
    for r in rows:
        cells = " | ".join(f"{r[c]:.4f}" if c in r else "—" for c in CARD_COLUMNS)
        lines.append(f"| {r['model']} | {r.get('n', '—')} | {cells} |")
    return "\n".join(lines)


def load_rows(paths: Sequence[Path]) -> list[dict]:
    """Rows from evaluation JSON files (each holds one row or a list of rows)."""
    rows: list[dict] = []
    for path in paths:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        rows += document if isinstance(document, list) else [document]
    return rows


def render_card(config: PipelineConfig, rows: Sequence[dict], files: Sequence[Path], stop_threshold: float) -> str:
    counts = {s: len(load_split(s)) for s in ("train_full", "validation", "test")}
    splits = sorted({r["split"] for r in rows})
    shown = [{**r, "model": _label(r)} for r in rows]
    published = [{"model": f"{name} (published)", **m} for name, m in PUBLISHED.items()]
    model = config.model
    architecture = (f"LoRA r={model.lora_r} on {model.base}" if model.base else
                    f"Qwen2-shaped, trained from scratch with the domain tokenizer: hidden {model.hidden_size}, "
                    f"{model.layers} layers, {model.heads} heads ({model.kv_heads} KV), MLP {model.intermediate_size}")
    sft = config.sft
    hashes = "\n".join(f"| `{f.name}` | {f.stat().st_size:,} | `{file_sha256(f)}` |" for f in files)
    return f"""# rx model card: `{config.name}`

**Decision support for a qualified TCM practitioner. It is not a diagnosis and not a prescription.** Every
recommendation must be reviewed, and its safety warnings read, by the practitioner who treats the patient.

## Data
- Prescriptions: SMGCN (MIT), symptoms → herbs, the published split: {counts['train_full']:,} train (of which a
  validation split of {counts['validation']:,} is carved out for model selection) and {counts['test']:,} test.
- Herb knowledge (功效, 性味, 归经): KDHR knowledge graph (Apache-2.0). Explanations are written by the offline
  knowledge teacher from these facts and from symptom–herb statistics of the training split only.
- Safety rules (十八反, 十九畏, pregnancy, toxicity, dose limits): `assets/safety/`, each with its source.

## Model and stages
- {architecture}.
- Stages run: teacher distillation (`{config.teacher.kind}` teacher) → SFT ({sft.epochs} epochs at most, lr
  {sft.lr}, weight decay {sft.weight_decay}, step order `{sft.order}`, herb targets `{sft.herb_targets}`, teacher
  weight {sft.teacher_weight}, first-step copies of each record per epoch {sft.first_step_passes}; the checkpoint
  with the best validation F1@10 is kept) → export.
- Preference stages (DPO, step-wise GRPO) have not been run on this model.

## Safety α
The app decodes with α = {StepperConfig.alpha:g} (a logit cost per broken 十八反/十九畏 or pregnancy rule, doubled for
severe ones) and never adds a herb that breaks a severe rule. The metrics below say which α each row used.

## Stopping
Greedy decoding stops once the model's probability that the prescription is still open falls to
{stop_threshold:g} (tuned on validation; `rxapp.decoding.greedy_stop`).

## Metrics ({", ".join(splits)} split)
Rankings: the generated herbs, then the rest, each ordered by the model's first-step probability. Set metrics
(Jaccard, incompatibility rate, average herbs) are on the prescription as generated. The statistical baselines
(co-occurrence, kNN) are shown beside the model: where a model row is below them, the model ranks herbs less
well than those statistics do.

{metrics_table(shown)}

Published results on the same test split (rankings only):

{metrics_table(published)}

## Files
| file | bytes | sha256 |
|---|---|---|
{hashes}

Written {date.today().isoformat()} by `python -m pipeline card`.
"""


def _label(row: dict) -> str:
    """A model path's last two parts and how it was decoded; a baseline's name."""
    path = Path(row["model"])
    name = "/".join(path.parts[-2:]) if len(path.parts) > 1 else row["model"]
    if "decoding" in row:
        return f"{name} ({row['decoding']}, α={row.get('alpha', 0):g})"
    return name + (" (batched greedy, α=0)" if len(path.parts) > 1 else "")


def write_card(config: PipelineConfig, eval_files: Sequence[Path], model_files: Sequence[Path], out: Path,
               stop_threshold: float) -> Path:
    """Write `out` (card.md) atomically."""
    text = render_card(config, load_rows(eval_files), model_files, stop_threshold)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
