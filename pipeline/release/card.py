"""The model card: a Markdown page beside an export (data, stages, metrics against the baselines and the published
results, the app's safety α, the GRPO α sweep's table and plot, file hashes) that the app's model tab shows."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from pipeline.config import GrpoConfig, PipelineConfig
from pipeline.data.records import load_split
from pipeline.evaluate import PUBLISHED
from pipeline.runfolder import read_json, write_text
from rxapp.modelinfo import StopThresholds, file_sha256
from rxapp.stepper import StepperConfig

DEFAULT_STAGES = ("distill", "sft", "export")  # what `pipeline sft` then `pipeline export` produce
CARD_COLUMNS = ("P@5", "F1@5", "F1@10", "F1@20", "Jaccard", "incompat_rate", "safety_cost", "two_names", "avg_herbs",
                "grounding", "step_relevance", "first_symptom", "format_validity", "summary_coverage",
                "summary_foreign", "summary_repeats")
LISTS_HEADINGS = {"raw": "herb lists as published (comparable with the published results; every ranker gets free "
                         "hits on substring artefacts such as 杏 beside 杏仁)",
                  "clean": "herb lists cleaned of their substring artefacts, one name per drug (assets/vocab/"
                           "artefacts.yaml): what a practitioner would count"}


def cell(row: dict, column: str) -> str:
    """A metric as the card shows it: a difference with its 95 % paired bootstrap interval when it has one."""
    if column not in row:
        return "—"
    if f"{column} CI" in row:
        low, high = row[f"{column} CI"]
        return f"{row[column]:+.4f} [{low:+.4f}, {high:+.4f}]"
    return f"{row[column]:.4f}"


def metrics_table(rows: Sequence[dict]) -> str:
    """Markdown table of evaluation rows (missing metrics shown as —; differences with their intervals)."""
    head = "| model | n | " + " | ".join(c.replace("_", " ") for c in CARD_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(CARD_COLUMNS) + 2)]
    for r in rows:
        cells = " | ".join(cell(r, c) for c in CARD_COLUMNS)
        lines.append(f"| {r['model']} | {r.get('n', '—')} | {cells} |")
    return "\n".join(lines)


def metrics_tables(rows: Sequence[dict]) -> str:
    """One Markdown table per herb-list view the rows hold (rows without one are on raw lists)."""
    views = dict.fromkeys(r.get("lists", "raw") for r in rows)
    tables = {view: metrics_table([r for r in rows if r.get("lists", "raw") == view]) for view in views}
    return "\n\n".join(f"On the {LISTS_HEADINGS[view]}:\n\n{table}" for view, table in tables.items())


def export_files(folder: Path) -> list[Path]:
    """The files of an export that the card lists with their hashes: the GGUFs and the hf/ folder's files."""
    return sorted(folder.glob("*.gguf")) + sorted(p for p in (folder / "hf").glob("*") if p.is_file())


def load_rows(paths: Sequence[Path]) -> list[dict]:
    """Rows from evaluation JSON files (each holds one row or a list of rows)."""
    rows: list[dict] = []
    for path in paths:
        document = read_json(path)
        rows += document if isinstance(document, list) else [document]
    return rows


