"""A blind review sheet: random test cases' recommendations from one or more models, shuffled, for a reader who
judges each step and each 方解 without knowing which model wrote it.

`sheet.md` numbers every step (S1, S2 …) and every 方解 (F1 …) of the cases in a seeded random order; `key.json`
says which model and case each item came from, and `score` reads the reviewer's marks back against it. The reviewer
writes one line per item in a text file, `S12 2` or `F3 1`, with the scale of the sheet's header.
`changed` makes the same kind of sheet from two `rxapp recommend --batch --json` outputs of the same cases (two
reasons rules, two models): the steps that add the same herb to the same case with a different reason, both
versions shuffled together, so that `score` tallies `before` against `after`.
Usage:
  python -m bench.review sheet --model A.gguf [--model B.gguf] [--cases 40] [--seed 0] --out DIR
  python -m bench.review changed --before A.jsonl --after B.jsonl [--pairs 60] [--seed 0] --out DIR
  python -m bench.review score --out DIR --marks marks.txt
"""

from __future__ import annotations

import argparse
import random
import re
from collections import defaultdict
from pathlib import Path

from pipeline.data.records import load_split
from pipeline.runfolder import read_json, read_jsonl, write_json, write_text
from rxapp.backends import load_backend
from rxapp.cli import recommendation_json
from rxapp.stepper import StepperConfig

STEP_SCALE = ("2: the action is a textbook main 功效 of the herb and plausibly treats the cited symptom (or the step "
              "states the herb's role, e.g. 调和诸药); 1: loosely related (a real action, a weak link to the symptom, "
              "or no symptom cited); 0: wrong (not a main action of the herb, or it does not treat the symptom)")
SUMMARY_SCALE = ("2: complete (every herb of the prescription once, no other), correct and tied to the presentation; "
                 "1: complete and correct but loosely tied; 0: incomplete, wrong or incoherent")


def write_sheet(models: list[Path], cases: int, seed: int, out: Path) -> None:
    rng = random.Random(seed)
    records = rng.sample(load_split("test", "clean"), cases)
    cards = []
    for model in models:
        with load_backend(model) as backend:
            for record in records:
                cards.append((str(model), record.id, recommendation_json(record.id, "，".join(record.symptoms), False,
                                                                          backend, StepperConfig())))
    rng.shuffle(cards)
    lines = ["# Blind review sheet", "", f"Steps (S…): {STEP_SCALE}.", "", f"方解 (F…): {SUMMARY_SCALE}.", "",
             "Write one line per item in a marks file: `S12 2`, `F3 0`.", ""]
    key, steps, summaries = {}, 0, 0
    for number, (model, case_id, out_json) in enumerate(cards, 1):
        lines += [f"## Case {number}", "", "症状：" + "、".join(out_json["symptoms"]), ""]
        for step in out_json["steps"]:
            steps += 1
            key[f"S{steps}"] = {"model": model, "case": case_id}
            lines.append(f"- **S{steps}** 加 {step['name']}：{step['explanation']}")
        summaries += 1
        key[f"F{summaries}"] = {"model": model, "case": case_id}
        lines += ["", f"- **F{summaries}** 方解：{out_json['summary']}"
                  + (f"  \n  {out_json['formula']}" if out_json["formula"] else ""), ""]
    out.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(lines), out / "sheet.md")
    write_json(key, out / "key.json")
    print(f"{out / 'sheet.md'}: {len(cards)} recommendations, {steps} steps, {summaries} 方解")


def write_changed_sheet(before: Path, after: Path, pairs: int, seed: int, out: Path) -> None:
    rng = random.Random(seed)
    changed = []
    for old, new in zip(read_jsonl(before), read_jsonl(after), strict=True):
        if old["id"] != new["id"]:
            raise ValueError(f"{before} and {after} hold different cases in the same place: {old['id']}, {new['id']}")
        reasons = {step["herb"]: step["explanation"] for step in new["steps"] if step["action"] == "add"}
        changed += [(old["id"], old["symptoms"], step["name"], step["explanation"], reasons[step["herb"]])
                    for step in old["steps"] if step["action"] == "add" and step["herb"] in reasons
                    and reasons[step["herb"]] != step["explanation"]]
    items = [(which, case, symptoms, herb, reason) for case, symptoms, herb, old, new in
             rng.sample(changed, min(pairs, len(changed))) for which, reason in (("before", old), ("after", new))]
    rng.shuffle(items)
    lines = ["# Blind review sheet", "", f"Steps (S…): {STEP_SCALE}.", "",
             "Write one line per item in a marks file: `S12 2`.", ""]
    key = {}
    for number, (which, case, symptoms, herb, reason) in enumerate(items, 1):
        key[f"S{number}"] = {"model": which, "case": case}
        lines.append(f"- **S{number}** 症状：{'、'.join(symptoms)} ｜ 加 {herb}：{reason}")
    out.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(lines) + "\n", out / "sheet.md")
    write_json(key, out / "key.json")
    print(f"{out / 'sheet.md'}: {len(items)} steps, from {len(changed)} whose reason changed")


def score(out: Path, marks_file: Path) -> None:
    key = read_json(out / "key.json")
    marks = dict(re.findall(r"^\s*([SF]\d+)\s+([012])\b", marks_file.read_text(encoding="utf-8"), re.M))
    unmarked = sorted(set(key) - set(marks), key=lambda k: (k[0], int(k[1:])))
    if unmarked:
        print(f"warning: {len(unmarked)} items unmarked, e.g. {', '.join(unmarked[:5])}")
    tally: dict[tuple[str, str], list[int]] = defaultdict(list)
    for item, mark in marks.items():
        tally[(key[item]["model"], "step" if item[0] == "S" else "方解")].append(int(mark))
    for (model, kind), values in sorted(tally.items()):
        shares = " ".join(f"{m}: {values.count(m) / len(values):.0%}" for m in (2, 1, 0))
        print(f"{model}  {kind}  n={len(values)}  {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sheet = sub.add_parser("sheet", help="write sheet.md and key.json")
    sheet.add_argument("--model", type=Path, action="append", required=True, help="a GGUF file or HF folder; repeat")
    sheet.add_argument("--cases", type=int, default=40)
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--out", type=Path, required=True)
    changed = sub.add_parser("changed", help="write sheet.md and key.json of the steps whose reason differs "
                                              "between two recommend --batch --json outputs of the same cases")
    changed.add_argument("--before", type=Path, required=True, help="JSONL of `rxapp recommend --batch --json`")
    changed.add_argument("--after", type=Path, required=True, help="the same cases' JSONL under the other rules")
    changed.add_argument("--pairs", type=int, default=60, help="changed steps to sample; each gives two items")
    changed.add_argument("--seed", type=int, default=0)
    changed.add_argument("--out", type=Path, required=True)
    marked = sub.add_parser("score", help="tally a marks file against key.json, per model")
    marked.add_argument("--out", type=Path, required=True)
    marked.add_argument("--marks", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "sheet":
        write_sheet(args.model, args.cases, args.seed, args.out)
    elif args.command == "changed":
        write_changed_sheet(args.before, args.after, args.pairs, args.seed, args.out)
    else:
        score(args.out, args.marks)


if __name__ == "__main__":
    main()
