"""The stage table and `pipeline run`: every stage in order in one run folder, each skipped when its output is current.

    prepare → knowledge → distill → sft → small → prefs → dpo → grpo → [tradeoff] → export → evaluate → card

`STAGES` is the one wiring of the pipeline: what each stage does (`work`), what it reads, which settings it depends
on, and the options of its own command (`python -m pipeline sft …`, generated from the table by `pipeline.cli`).

A stage's record, RUN/stages/NAME.json, is written atomically once all its outputs are; it holds the fingerprint of
what the stage read: its config settings, its input files, and the records of the stages it builds on. A stage runs
when its record is missing (never run, or interrupted) or its fingerprint has changed, and then every stage that
builds on it runs too. Code is not fingerprinted: `--redo STAGE` reruns a stage (and what follows) by hand.
The run folder's layout is `pipeline.runfolder`'s."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.data.distill import INPUTS as DISTILL_INPUTS
from pipeline.data.knowledge import KG_DIR
from pipeline.data.records import SMGCN, SPLITS
from pipeline.runfolder import TRAINED_STAGES, RunFolder, read_json, read_jsonl, write_json, write_text
from rxapp.knowledge import KNOWLEDGE_FILE
from rxapp.modelinfo import file_sha256

SWEEP_ALPHAS = (0.0, 0.5, 1.0, 2.0)  # the α the `tradeoff` command sweeps when neither it nor the config lists any


@dataclass
class Run:
    """One stage's view of the run: the config, the folder, and what its command or `pipeline run` was told."""

    cfg: PipelineConfig
    folder: RunFolder
    resume: bool = False
    feedback: Path | None = None  # the app's rx.db (or its export), read by the prefs stage
    start: Path | None = None  # the model a trained stage starts from, when not the run folder's (--model)

    def start_model(self, stage: str) -> Path:
        start = self.start or self.folder.start_model(stage, self.cfg.grpo.start)
        print(f"{stage} starts from {start}", file=sys.stderr)
        return start

    def shipped_model(self) -> Path:
        """The model of the stage the config ships (GRPO at the config's α)."""
        return self.folder.best(self.cfg.ship, self.cfg.grpo.alpha)


# The stages' work: each writes its outputs under RUN and returns a short JSON summary for run.json.

def prepare(run: Run) -> dict:
    """The published split and the carved validation split, counted and identified."""
    from pipeline.data.records import load_split

    validation = "\n".join(sorted(r.id for r in load_split("validation")))
    summary = {"records": {s: len(load_split(s)) for s in SPLITS},
               "validation_ids_sha256": hashlib.sha256(validation.encode()).hexdigest()}
    write_json(summary, run.folder.splits)
    return summary


def knowledge(run: Run) -> dict:
    """Rebuild the herb knowledge from the raw KDHR files and check it against the shipped file, which the teacher,
    the app and the safety engine read."""
    from pipeline.data.knowledge import build

    built = run.folder.knowledge
    coverage = build(built)
    matches = file_sha256(built) == file_sha256(KNOWLEDGE_FILE)
    if not matches:
        print(f"warning: {built} differs from the shipped {KNOWLEDGE_FILE}; training uses the shipped file "
              "(run `python -m pipeline knowledge` to replace it)", file=sys.stderr)
    return {**coverage, "matches_shipped": matches}


def distill(run: Run) -> dict:
    from pipeline.data.distill import distill as write_examples
    from pipeline.data.llm_teacher import teacher_endpoint

    teacher = run.cfg.teacher
    paths = write_examples(["train", "validation"], run.folder.distill, run.cfg.herb_lists, teacher_endpoint(teacher),
                           teacher.limit)
    return {split: str(path) for split, path in paths.items()}


def sft(run: Run) -> dict:
    from pipeline.stages.sft import train_sft

    return {"best": str(train_sft(run.cfg, run.folder, resume=run.resume))}


def small(run: Run) -> dict:
    from pipeline.stages.small import train_small

    return {"best": str(train_small(run.cfg, run.folder))}


def prefs(run: Run) -> dict:
    from pipeline.stages.prefs import build_preferences

    return build_preferences(run.cfg, run.folder, run.start_model("prefs"), run.folder.best("small"), run.feedback)