def stage_list(config: PipelineConfig, stages: Sequence[str]) -> str:
    """One Markdown bullet per stage that produced the model, with the settings that shaped it."""
    sft, prefs, dpo, grpo = config.sft, config.prefs, config.dpo, config.grpo
    described = {
        "distill": f"teacher distillation (`{config.teacher.kind}` teacher)",
        "sft": f"SFT ({f'continuing `{config.model.init}`, ' if config.model.init else ''}{sft.epochs} epoch(s) at "
               f"most, lr {sft.lr}, weight decay {sft.weight_decay}, revision examples {sft.revision_share} of the "
               f"records per epoch, step order "
               f"`{sft.order}`, herb targets `{sft.herb_targets}` with the `{sft.set_loss}` loss, teacher weight "
               f"{sft.teacher_weight}, first-step copies of each record per epoch {sft.first_step_passes}, then "
               f"{sft.ranking_passes} ranking pass(es) over first-step copies alone at lr {sft.ranking_lr}; the "
               "checkpoint with the best validation F1@10 is kept)",
        "small": f"the small BART of the preference stage ({config.small.layers} encoder and {config.small.layers} "
                 f"decoder layers, d_model {config.small.d_model})",
        "prefs": f"implicit preference pairs ({prefs.cases or 'all'} training cases × {prefs.samples} samples at "
                 f"temperature {prefs.temperature}, Jaccard margin {prefs.margin}; rule in `pipeline/stages/prefs.py`)",
        "dpo": f"DPO from the SFT model (β {dpo.beta}, lr {dpo.lr}, {dpo.epochs} epoch(s)"
               + (", then KTO on the unpaired feedback, if any)" if dpo.kto else ")"),
        "grpo": f"step-wise GRPO on the stepper's decisions (α {grpo.alpha:g}, {grpo.updates} updates × "
                f"{grpo.states} states × {grpo.group} rollouts at T {grpo.temperature:g}, λ {grpo.step_weight}, "
                f"clip {grpo.clip}, exact KL {grpo.kl}, lr {grpo.lr}; {grpo.policy_share:.0%} of the states from the "
                "policy's own rollouts) from the model of the stage above",
        "export": "export (merged HF folder, GGUF f16, Q8_0 and Q4_K_M)",
    }
    return "\n".join(f"  - {described[s]}" for s in stages if s in described)


def tradeoff_section(rows: Sequence[dict], grpo: GrpoConfig) -> str:
    """The GRPO α sweep: its table and plot (tradeoff.png beside the card), or nothing when none was run."""
    if not rows:
        return ""
    # the settings that trained the sweep's models, recorded with them; a sweep written before they were names none
    trained = next((r["grpo_settings"] for r in rows if r.get("grpo_settings")), None)
    settings = (f"{trained['updates']} updates × {trained['states']} states × {trained['group']} rollouts, "
                f"κ {trained['kl']}, lr {trained['lr']}" if trained else "its settings not recorded with the sweep")
    return f"""
## Incompatibility penalty α of step-wise GRPO
Each α trains its own GRPO model from the same start, the first row ({settings});
each is scored as Q4_K_M through the app's stepper on {rows[0]["n"]} {rows[0]["split"]} cases (raw lists) with the
app's own safety cost off, so that only training moves the rate of prescriptions holding a 十八反/十九畏 pair. The
Jaccard and average-herb columns show what GRPO does to the written prescriptions. The sweep chooses α for the
recipe; the shipped model is the one trained at the config's α ({grpo.alpha:g}) with the config's settings
({grpo.updates} updates), and where it comes from another run of the recipe (another SFT start, other settings),
its own rows above are what it scores.

{tradeoff_table(rows)}

![F1@10 and Jaccard against the incompatibility rate for each α](tradeoff.png)
"""


def revision_section(row: dict | None) -> str:
    """The exported model revising corrupted drafts (pipeline.evaluate.evaluate_revision), beside the statistics."""
    if not row:
        return ""
    cells = {name: f"{row[f'Jaccard {name}']:.4f}" for name in ("draft", "cooccurrence", "model")}
    gaps = {name: f"{row['Jaccard model'] - row[f'Jaccard {name}']:+.4f} "
                  f"[{row[f'Jaccard model − {name} CI'][0]:+.4f}, {row[f'Jaccard model − {name} CI'][1]:+.4f}]"
            for name in ("draft", "cooccurrence")}
    left_out = f" {row['too_long']} drafts too long for the model's context were left out." if row.get("too_long") \
        else ""
    lowest = (f"; the herb co-occurrence scores lowest: {row['cooccurrence_removal_precision']:.3f}"
              if "cooccurrence_removal_precision" in row else "")  # scored since 2026-12-07
    return f"""
## Revising a draft
{row['n']:,} {row['split']} drafts, each the doctors' list (clean) with {row['changes']['dropped']} of its herbs
dropped and {row['changes']['added']} plausible wrong herbs added, revised through the app's stepper (greedy, screen
off; `python -m pipeline evaluate --revision`). The co-occurrence revision removes the draft's herbs the training
statistics score lowest for the symptoms and adds the best-scoring ones, as many steps as the model took.

| list | Jaccard vs the doctors' |
|---|---|
| the draft | {cells['draft']} |
| co-occurrence revision | {cells['cooccurrence']} |
| the model's revision | {cells['model']} |

Model − draft {gaps['draft']}; model − co-occurrence {gaps['cooccurrence']} (95 % paired intervals). The model
proposed no change to {row['unrevised']:.1%} of the drafts (its revision stop threshold, tuned on validation drafts,
stops at once where its changes are not expected to help). Per draft the model removed {row['removals']:.2f} and
added {row['additions']:.2f} herbs; removal precision
{row['removal_precision']:.3f} (a random removal: {row['random_removal_precision']:.3f}{lowest}); dropped herbs restored
{row['restored']:.3f}.{left_out}
"""


