"""Command line: `python -m rxapp recommend` (a prescription step by step), `check` (safety of a prescription) and
`parse` (symptoms)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rxapp import DEFAULT_MODEL
from rxapp.backends import QUANTIZATIONS
from rxapp.draft import Draft, read_draft
from rxapp.drugs import MedicationInputError
from rxapp.formulas import FormulaInputError
from rxapp.modelinfo import ModelMismatchError
from rxapp.safety import DoseError, Patient, check_safety_weight, interaction_summary, parse_doses, rules
from rxapp.stepper import SAFETY_NOTE, STEP_WORDS, StepperConfig, unrevised_note
from rxapp.vocab import HerbInputError, SymptomInputError, split_herb_list, vocab


def drugs_json(patient: Patient) -> dict:
    """The patient's medications as read: those checked, and those not recognised (with suggestions)."""
    return {"drugs": [{"name": d.name, "name_zh": d.name_zh, "atc": list(d.atc)} for d in patient.drugs],
            "unchecked_drugs": [{"text": text, "suggestions": list(hint)} for text, hint in patient.unchecked_drugs]}


def recommendation_json(case_id, text: str, pregnant: bool, backend, cfg, medications: str | list[str] = "",
                        draft: Draft | None = None) -> dict:
    """One case, run through the stepper (revising `draft` when given), as the JSON the CLI prints."""
    from rxapp.stepper import Recommendation, recommend

    parsed = vocab().parse_symptoms(text)
    if not parsed.symptoms:
        raise SymptomInputError("none of the input was recognised as a symptom of the vocabulary"
                                + (f" (unrecognised: {'、'.join(parsed.unrecognised[:5])})" if parsed.unrecognised
                                   else ""))
    patient = Patient.from_input(pregnant, medications)
    final = next(e for e in recommend(backend, parsed.symptoms, patient, cfg, draft)
                 if isinstance(e, Recommendation))
    return {
        "id": case_id, "symptoms": final.symptoms, "unrecognised": parsed.unrecognised,
        "suggestions": parsed.suggestions, "pregnant": pregnant,
        **drugs_json(patient), "analysis": final.analysis,
        "draft": draft.to_dict() if draft else None,
        "draft_warnings": [w.to_dict() for w in final.draft_warnings], "unrevised": final.unrevised,
        "steps": [{"index": s.index, "action": s.action, "herb": s.herb, "name": s.name, "explanation": s.explanation,
                   "facts": s.facts.summary() if s.facts else None, "probability": round(s.probability, 4),
                   "safety": s.safety,
                   "warnings": [w.to_dict() for w in s.warnings]} for s in final.steps],
        "summary": final.summary, "interactions": interaction_summary(final.warnings),
        "formula": final.formula.describe() if final.formula else None,
        "formula_match": final.formula.to_dict() if final.formula else None,
        "warnings": [w.to_dict() for w in final.warnings], "ranking": final.ranking,
    }


def run_recommend(args: argparse.Namespace) -> int:
    from rxapp.backends import load_backend
    from rxapp.stepper import warm_up

    cfg = StepperConfig(screen_weight=args.screen_weight, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed)
    if args.batch is not None and (args.start or args.formula):
        raise HerbInputError('--start and --formula revise one case; in a batch, give "start" or "formula" per line')
    draft = read_draft(args.start, args.formula)  # a bad name is reported before the model loads
    with load_backend(args.model, args.backend, n_gpu_layers=args.n_gpu_layers,
                      quantization=args.quantization) as backend:
        warm_up()
        if args.batch is None:
            out = recommendation_json(None, args.symptoms, args.pregnant, backend, cfg, args.drugs, draft)
            if args.json:
                print(json.dumps(out, ensure_ascii=False, indent=2))
            else:
                print_recommendation(out)
            return 0
        return run_batch(args.batch, backend, cfg)