def dpo(run: Run) -> dict:
    from pipeline.stages.dpo import train_dpo

    return {"best": str(train_dpo(run.cfg, run.folder, run.start_model("dpo")))}


def grpo(run: Run) -> dict:
    from pipeline.stages.grpo import train_grpo

    return {"best": str(train_grpo(run.cfg, run.folder, run.start_model("grpo"), resume=run.resume))}


def tradeoff(run: Run) -> dict:
    """The α sweep from GRPO's start model; the config's own α reuses the grpo stage's model. Without --resume the
    other α are trained afresh, since this stage only runs when something it builds on has changed."""
    from pipeline.release.card import tradeoff_table
    from pipeline.stages.tradeoff import sweep

    alphas = run.cfg.evaluate.tradeoff_alphas or list(SWEEP_ALPHAS)
    if not run.resume:
        for alpha in alphas:
            if alpha != run.cfg.grpo.alpha:
                shutil.rmtree(run.folder.stage("grpo", alpha), ignore_errors=True)
    rows = sweep(run.cfg, run.folder, run.start_model("tradeoff"), alphas, run.cfg.evaluate.split,
                 run.cfg.evaluate.limit)
    print(tradeoff_table(rows))
    print(f"wrote {run.folder.tradeoff} and its plot", file=sys.stderr)
    return {"rows": len(rows)}


def export(run: Run) -> dict:
    """The shipped stage's model, its revision stop threshold tuned first: the trained stages tune building from
    nothing alone, since only the model that ships revises drafts in the app and in the evaluation."""
    from pipeline.model.stopping import tune_stopping
    from pipeline.model.training import default_device
    from pipeline.release.export import export as export_model
    from rxapp.modelinfo import saved_stop_thresholds

    shipped, cfg = run.shipped_model(), run.cfg
    validation = read_jsonl(run.folder.examples("validation"))[: cfg.sft.max_validation]
    thresholds = tune_stopping(shipped, validation, default_device(), cfg.stopping, kept=saved_stop_thresholds(shipped))
    return {"revision_stop_threshold": thresholds.revision,
            **{kind: str(path) for kind, path in export_model(shipped, run.folder.export).items()}}


def evaluate(run: Run) -> dict:
    """Each trained stage's model as Q4_K_M through the app's stepper, the differences from SFT, the baselines and
    the doctors' own prescriptions, on raw and clean herb lists, in RUN/evaluate/SPLIT.json; and the exported model
    revising corrupted drafts, in RUN/evaluate/revision-SPLIT.json."""
    from pipeline.config import HERB_LISTS
    from pipeline.data.baselines import BASELINES
    from pipeline.evaluate import (
        evaluate_baseline,
        evaluate_model,
        evaluate_revision,
        format_revision,
        format_tables,
        reference_row,
        with_differences,
        without_cases,
    )
    from pipeline.release.export import SHIPPED, shipped_gguf

    settings = run.cfg.evaluate
    models = {}
    running = {s.name for s in active_stages(run.cfg)}
    for stage in (s for s in TRAINED_STAGES if s in running):
        name = f"grpo α={run.cfg.grpo.alpha:g}" if stage == "grpo" else stage
        if stage == run.cfg.ship:
            models[f"{name} (this export)"] = run.folder.export / f"model-{SHIPPED}.gguf"
        else:
            best = run.folder.best(stage, run.cfg.grpo.alpha)
            models[name] = shipped_gguf(best, best.parent / "export")
    scored = [row | {"model": name} for name, gguf in models.items() for row in
              evaluate_model(gguf, settings.split, settings.limit, "llama", settings.screen_weight)]
    summary = {f"{row['model']} ({row['lists']})": {k: row[k] for k in ("P@5", "F1@10", "incompat_rate", "two_names")}
               for row in scored}
    baselines = [evaluate_baseline(name, settings.split, settings.limit, view) for view in HERB_LISTS
                 for name in BASELINES]
    exported = next(name for name in models if name.endswith("(this export)"))
    rows = [*with_differences(scored, baselines, exported), *baselines,
            *(reference_row(settings.split, settings.limit, view) for view in HERB_LISTS)]
    rows = without_cases(rows)
    write_json(rows, run.folder.evaluation(settings.split))
    print(format_tables(rows, settings.split))
    revision = evaluate_revision(models[exported], settings.split, settings.limit)
    write_json(revision, run.folder.revision_evaluation(settings.split))
    print(format_revision(revision))
    return summary | {"revision": {k: revision[k] for k in ("Jaccard draft", "Jaccard model", "Jaccard cooccurrence",
                                                          "removal_precision")}}


