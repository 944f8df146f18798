"""`pipeline run`: every stage in order in one run folder, each skipped when its output is current.

    prepare → knowledge → distill → sft → small → prefs → dpo → grpo → [tradeoff] → export → evaluate → card

A stage's record, RUN/stages/NAME.json, is written atomically once all its outputs are; it holds the fingerprint of
what the stage read: its config settings, its input files, and the records of the stages it builds on. A stage runs
when its record is missing (never run, or interrupted) or its fingerprint has changed, and then every stage that
builds on it runs too. Code is not fingerprinted: `--redo STAGE` reruns a stage (and what follows) by hand.
RUN/ holds config.yaml (the snapshot), logs/NAME.log (each stage's output), run.json (times and summaries), the
stages' folders, evaluate/SPLIT.json, tradeoff.json/png and export/ with the model card."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from pipeline.config import SHIPPABLE_STAGES, PipelineConfig
from pipeline.data import SMGCN
from pipeline.evaluate import write_json
from pipeline.knowledge import KG_DIR
from rxapp.engine import file_sha256
from rxapp.knowledge import KNOWLEDGE_FILE
from rxapp.vocab import VOCAB_DIR


@dataclass
class Run:
    cfg: PipelineConfig
    out: Path
    resume: bool = False
    feedback: Path | None = None  # the app's rx.db (or its export), read by the prefs stage

    def stage_model(self, stage: str) -> Path:
        """The model a trained stage (sft, dpo or grpo at the config's α) left in the run folder."""
        from pipeline.grpo import alpha_folder

        return (alpha_folder(self.out, self.cfg.grpo.alpha) if stage == "grpo" else self.out / stage) / "best"


# The stages' work: each writes its outputs under RUN and returns a short JSON summary for run.json.

def prepare(run: Run) -> dict:
    """The published split and the carved validation split, counted and identified."""
    from pipeline.data import SPLITS, load_split

    validation = "\n".join(sorted(r.id for r in load_split("validation")))
    summary = {"records": {s: len(load_split(s)) for s in SPLITS},
               "validation_ids_sha256": hashlib.sha256(validation.encode()).hexdigest()}
    write_json(summary, run.out / "data" / "splits.json")
    return summary


def knowledge(run: Run) -> dict:
    """Rebuild the herb knowledge from the raw KDHR files and check it against the shipped file, which the teacher,
    the app and the safety engine read."""
    from pipeline.knowledge import build

    built = run.out / "knowledge" / "herbs.json"
    coverage = build(built)
    matches = file_sha256(built) == file_sha256(KNOWLEDGE_FILE)
    if not matches:
        print(f"warning: {built} differs from the shipped {KNOWLEDGE_FILE}; training uses the shipped file "
              "(run `python -m pipeline knowledge` to replace it)", file=sys.stderr)
    return {**coverage, "matches_shipped": matches}


def distill(run: Run) -> dict:
    from pipeline.distill import distill as write_examples

    teacher = run.cfg.teacher
    paths = write_examples(["train", "validation"], run.out / "distill", teacher.endpoint(), teacher.limit)
    return {split: str(path) for split, path in paths.items()}


def sft(run: Run) -> dict:
    from pipeline.sft import train_sft

    return {"best": str(train_sft(run.cfg, run.out / "distill", run.out / "sft", resume=run.resume))}


def small(run: Run) -> dict:
    from pipeline.small import train_small

    return {"best": str(train_small(run.cfg, run.out / "distill", run.out / "small"))}


def prefs(run: Run) -> dict:
    from pipeline.prefs import build_preferences

    return build_preferences(run.cfg, run.out, run.out / "sft" / "best", run.out / "small" / "best", run.feedback)


def dpo(run: Run) -> dict:
    from pipeline.dpo import train_dpo

    return {"best": str(train_dpo(run.cfg, run.out, run.out / "sft" / "best"))}


def grpo(run: Run) -> dict:
    from pipeline.grpo import train_grpo

    return {"best": str(train_grpo(run.cfg, run.out, run.out / "dpo" / "best"))}


def tradeoff(run: Run) -> dict:
    """The α sweep from the DPO model; the config's own α reuses the grpo stage's model. Without --resume the other
    α are trained afresh, since this stage only runs when something it builds on has changed."""
    from pipeline.grpo import alpha_folder
    from pipeline.tradeoff import sweep, tradeoff_table

    alphas = run.cfg.evaluate.tradeoff_alphas
    if not run.resume:
        for alpha in alphas:
            if alpha != run.cfg.grpo.alpha:
                shutil.rmtree(alpha_folder(run.out, alpha), ignore_errors=True)
    rows = sweep(run.cfg, run.out, run.out / "dpo" / "best", alphas, run.cfg.evaluate.split, run.cfg.evaluate.limit)
    print(tradeoff_table(rows))
    return {"rows": len(rows)}


def export(run: Run) -> dict:
    from pipeline.export import export as export_model

    return {kind: str(path) for kind, path in export_model(run.stage_model(run.cfg.ship), run.out / "export").items()}


def evaluate(run: Run) -> dict:
    """Each trained stage's model as Q4_K_M through the app's stepper, the differences from SFT, the baselines and
    the doctors' own prescriptions, in RUN/evaluate/SPLIT.json."""
    from pipeline.baselines import BASELINES
    from pipeline.evaluate import differences, evaluate_baseline, evaluate_model, format_table, reference_row
    from pipeline.export import SHIPPED, shipped_gguf

    settings = run.cfg.evaluate
    models = {}
    for stage in SHIPPABLE_STAGES:
        name = f"grpo α={run.cfg.grpo.alpha:g}" if stage == "grpo" else stage
        if stage == run.cfg.ship:
            models[f"{name} (this export)"] = run.out / "export" / f"model-{SHIPPED}.gguf"
        else:
            best = run.stage_model(stage)
            models[name] = shipped_gguf(best, best.parent / "export")
    rows = [evaluate_model(gguf, settings.split, settings.limit, "llama", settings.alpha) | {"model": name}
            for name, gguf in models.items()]
    rows += differences(rows)
    rows += [evaluate_baseline(name, settings.split, settings.limit) for name in BASELINES]
    rows.append(reference_row(settings.split, settings.limit))
    write_json(rows, evaluation_file(run))
    print(format_table(rows, settings.split))
    return {row["model"]: {k: row[k] for k in ("P@5", "F1@10", "incompat_rate")} for row in rows[:len(models)]}


def evaluation_file(run: Run) -> Path:
    return run.out / "evaluate" / f"{run.cfg.evaluate.split}.json"


def card(run: Run) -> dict:
    from pipeline.card import export_files, write_card
    from rxapp.backends import saved_stop_threshold

    folder = run.out / "export"
    swept = run.out / "tradeoff.json" if run.cfg.evaluate.tradeoff_alphas else None
    path = write_card(run.cfg, [evaluation_file(run)], export_files(folder), folder / "card.md",
                      saved_stop_threshold(folder / "hf"), making_stages(run.cfg), swept)
    return {"card": str(path)}


def making_stages(cfg: PipelineConfig) -> list[str]:
    """The stages that made the exported model: everything up to the shipped stage, then export."""
    names = [s.name for s in STAGES]
    return [*names[: names.index(cfg.ship) + 1], "export"]


@dataclass(frozen=True)
class Stage:
    name: str
    work: Callable[[Run], dict]
    after: tuple[str, ...]  # the stages whose outputs it reads
    settings: Callable[[PipelineConfig], object]  # the part of the config it depends on
    files: Callable[[Run], list[Path]] = lambda run: []  # what it reads from outside the run folder


def everything_but_the_sweep(cfg: PipelineConfig) -> dict:
    return {k: v for k, v in asdict(cfg.evaluate).items() if k != "tradeoff_alphas"}


STAGES = (
    Stage("prepare", prepare, (), lambda c: None, lambda run: [SMGCN / "train.txt", SMGCN / "test.txt"]),
    Stage("knowledge", knowledge, (), lambda c: None,
          lambda run: sorted(p for p in KG_DIR.rglob("*") if p.is_file())),
    Stage("distill", distill, ("prepare", "knowledge"), lambda c: asdict(c.teacher),
          lambda run: [KNOWLEDGE_FILE, VOCAB_DIR / "herbs.yaml", VOCAB_DIR / "symptoms.yaml"]),
    Stage("sft", sft, ("distill",), lambda c: [c.seed, asdict(c.model), asdict(c.sft)]),
    Stage("small", small, ("distill",), lambda c: [c.seed, asdict(c.small)]),
    Stage("prefs", prefs, ("sft", "small"), lambda c: [c.seed, asdict(c.prefs)],
          lambda run: [run.feedback] if run.feedback else []),
    Stage("dpo", dpo, ("prefs",), lambda c: [c.seed, asdict(c.dpo)]),
    Stage("grpo", grpo, ("dpo",), lambda c: [c.seed, asdict(c.grpo)]),
    Stage("tradeoff", tradeoff, ("grpo",), lambda c: [asdict(c.evaluate)]),
    Stage("export", export, ("grpo",), lambda c: c.ship),
    Stage("evaluate", evaluate, ("export", "sft", "dpo"), everything_but_the_sweep),
    Stage("card", card, ("evaluate", "tradeoff"), lambda c: c.name),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def active_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages this config runs: the α sweep only when it lists some α."""
    return [s for s in STAGES if s.name != "tradeoff" or cfg.evaluate.tradeoff_alphas]


def fingerprint(stage: Stage, run: Run, records: dict[str, dict]) -> str:
    """What the stage read; the upstream records' finishing times make a rerun upstream invalidate it."""
    document = {"stage": stage.name, "settings": stage.settings(run.cfg),
                "files": {str(p): file_sha256(p) for p in stage.files(run)},
                "after": {u: [records[u]["fingerprint"], records[u]["finished"]] for u in stage.after if u in records}}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


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


def snapshot_config(config_path: Path, out: Path, resume: bool) -> None:
    """RUN/config.yaml is the config the run was made with; resuming with another config is refused, since an
    interrupted stage would continue under settings it did not start with."""
    text = Path(config_path).read_text(encoding="utf-8")
    saved = out / "config.yaml"
    if resume and saved.exists() and saved.read_text(encoding="utf-8") != text:
        raise ValueError(f"{config_path} differs from the config {out} was run with ({saved}); "
                         "run without --resume to redo what changed")
    out.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(saved)


def run_pipeline(config_path: Path, out: Path, feedback: Path | None = None, resume: bool = False,
                 until: str | None = None, redo: tuple[str, ...] = ()) -> list[dict]:
    """Run the stages in order up to `until`; return one {stage, status, seconds, summary} per stage."""
    cfg = PipelineConfig.load(config_path)
    if feedback is not None and not feedback.exists():
        raise FileNotFoundError(f"feedback file {feedback} does not exist")
    snapshot_config(config_path, out, resume)
    run = Run(cfg, out, resume, feedback)
    stages = active_stages(cfg)
    names = [s.name for s in stages]
    for name in [*redo, *([until] if until else [])]:
        if name not in names:
            raise ValueError(f"stage {name!r} is not run by {config_path}; its stages: {', '.join(names)}")
    if until:
        stages = stages[: names.index(until) + 1]
    records = {}
    for stage in STAGES:  # what earlier runs left, for the fingerprints of the stages after them
        path = out / "stages" / f"{stage.name}.json"
        if path.exists():
            records[stage.name] = json.loads(path.read_text(encoding="utf-8"))
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
            with logged(out / "logs" / f"{stage.name}.log"):
                summary = stage.work(run)
        except BaseException:
            report.append({"stage": stage.name, "status": "failed", "seconds": round(time.time() - began, 1)})
            write_json({"config": str(config_path), "stages": report}, out / "run.json")
            raise
        records[stage.name] = {"fingerprint": key, "finished": datetime.now().isoformat(timespec="milliseconds"),
                               "seconds": round(time.time() - began, 1), "summary": summary}
        write_json(records[stage.name], out / "stages" / f"{stage.name}.json")
        report.append({"stage": stage.name, "status": "ran", **records[stage.name]})
        write_json({"config": str(config_path), "stages": report}, out / "run.json")
    write_json({"config": str(config_path), "stages": report}, out / "run.json")
    return report


def report_table(report: list[dict]) -> str:
    lines = [f"{'stage':<10}{'status':<9}{'seconds':>9}", "-" * 28]
    lines += [f"{r['stage']:<10}{r['status']:<9}{r['seconds']:>9.1f}" for r in report]
    ran = sum(r["seconds"] for r in report if r["status"] == "ran")
    return "\n".join([*lines, "-" * 28, f"{'this run':<19}{ran:>9.1f}"])
