"""Command line of the training pipeline: `python -m pipeline run` (every stage), one trained stage at a time
(`sft | small | prefs | dpo | grpo | tradeoff`, generated from `pipeline.run.STAGES`), and the tools that work on any
paths: `knowledge`, `distill`, `tune-stop`, `export`, `evaluate`, `card`, `ship` (an export becomes the app's default
model) and `unpack` (an exported GGUF back into a trainable folder)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import HERB_LISTS
from pipeline.data.baselines import BASELINES
from pipeline.data.llm_teacher import TeacherError
from pipeline.data.records import SPLITS
from pipeline.data.revision import WRONG_HERBS
from pipeline.release.card import DEFAULT_STAGES
from pipeline.release.export import QUANTISATIONS
from pipeline.run import STAGE_NAMES, STAGES
from pipeline.runfolder import RunFolder
from rxapp import DEFAULT_MODEL
from rxapp.feedback import StoreError
from rxapp.knowledge import ASSOCIATIONS_FILE, KNOWLEDGE_FILE


def run_knowledge(args: argparse.Namespace) -> int:
    from pipeline.data.knowledge import build, build_associations

    coverage = build(args.out)
    print(json.dumps({**coverage, "associations": build_associations(args.associations)}, ensure_ascii=False))
    return 0


def run_distill(args: argparse.Namespace) -> int:
    from pipeline.data.distill import distill
    from pipeline.data.llm_teacher import Endpoint

    endpoint = None
    if args.teacher_url:
        endpoint = Endpoint(args.teacher_url, args.teacher_model, requests_per_minute=args.rpm)
    for split, path in distill(args.split, args.out, args.lists, endpoint, args.limit).items():
        print(f"{split}: {path}")
    return 0


def run_tune_stop(args: argparse.Namespace) -> int:
    from pipeline.config import StoppingConfig
    from pipeline.data.records import load_split
    from pipeline.model.stopping import tune_stopping
    from pipeline.model.training import default_device

    validation = [{"symptoms": r.symptoms, "herbs": r.herbs} for r in load_split("validation", args.lists)]
    thresholds = tune_stopping(args.model, validation, args.device or default_device(), StoppingConfig())
    print(f"{args.model}: stop threshold {thresholds.scratch:g}, herb limit {thresholds.herb_limit or 'none'}, "
          f"revision stop threshold {thresholds.revision:g}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pipeline.release.export import export

    for kind, path in export(args.model, args.out, tuple(args.quant)).items():
        print(f"{kind}: {path}")
    return 0


def run_artefacts(args: argparse.Namespace) -> int:
    from pipeline.data.artefacts import differences, find_artefacts
    from pipeline.data.records import load_split
    from rxapp.vocab import vocab

    records = load_split("train_full")
    found = find_artefacts(records)
    for token, longer in sorted(found.items(), key=lambda item: -sum(c for c, _ in item[1].values())):
        artefact = vocab().artefacts.get(token)
        meaning = f"{artefact.certainty} {artefact.means or ''}".strip() if artefact else "not in the map"
        print(f"{token}\t" + "、".join(f"{n} {covered}/{lists}" for n, (lists, covered) in longer.items())
              + f"\talone: {meaning}")
    problems = differences(records, found)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(found)} artefact tokens found by the rule; assets/vocab/artefacts.yaml "
          + ("agrees" if not problems else f"disagrees in {len(problems)} place(s)"), file=sys.stderr)
    return 1 if problems else 0


def run_unpack(args: argparse.Namespace) -> int:
    from pipeline.release.unpack import unpack

    print(unpack(args.gguf, args.out))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import (
        evaluate_baseline,
        evaluate_model,
        format_tables,
        reference_row,
        with_differences,
        without_cases,
    )
    from pipeline.runfolder import write_json

    views = args.lists
    if args.revision:
        return run_revision(args)
    if args.model:
        compared = [evaluate_baseline(name, args.split, args.limit, view) for view in views for name in BASELINES]
        rows = with_differences([row for path in args.model for row in
                                 evaluate_model(path, args.split, args.limit, args.stepper, args.screen_weight, views)],
                                compared)
        first = args.model[0]
        name = f"eval-{args.split}" + (f"-stepper-{first.stem}" if rows[0].get("decoding") else "")
        default = (first if first.is_dir() else first.parent) / f"{name}.json"
        out = args.out or (default if len(args.model) == 1 else Path("runs") / "evaluate" / f"models-{args.split}.json")
    else:
        names = list(BASELINES) if "all" in args.baseline else list(dict.fromkeys(args.baseline))
        rows = [evaluate_baseline(name, args.split, args.limit, view) for view in views for name in names]
        compared = []
        out = args.out or Path("runs") / "evaluate" / f"{'-'.join(names)}-{args.split}.json"
    rows, compared = without_cases(rows), without_cases(compared)
    document = rows[0] if len(rows) == 1 else rows
    write_json(document, out)
    shown = [*rows, *compared, *(reference_row(args.split, args.limit, view) for view in views)]
    table = format_tables(shown, args.split, views)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print(table)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_revision(args: argparse.Namespace) -> int:
    """`evaluate --revision`: each model's revisions of the split's seeded corrupted drafts (pipeline.evaluate)."""
    from pipeline.evaluate import evaluate_revision, format_revision
    from pipeline.runfolder import write_json

    if not args.model:
        raise ValueError("--revision scores models: give --model")
    for path in args.model:
        row = evaluate_revision(path, args.split, args.limit, args.stepper, args.wrong)
        out = args.out if args.out and len(args.model) == 1 else (
            (path if path.is_dir() else path.parent) / f"revision-{args.wrong}-{args.split}-{path.stem}.json")
        write_json(row, out)
        print(json.dumps(row, ensure_ascii=False, indent=2) if args.json else format_revision(row))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def run_card(args: argparse.Namespace) -> int:
    import gguf

    from pipeline.config import PipelineConfig
    from pipeline.release.card import export_files, write_card
    from pipeline.release.export import gguf_fields
    from rxapp.modelinfo import saved_stop_thresholds, stop_thresholds

    files = export_files(args.export)
    if not files:
        raise FileNotFoundError(f"{args.export} holds no exported model (run `python -m pipeline export` first)")
    if (args.export / "hf").is_dir():
        thresholds = saved_stop_thresholds(args.export / "hf")
    else:  # a GGUF-only export, e.g. the shipped model's folder
        thresholds = stop_thresholds(gguf_fields(gguf.GGUFReader(str(files[0]))))
    print(write_card(PipelineConfig.load(args.config), args.eval, files, args.export / "card.md", thresholds,
                     args.stages, args.tradeoff, args.revision))
    return 0


def run_all(args: argparse.Namespace) -> int:
    from pipeline.run import report_table, run_pipeline

    out = args.out or Path("runs") / args.config.stem
    report = run_pipeline(args.config, out, args.from_feedback, args.resume, args.until, tuple(args.redo))
    print(report_table(report))
    export = RunFolder(out).export
    if (export / "card.md").exists():
        print(f"model: {export} (card.md beside it); try it: python launch.py --model "
              f"{export / 'model-q4_k_m.gguf'}", file=sys.stderr)
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from pipeline.release.ship import ship

    for path in ship(args.export, args.to):
        print(path)
    return 0


def run_one_stage(args: argparse.Namespace) -> int:
    from pipeline.run import run_stage

    print(json.dumps(run_stage(args.stage, args.config, args.out, args), ensure_ascii=False, indent=2))
    return 0


def add_stage_commands(sub) -> None:
    """`python -m pipeline NAME --config C --out RUN [options]` for each stage of the table that has a command."""
    for stage in STAGES:
        if stage.options is None:
            continue
        parser = sub.add_parser(stage.name, help=stage.help)
        parser.add_argument("--config", type=Path, required=True, help="pipeline config, e.g. configs/default.yaml")
        parser.add_argument("--out", type=Path, required=True, help="the run folder it reads and writes")
        for option in stage.options:
            named = {} if {"action", "choices"} & option.settings.keys() else {"metavar": option.flag[2:].upper()}
            parser.add_argument(option.flag, dest=option.dest.replace(".", "_"), **{**named, **option.settings})
        parser.set_defaults(run=run_one_stage, stage=stage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="rx training pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    everything = sub.add_parser("run", help="every stage in order (prepare → knowledge → distill → sft → small → "
                                "prefs → dpo → grpo → [tradeoff] → export → evaluate → card), skipping what is current")
    everything.add_argument("--config", type=Path, required=True, help="pipeline config, e.g. configs/default.yaml")
    everything.add_argument("--out", type=Path,
                            help="run folder (default: runs/ and the config file's name, e.g. runs/default)")
    everything.add_argument("--from-feedback", type=Path,
                            help="the app's feedback database (rx.db) or its JSONL export: its pairs join the "
                            "preference data")
    everything.add_argument("--resume", action="store_true",
                            help="continue an interrupted run: SFT from its last checkpoint, the α sweep from the α "
                            "already trained (the config must be unchanged)")
    everything.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    everything.add_argument("--redo", nargs="+", default=[], choices=STAGE_NAMES, metavar="STAGE",
                            help="run these stages (and what builds on them) even when current, e.g. after a code "
                            "change")
    everything.set_defaults(run=run_all)
    knowledge = sub.add_parser("knowledge", help="rebuild assets/knowledge/herbs.json from the raw KDHR files, then "
                               "the (herb, action, symptom) pairs a step may cite together")
    knowledge.add_argument("--out", type=Path, default=KNOWLEDGE_FILE, help="where to write (default: %(default)s)")
    knowledge.add_argument("--associations", type=Path, default=ASSOCIATIONS_FILE,
                           help="where to write the associations (default: %(default)s)")
    knowledge.set_defaults(run=run_knowledge)
    distill = sub.add_parser("distill", help="write 症状分析—处方—方解 training examples (knowledge teacher, or an "
                             "OpenAI-compatible endpoint with --teacher-url)")
    distill.add_argument("--split", nargs="+", default=["train", "validation", "test"], choices=SPLITS)
    distill.add_argument("--out", type=Path, default=Path("runs/distill"), help="output folder (default %(default)s)")
    distill.add_argument("--teacher-url", help="chat-completions base URL, e.g. http://127.0.0.1:8000/v1 "
                         "(key from OPENAI_API_KEY); answers cached in OUT/llm-SPLIT.jsonl")
    distill.add_argument("--teacher-model", default="gpt-4o", help="model name sent to the endpoint")
    distill.add_argument("--rpm", type=float, default=60.0, help="requests per minute at most (default %(default)s)")
    distill.add_argument("--limit", type=int, help="ask the endpoint about the first N records of each split only")
    distill.add_argument("--lists", default="clean", choices=HERB_LISTS,
                         help="the herb lists to teach from: clean (no substring artefacts, one name per drug) or raw "
                              "as published (default %(default)s)")
    distill.set_defaults(run=run_distill)
    add_stage_commands(sub)
    tune = sub.add_parser("tune-stop", help="re-tune a trained model's stop rule (from nothing: threshold and herb "
                          "limit; revising a draft: threshold) on the validation split and write it into its rx.json; "
                          "then export it again")
    tune.add_argument("--model", type=Path, required=True, help="trained model folder, e.g. RUN/sft/best or EXPORT/hf")
    tune.add_argument("--lists", default="clean", choices=HERB_LISTS,
                      help="the validation herb lists to tune on: those the model learned from (default %(default)s)")
    tune.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    tune.set_defaults(run=run_tune_stop)
    export = sub.add_parser("export", help="merged HF folder, GGUF f16 and quantised GGUFs of a trained model")
    export.add_argument("--model", type=Path, required=True, help="trained model folder, e.g. RUN/sft/best")
    export.add_argument("--out", type=Path, required=True, help="output folder (hf/, model-f16.gguf, model-Q.gguf)")
    export.add_argument("--quant", nargs="*", default=list(QUANTISATIONS), choices=QUANTISATIONS,
                        help="quantisations to make (default: %(default)s)")
    export.set_defaults(run=run_export)
    artefacts = sub.add_parser("artefacts", help="find the herb lists' substring artefacts by the rule and check "
                               "them against assets/vocab/artefacts.yaml (exit 1 where they disagree)")
    artefacts.set_defaults(run=run_artefacts)
    unpack = sub.add_parser("unpack", help="a domain-model GGUF (e.g. the shipped default) back into a trainable HF "
                            "folder, dequantised to fp32, for --model of grpo, dpo or tradeoff")
    unpack.add_argument("--gguf", type=Path, default=DEFAULT_MODEL, help="the GGUF (default: %(default)s)")
    unpack.add_argument("--out", type=Path, required=True, help="the folder to write, e.g. runs/shipped")
    unpack.set_defaults(run=run_unpack)
    evaluate = sub.add_parser("evaluate", help="evaluate recommenders on a split, beside the published results")
    what = evaluate.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", nargs="+", choices=[*BASELINES, "all"], help="baseline(s) to evaluate, or all")
    what.add_argument("--model", type=Path, nargs="+",
                      help="trained model folder(s), export hf/ folders or .gguf files; with several, the table "
                      "adds each one's difference from the first")
    evaluate.add_argument("--stepper", choices=["llama", "hf"],
                          help="decode with the app's stepper on this backend (a .gguf model always does)")
    evaluate.add_argument("--screen-weight", type=float, default=0.0,
                          help="the stepper's safety screen weight (default 0: none)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N records only (quick checks)")
    evaluate.add_argument("--split", default="test", choices=SPLITS)
    evaluate.add_argument("--lists", nargs="+", default=list(HERB_LISTS), choices=HERB_LISTS,
                          help="score on the herb lists as published (raw: comparable with the published results), "
                          "cleaned of their substring artefacts (clean), or both (default)")
    evaluate.add_argument("--out", type=Path, help="JSON file to write (default: runs/evaluate/NAME-SPLIT.json for "
                          "baselines, MODEL/eval-SPLIT.json for a model, runs/evaluate/models-SPLIT.json for several)")
    evaluate.add_argument("--revision", action="store_true",
                          help="score each model's revisions of seeded corrupted drafts (2 of the doctors' herbs "
                          "dropped, 2 wrong ones added) beside the co-occurrence revision")
    evaluate.add_argument("--wrong", choices=WRONG_HERBS, default="plausible",
                          help="with --revision, where the drafts' wrong herbs come from: the herbs the statistics "
                          "rank highest for the symptoms (plausible, the default), or other cases' prescriptions "
                          "(foreign)")
    evaluate.add_argument("--json", action="store_true",
                          help="print the JSON on stdout (the table then goes to stderr)")
    evaluate.set_defaults(run=run_evaluate)
    card = sub.add_parser("card", help="write EXPORT/card.md: data, stages, metrics, α and file hashes")
    card.add_argument("--export", type=Path, required=True, help="an export folder (from `pipeline export`)")
    card.add_argument("--config", type=Path, required=True, help="the config the model was trained with")
    card.add_argument("--eval", type=Path, nargs="+", required=True,
                      help="evaluation JSON files (from `pipeline evaluate`) whose rows the card shows")
    card.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGE_NAMES,
                      help="the stages that produced the model (default: %(default)s)")
    card.add_argument("--tradeoff", type=Path, help="RUN/tradeoff.json of `pipeline tradeoff`: its table and plot "
                      "go into the card")
    card.add_argument("--revision", type=Path, help="the `evaluate --revision` file of this model: its revision "
                      "table goes into the card")
    card.set_defaults(run=run_card)
    ship = sub.add_parser("ship", help="make an export the app's embedded default model: its Q4_K_M GGUF, card, plots "
                          "and (within 50 MiB) hf/ folder replace assets/models/default/")
    ship.add_argument("--export", type=Path, required=True, help="an export folder with its card, e.g. RUN/export")
    ship.add_argument("--to", type=Path, default=DEFAULT_MODEL.parent, help="destination (default: %(default)s)")
    ship.set_defaults(run=run_ship)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, TeacherError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one readable line, never a traceback
        print(f"error: internal error ({type(e).__name__}: {e}); please report it", file=sys.stderr)
        return 1
