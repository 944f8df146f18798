"""Command line: `python -m rxapp check` (safety of a prescription) and `python -m rxapp parse` (symptoms)."""

from __future__ import annotations

import argparse
import json
import sys

from rxapp.safety import DoseError, Patient, parse_doses, rules
from rxapp.vocab import HerbInputError, SymptomInputError, split_herb_list, vocab


def run_check(args: argparse.Namespace) -> int:
    herbs = split_herb_list(args.herbs)
    doses = parse_doses(args.doses, herbs)
    engine = rules()
    warnings = engine.check_prescription(herbs, Patient(pregnant=args.pregnant), doses)
    resolved = [vocab().resolve_herb(h) for h in herbs]
    report = {
        "herbs": [{"name": r.text, "vocabulary_herb": r.herb, "via": r.via, "family": r.family} for r in resolved],
        "pregnant": args.pregnant,
        "doses": doses,
        "unknown_herbs": [h for h in herbs if not engine.is_known(h)],
        "warnings": [w.to_dict() for w in warnings],
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print("处方: " + " ".join(herbs) + ("  (孕妇)" if args.pregnant else ""))
        if not warnings:
            print("未发现配伍、妊娠、毒性或剂量问题。")
        for w in warnings:
            sources = "; ".join(s.url or s.title for s in w.sources)
            print(f"[{w.severity}] {w.message}" + (f"  来源: {sources}" if sources else ""))
    return 0


def run_parse(args: argparse.Namespace) -> int:
    result = vocab().parse_symptoms(args.symptoms)
    if args.json:
        print(json.dumps(result.__dict__, ensure_ascii=False, indent=2))
    else:
        print("识别的症状: " + ("、".join(result.symptoms) or "（无）"))
        for fragment in result.unrecognised:
            hint = result.suggestions.get(fragment)
            print(f"未识别: {fragment!r}" + (f"  (是否指: {'、'.join(hint)})" if hint else ""))
    if not result.symptoms:
        print("error: none of the input was recognised as a symptom of the vocabulary", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rxapp", description="rx: TCM prescription decision support "
                                     "for qualified practitioners (not a diagnosis).")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="safety-check a prescription (十八反, 十九畏, pregnancy, toxicity, dose)")
    check.add_argument("--herbs", nargs="+", required=True, metavar="HERB", help="herb names, e.g. 附子 半夏")
    check.add_argument("--pregnant", action="store_true", help="apply the pregnancy rules")
    check.add_argument("--doses", nargs="+", default=[], metavar="HERB=GRAMS", help="daily doses, e.g. 附子=30")
    check.add_argument("--json", action="store_true", help="print JSON with a `warnings` list")
    check.set_defaults(run=run_check)
    parse = sub.add_parser("parse", help="recognise vocabulary symptoms in free text")
    parse.add_argument("--symptoms", required=True, help="free Chinese text, e.g. '恶寒发热，头痛'")
    parse.add_argument("--json", action="store_true", help="print JSON")
    parse.set_defaults(run=run_parse)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (SymptomInputError, HerbInputError, DoseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the user gets one readable line, never a traceback
        print(f"error: internal error ({type(e).__name__}: {e}); please report it", file=sys.stderr)
        return 1