def card(run: Run) -> dict:
    from pipeline.release.card import export_files, write_card
    from rxapp.modelinfo import saved_stop_thresholds

    folder = run.folder.export
    swept = run.folder.tradeoff if run.cfg.evaluate.tradeoff_alphas else None
    path = write_card(run.cfg, [run.folder.evaluation(run.cfg.evaluate.split)], export_files(folder),
                      folder / "card.md", saved_stop_thresholds(folder / "hf"), making_stages(run.cfg), swept,
                      run.folder.revision_evaluation(run.cfg.evaluate.split))
    return {"card": str(path)}


PREFERENCE_STAGES = ("small", "prefs", "dpo")


def owes_nothing_to_preferences(cfg: PipelineConfig) -> bool:
    """A GRPO model started from SFT (grpo.start) owes nothing to the preference stage."""
    return cfg.ship == "grpo" and cfg.grpo.start == "sft"


def making_stages(cfg: PipelineConfig) -> list[str]:
    """The stages that made the exported model: everything up to the shipped stage, then export."""
    made = STAGE_NAMES[: STAGE_NAMES.index(cfg.ship) + 1]
    if owes_nothing_to_preferences(cfg):
        made = [s for s in made if s not in PREFERENCE_STAGES]
    return [*made, "export"]


@dataclass(frozen=True)
class Option:
    """An option of a stage's own command: argparse's flag and settings; `dest` names the Run field it sets, or a
    config setting as SECTION.NAME."""

    flag: str
    dest: str
    settings: dict = field(default_factory=dict)

    def apply(self, run: Run, value) -> None:
        if value is None or value is False:
            return
        if "." in self.dest:  # replace() checks the value as loading the config would (a negative α is refused)
            section, name = self.dest.split(".")
            setattr(run.cfg, section, replace(getattr(run.cfg, section), **{name: value}))
        else:
            setattr(run, self.dest, value)


def start_model_option(default: str) -> Option:
    return Option("--model", "start", {"type": Path, "help": f"the model it starts from (default: {default}, as in "
                                                             "pipeline run; pipeline.runfolder.start_model)"})


FROM_SFT = start_model_option("RUN/sft/best")
FROM_GRPO_START = start_model_option("RUN/sft/best, or RUN/dpo/best with grpo.start: dpo")
FEEDBACK = Option("--from-feedback", "feedback", {"type": Path, "metavar": "FILE", "help": "the app's feedback "
                                                  "database (rx.db) or its JSONL export: its pairs join the data"})
RESUME = Option("--resume", "resume", {"action": "store_true", "help": "continue from the last checkpoint"})
SFT_OPTIONS = (RESUME,)
GRPO_OPTIONS = (FROM_GRPO_START, Option("--alpha", "grpo.alpha", {
    "type": float, "help": "the safety cost's reward weight α (default: the config's grpo.alpha)"}), RESUME)
SWEEP_OPTIONS = (
    FROM_GRPO_START,
    Option("--alphas", "evaluate.tradeoff_alphas", {"type": float, "nargs": "+", "help": "the α to sweep (default: "
           f"the config's evaluate.tradeoff_alphas, else {' '.join(f'{a:g}' for a in SWEEP_ALPHAS)})"}),
    Option("--split", "evaluate.split", {"choices": SPLITS, "help": "the split to score (default: the config's "
                                         "evaluate.split)"}),
    Option("--limit", "evaluate.limit", {"type": int, "help": "score the first N records only"}),
    Option("--resume", "resume", {"action": "store_true", "help": "keep the α already trained"}),
)


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    work: Callable[[Run], dict]
    after: tuple[str, ...]  # the stages whose outputs it reads
    settings: Callable[[PipelineConfig], object]  # the part of the config it depends on
    files: Callable[[Run], list[Path]] = lambda run: []  # what it reads from outside the run folder
    # the options of its own command `python -m pipeline NAME --config C --out RUN`; None: no such command, since
    # `pipeline.cli` has a tool of that name that works on any paths (or the stage only makes sense inside a run)
    options: tuple[Option, ...] | None = None