def herb_limit(stopping: StopThresholds) -> str:
    return (f", and a prescription built from nothing ends at {stopping.herb_limit} herbs at most"
            if stopping.herb_limit else "")


def render_card(config: PipelineConfig, rows: Sequence[dict], files: Sequence[Path], stopping: StopThresholds,
                stages: Sequence[str] = DEFAULT_STAGES, tradeoff: Sequence[dict] = (), revision: dict | None = None
                ) -> str:
    counts = {s: len(load_split(s)) for s in ("train_full", "validation", "test")}
    splits = sorted({r["split"] for r in rows})
    shown = [{**r, "model": _label(r)} for r in rows]
    published = [{"model": f"{name} (published)", **m} for name, m in PUBLISHED.items()]
    model = config.model
    origin = f"continued from `{model.init}` (its weights and tokenizer)" if model.init else (
        "trained from scratch with the domain tokenizer")
    architecture = (f"LoRA r={model.lora_r} on {model.base}" if model.base else
                    f"Qwen2-shaped, {origin}: hidden {model.hidden_size}, "
                    f"{model.layers} layers, {model.heads} heads ({model.kv_heads} KV), MLP {model.intermediate_size}")
    hashes = "\n".join(f"| `{f.name}` | {f.stat().st_size:,} | `{file_sha256(f)}` |" for f in files)
    return f"""# rx model card: `{config.name}`

**Decision support for a qualified TCM practitioner. It is not a diagnosis and not a prescription.** Every
recommendation must be reviewed, and its safety warnings read, by the practitioner who treats the patient.

## Data
- Prescriptions: SMGCN (MIT), symptoms → herbs, the published split: {counts['train_full']:,} train (of which a
  validation split of {counts['validation']:,} is carved out for model selection) and {counts['test']:,} test.
  Every stage learned and was tuned on the {"clean herb lists (substring artefacts removed, one name per drug: "
  "`assets/vocab/artefacts.yaml`)" if config.herb_lists == "clean" else "herb lists as published"}.
- Herb knowledge (功效, 性味, 归经): KDHR knowledge graph (Apache-2.0). Explanations are written by the offline
  knowledge teacher from these facts and from symptom–herb statistics of the training split only.
- Safety rules (十八反, 十九畏, pregnancy, toxicity, dose limits): `assets/safety/`, each with its source.
- Herb–drug interactions (`assets/safety/herb_drug_interactions.csv`): a **curated subset** of 63 sourced rows over
  35 herbs, not an exhaustive interaction database; each row states its evidence level (case reports, clinical or
  pharmacokinetic studies, or only extrapolated or theoretical). They act at decoding and in the warnings, for the
  drugs the patient takes; the model never saw them in training.

## Model and stages
- {architecture}.
- Stages run, in order:
{stage_list(config, stages)}

## Safety screen
The app decodes with a screen weight of {StepperConfig.screen_weight:g} (a logit cost per broken 十八反/十九畏 or
pregnancy rule, doubled for severe ones) and never adds a herb that breaks a severe rule. The metrics below say which
screen weight each row used.

## Stopping
Greedy decoding stops once the model's probability that the prescription is still open falls to
{stopping.scratch:g} building from nothing and to {stopping.revision:g} revising a draft{herb_limit(stopping)}
(each tuned on validation; `rxapp.decoding.greedy_stop`, `pipeline.model.stopping`).

## Metrics ({", ".join(splits)} split)
Rankings: every herb by the model's first-step probability (`rxapp.ranking`). Set metrics
(Jaccard, incompatibility rate, average herbs) are on the prescription as generated; "two names" is the share of
prescriptions naming one drug twice (麦门冬 with 麦冬, 附子 beside 白附子). The statistical baselines
(co-occurrence, kNN) are shown beside the model: where a model row is below them, the model ranks herbs less
well than those statistics do. Δ rows give a difference with its 95 % paired bootstrap interval over the same test
cases (1,000 resamples, seeded) for P@5, F1@10 and Jaccard: a difference counts only when its interval excludes 0.

{metrics_tables(shown)}

Published results on the same test split (rankings only):

{metrics_table(published)}
{revision_section(revision)}{tradeoff_section(tradeoff, config.grpo)}
## Files
| file | bytes | sha256 |
|---|---|---|
{hashes}

Written {date.today().isoformat()} by `python -m pipeline card`.
"""