def run_batch(batch: Path, backend, cfg: StepperConfig) -> int:
    """One JSON line out per case line in, in order; 2 if any line failed."""
    failed = 0
    for number, line in enumerate(batch.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        case = None
        try:
            case = json.loads(line)
            drugs, start, formula = case.get("drugs", []), case.get("start", []), case.get("formula")
            symptoms = case["symptoms"]
            if not isinstance(symptoms, (str, list)) or not all(isinstance(s, str) for s in symptoms):
                raise TypeError('"symptoms" must be text or a list of symptoms')
            if not isinstance(drugs, (str, list)) or not all(isinstance(d, str) for d in drugs):
                raise TypeError('"drugs" must be a list of medication names')
            if not isinstance(start, (str, list)) or not all(isinstance(h, str) for h in start):
                raise TypeError('"start" must be a list of herb names')
            if formula is not None and not isinstance(formula, str):
                raise TypeError('"formula" must be a formula name')
            text = symptoms if isinstance(symptoms, str) else "，".join(symptoms)
            out = recommendation_json(case.get("id", number), text, bool(case.get("pregnant")),
                                      backend, cfg, drugs, read_draft(start, formula))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, SymptomInputError,
                MedicationInputError, HerbInputError, FormulaInputError, ModelMismatchError) as e:
            failed += 1  # one bad line is reported in its place; the batch goes on
            out = {"id": case.get("id", number) if isinstance(case, dict) else number, "line": number,
                   "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 2 if failed else 0


def print_recommendation(out: dict) -> None:
    print("症状: " + "、".join(out["symptoms"]) + ("  (孕妇)" if out["pregnant"] else ""))
    print_unrecognised(out["unrecognised"], out["suggestions"])
    print_drugs(out)
    if out["draft"]:
        draft = out["draft"]
        print(f"初稿{'（' + draft['formula'] + '）' if draft['formula'] else ''}: " + "、".join(draft["herbs"])
              + "".join(f"  未核查: {u}" for u in draft["unknown"]))
        for w in out["draft_warnings"]:
            print(f"   [{w['severity']}] {w['message']}")
    print(out["analysis"])
    for step in out["steps"]:
        note = SAFETY_NOTE if step["safety"] else ""
        print(f"{step['index']}. {STEP_WORDS[step['action']]} {step['name']}{note}：{step['explanation']}")
        for w in step["warnings"]:
            print(f"   [{w['severity']}] " + ("解除: " if step["action"] == "remove" else "") + w["message"])
    if out["unrevised"]:
        print(unrevised_note(any(step["safety"] for step in out["steps"])))
    print("方解: " + out["summary"])
    if out["interactions"]:
        print("与所服西药: " + out["interactions"])
    if out["formula_match"]:
        print(out["formula"] + "  " + out["formula_match"]["modification"])
    else:
        print("类方：未见相近的经典方。")
    print("排序: " + " ".join(vocab().display_name(h) for h in out["ranking"][:20]))
    print("本工具仅供执业中医师参考，不能替代临床判断。")


def print_unrecognised(fragments: list[str], suggestions: dict[str, list[str]]) -> None:
    """The input the symptom parser left out (never dropped silently), with the vocabulary symptoms it may mean."""
    for fragment in fragments:
        hint = suggestions.get(fragment)
        print(f"未识别: {fragment!r}" + (f"  (是否指: {'、'.join(hint)})" if hint else ""))


def print_drugs(out: dict) -> None:
    if out["drugs"] or out["unchecked_drugs"]:
        print("西药: " + ("、".join(f"{d['name_zh']}（{d['name']}）" if d["name_zh"] else d["name"]
                                   for d in out["drugs"]) or "（无可核查者）")
              + "".join(f"  未核查: {u['text']}" for u in out["unchecked_drugs"]))


def run_check(args: argparse.Namespace) -> int:
    herbs = split_herb_list(args.herbs)
    doses = parse_doses(args.doses, herbs)
    engine = rules()
    patient = Patient.from_input(args.pregnant, args.drugs)
    warnings = engine.check_prescription(herbs, patient, doses)
    resolved = [vocab().resolve_herb(h) for h in herbs]
    report = {
        "herbs": [{"name": r.text, "vocabulary_herb": r.herb, "via": r.via, "family": r.family} for r in resolved],
        "pregnant": args.pregnant,
        **drugs_json(patient),
        "doses": doses,
        "unknown_herbs": [h for h in herbs if not engine.is_known(h)],
        "warnings": [w.to_dict() for w in warnings],
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print("处方: " + " ".join(herbs) + ("  (孕妇)" if args.pregnant else ""))
        print_drugs(report)
        if not warnings:
            print("未发现配伍、妊娠、毒性、剂量或与所列西药的相互作用问题。")
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
        print_unrecognised(result.unrecognised, result.suggestions)
    if not result.symptoms:
        print("error: none of the input was recognised as a symptom of the vocabulary", file=sys.stderr)
        return 3
    return 0


def safety_weight(text: str) -> float:
    """A safety weight from the command line: a finite number ≥ 0 (a negative one would reward unsafe herbs)."""
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return check_safety_weight(weight, "the safety weight")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rxapp", description="rx: TCM prescription decision support "
                                     "for qualified practitioners (not a diagnosis).")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="build a prescription step by step from symptoms")
    what = rec.add_mutually_exclusive_group(required=True)
    what.add_argument("--symptoms", help="free Chinese text, e.g. '咳嗽 恶寒'")
    what.add_argument("--batch", type=Path, help='JSONL, one {"id", "symptoms" (text or a list), "pregnant", "drugs", '
                      '"start" or "formula"} per line; one JSON line out per line in, in order')
    rec.add_argument("--pregnant", action="store_true", help="apply the pregnancy rules")
    rec.add_argument("--drugs", nargs="+", default=[], metavar="DRUG",
                     help="the Western drugs the patient takes (English or Chinese generic name, class, or ATC "
                     "code), e.g. warfarin 地高辛")
    draft = rec.add_mutually_exclusive_group()
    draft.add_argument("--start", nargs="+", default=[], metavar="HERB",
                       help="revise this draft with 加/减 steps instead of starting from nothing, e.g. 麻黄 桂枝 杏仁")
    draft.add_argument("--formula", metavar="NAME", help="revise a classical formula, by name or pinyin, e.g. 麻黄汤")
    rec.add_argument("--screen-weight", type=safety_weight, default=StepperConfig.screen_weight,
                     help="logit cost per broken safety rule, the app's safety weight α (default %(default)g; "
                     "a finite number ≥ 0)")
    rec.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    rec.add_argument("--top-p", type=float, default=1.0)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file or HF folder (default: the "
                     "embedded model)")
    rec.add_argument("--backend", choices=["llama", "hf"], help="default: llama for a file, hf for a folder")
    rec.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                     help="HF folders only: 4 or 8-bit weights through bitsandbytes")
    rec.add_argument("--n-gpu-layers", type=int, default=0, help="llama.cpp layers on the GPU (-1: all)")
    rec.add_argument("--json", action="store_true", help="print JSON")
    rec.set_defaults(run=run_recommend)
    check = sub.add_parser("check", help="safety-check a prescription (十八反, 十九畏, pregnancy, toxicity, dose, "
                           "interactions with the patient's drugs)")
    check.add_argument("--herbs", nargs="+", required=True, metavar="HERB", help="herb names, e.g. 附子 半夏")
    check.add_argument("--pregnant", action="store_true", help="apply the pregnancy rules")
    check.add_argument("--drugs", nargs="+", default=[], metavar="DRUG",
                       help="the Western drugs the patient takes, e.g. 华法林 digoxin C03CA01")
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
    except (SymptomInputError, HerbInputError, DoseError, MedicationInputError, FormulaInputError,
            ModelMismatchError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the user gets one readable line, never a traceback
        print(f"error: internal error ({type(e).__name__}: {e}); please report it", file=sys.stderr)
        return 1