def everything_but_the_sweep(cfg: PipelineConfig) -> dict:
    return {k: v for k, v in asdict(cfg.evaluate).items() if k != "tradeoff_alphas"}


STAGES = (
    Stage("prepare", "count the splits and identify the validation split", prepare, (), lambda c: None,
          lambda run: [SMGCN / "train.txt", SMGCN / "test.txt"]),
    Stage("knowledge", "rebuild the herb knowledge and compare it with the shipped file", knowledge, (),
          lambda c: None, lambda run: sorted(p for p in KG_DIR.rglob("*") if p.is_file())),
    Stage("distill", "the teacher's training examples", distill, ("prepare", "knowledge"),
          lambda c: [asdict(c.teacher), c.herb_lists], lambda run: list(DISTILL_INPUTS)),
    Stage("sft", "supervised fine-tuning on the distilled examples (torchrun for several ranks); RUN/sft/best",
          sft, ("distill",), lambda c: [c.seed, asdict(c.model), asdict(c.sft), c.stopping.cases],
          options=SFT_OPTIONS),
    Stage("small", "train the small BART (symptoms → herb list) of the preference stage; RUN/small/best", small,
          ("distill",), lambda c: [c.seed, asdict(c.small)], options=()),
    Stage("prefs", "preference pairs: LLM samples against the small BART (and clinician feedback); RUN/prefs/",
          prefs, ("sft", "small"), lambda c: [c.seed, asdict(c.prefs)],
          lambda run: [run.feedback] if run.feedback else [], options=(FROM_SFT, FEEDBACK)),
    Stage("dpo", "DPO (TRL) on RUN/prefs from the SFT model, which is also its reference; RUN/dpo/best", dpo,
          ("prefs",), lambda c: [c.seed, asdict(c.dpo), c.stopping.cases], options=(FROM_SFT,)),
    Stage("grpo", "step-wise GRPO with reward shaping and the safety cost's weight α (torchrun for data parallel); "
          "RUN/grpo-aα/best with log.json and curves.png", grpo, ("sft", "dpo"),
          lambda c: [c.seed, asdict(c.grpo), c.stopping.cases], options=GRPO_OPTIONS),
    Stage("tradeoff", "α sweep: GRPO per α, each scored with the start model through the app's stepper; "
          "RUN/tradeoff.json and tradeoff.png", tradeoff, ("grpo",), lambda c: [asdict(c.evaluate)],
          options=SWEEP_OPTIONS),
    Stage("export", "the shipped stage's model, its revision stop tuned, as a merged HF folder and GGUFs", export,
          ("grpo",), lambda c: [c.ship, c.stopping.revision_cases]),
    Stage("evaluate", "every trained stage through the app's stepper, beside the baselines", evaluate,
          ("export", "sft", "dpo"), everything_but_the_sweep),
    Stage("card", "the model card beside the export", card, ("evaluate", "tradeoff"), lambda c: c.name),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def active_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages this config runs: the α sweep only when it lists some α, and the preference stage only when the
    shipped model is made from it (its own commands still run it: `pipeline small`, `prefs`, `dpo`), which saves
    the default run about 13 minutes on 2 cores (docs/lab/2026-12-01-fresh-run.md)."""
    skipped = set() if cfg.evaluate.tradeoff_alphas else {"tradeoff"}
    if owes_nothing_to_preferences(cfg):
        skipped |= set(PREFERENCE_STAGES)
    return [s for s in STAGES if s.name not in skipped]


def fingerprint(stage: Stage, run: Run, records: dict[str, dict]) -> str:
    """What the stage read; the upstream records' finishing times make a rerun upstream invalidate it."""
    document = {"stage": stage.name, "settings": stage.settings(run.cfg),
                "files": {str(p): file_sha256(p) for p in stage.files(run)},
                "after": {u: [records[u]["fingerprint"], records[u]["finished"]] for u in stage.after if u in records}}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(stage: Stage, config_path: Path, out: Path, values: argparse.Namespace) -> dict:
    """A stage's own command: its work alone in the run folder, after the distillation it reads (cached, so cheap
    when current; written by one process under torchrun). The trained inputs it reads must already be there."""
    run = Run(PipelineConfig.load(config_path), RunFolder(out))
    for option in stage.options or ():
        option.apply(run, getattr(values, option.dest.replace(".", "_")))
    if "distill" in stage.after:
        from pipeline.model.training import setup_distributed

        rank, world, _ = setup_distributed()
        if rank == 0:
            distill(run)
        if world > 1:
            import torch.distributed

            torch.distributed.barrier()
    return stage.work(run)


class Tee:
    """A stream that also writes to a log file (so that a stage's output lands in RUN/logs/NAME.log)."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextmanager
def logged(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def snapshot_config(config_path: Path, folder: RunFolder, resume: bool) -> None:
    """RUN/config.yaml is the config the run was made with; resuming with another config is refused, since an
    interrupted stage would continue under settings it did not start with."""
    text = Path(config_path).read_text(encoding="utf-8")
    saved = folder.config
    if resume and saved.exists() and saved.read_text(encoding="utf-8") != text:
        raise ValueError(f"{config_path} differs from the config {folder.root} was run with ({saved}); "
                         "run without --resume to redo what changed")
    write_text(text, saved)


def run_pipeline(config_path: Path, out: Path, feedback: Path | None = None, resume: bool = False,
                 until: str | None = None, redo: tuple[str, ...] = ()) -> list[dict]:
    """Run the stages in order up to `until`; return one {stage, status, seconds, summary} per stage."""
    cfg = PipelineConfig.load(config_path)
    if feedback is not None and not feedback.exists():
        raise FileNotFoundError(f"feedback file {feedback} does not exist")
    folder = RunFolder(out)
    snapshot_config(config_path, folder, resume)
    run = Run(cfg, folder, resume, feedback)
    stages = active_stages(cfg)
    names = [s.name for s in stages]
    for name in [*redo, *([until] if until else [])]:
        if name not in names:
            raise ValueError(f"stage {name!r} is not run by {config_path}; its stages: {', '.join(names)}")
    if until:
        stages = stages[: names.index(until) + 1]
    records = {}
    for stage in STAGES:  # what earlier runs left, for the fingerprints of the stages after them
        if folder.record(stage.name).exists():
            records[stage.name] = read_json(folder.record(stage.name))
    report = []
    for number, stage in enumerate(stages, 1):
        key = fingerprint(stage, run, records)
        current = stage.name in records and records[stage.name]["fingerprint"] == key and stage.name not in redo
        print(f"[{number}/{len(stages)}] {stage.name}: " + ("current, skipped" if current else "running"),
              file=sys.stderr, flush=True)
        if current:
            report.append({"stage": stage.name, "status": "current", **records[stage.name]})
            continue
        began = time.time()
        try:
            with logged(folder.log(stage.name)):
                summary = stage.work(run)
        except BaseException:
            report.append({"stage": stage.name, "status": "failed", "seconds": round(time.time() - began, 1)})
            write_json({"config": str(config_path), "stages": report}, folder.report)
            raise
        records[stage.name] = {"fingerprint": key, "finished": datetime.now().isoformat(timespec="milliseconds"),
                               "seconds": round(time.time() - began, 1), "summary": summary}
        write_json(records[stage.name], folder.record(stage.name))
        report.append({"stage": stage.name, "status": "ran", **records[stage.name]})
        write_json({"config": str(config_path), "stages": report}, folder.report)
    write_json({"config": str(config_path), "stages": report}, folder.report)
    return report


def report_table(report: list[dict]) -> str:
    lines = [f"{'stage':<10}{'status':<9}{'seconds':>9}", "-" * 28]
    lines += [f"{r['stage']:<10}{r['status']:<9}{r['seconds']:>9.1f}" for r in report]
    ran = sum(r["seconds"] for r in report if r["status"] == "ran")
    return "\n".join([*lines, "-" * 28, f"{'this run':<19}{ran:>9.1f}"])