def _label(row: dict) -> str:
    """A model path's last two parts and how it was decoded; a baseline's name; a difference as its two sides."""
    if row["model"].startswith("Δ "):
        return "Δ " + " − ".join(_short(side) for side in row["model"][2:].split(" − "))
    name = _short(row["model"])
    if "decoding" in row:
        return f"{name} ({row['decoding']}, screen {row.get('screen_weight', 0):g})"
    return name + (" (batched greedy, no screen)" if len(Path(row["model"]).parts) > 1 else "")


def _short(model: str) -> str:
    parts = Path(model).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else model


def write_card(config: PipelineConfig, eval_files: Sequence[Path], model_files: Sequence[Path], out: Path,
               stopping: StopThresholds, stages: Sequence[str] = DEFAULT_STAGES, tradeoff: Path | None = None,
               revision: Path | None = None) -> Path:
    """Write `out` (card.md) atomically; with `tradeoff` (a tradeoff.json), its table and its plot (copied beside
    the card) too; with `revision` (an `evaluate --revision` file, where it exists), the revision section."""
    tradeoff_rows = []
    if tradeoff:
        tradeoff_rows = load_rows([tradeoff])
        shutil.copyfile(tradeoff.with_suffix(".png"), out.with_name("tradeoff.png"))
    revised = load_rows([revision])[0] if revision and revision.exists() else None
    write_text(render_card(config, load_rows(eval_files), model_files, stopping, stages, tradeoff_rows,
                           revised), out)
    return out


def sweep_label(row: dict) -> str:
    """A row of the α sweep: the start model or GRPO at its α."""
    return "start (no GRPO)" if row["grpo_alpha"] is None else f"GRPO α={row['grpo_alpha']:g}"


def tradeoff_table(rows: Sequence[dict]) -> str:
    """Markdown: per model, F1@10, its change relative to α = 0, P@5, Jaccard, incompatibility rate and average
    herbs."""
    reference = next((r for r in rows if r["grpo_alpha"] == 0), None)
    lines = ["| model | n | F1@10 | F1@10 vs α=0 | P@5 | Jaccard | holds a 十八反/十九畏 pair | avg herbs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        relative = f"{(r['F1@10'] / reference['F1@10'] - 1) * 100:+.1f} %" if reference else "—"
        lines.append(f"| {sweep_label(r)} | {r['n']} | {r['F1@10']:.4f} | {relative} | {r['P@5']:.4f} | "
                     f"{r['Jaccard']:.4f} | {r['incompat_rate'] * 100:.2f} % | {r['avg_herbs']:.1f} |")
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict], path: Path) -> None:
    """F1@10 and Jaccard against the incompatibility rate, one point per model of the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, what in zip(axes, ("F1@10", "Jaccard"), ("the ranking", "the written prescription"), strict=True):
        for r in rows:
            ax.scatter(r["incompat_rate"] * 100, r[metric], marker="s" if r["grpo_alpha"] is None else "o")
            ax.annotate(sweep_label(r), (r["incompat_rate"] * 100, r[metric]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_xlabel("prescriptions holding an incompatible pair, 18 fan / 19 wei (%)")
        ax.set_ylabel(f"{metric} of {what}")
    fig.suptitle(f"GRPO incompatibility penalty α ({rows[0]['split']} split, Q4_K_M, app screen off)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
