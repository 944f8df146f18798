"""Alert load of the herb–drug interaction warnings, and what screening for them costs, on the test split.

For each medication list (none; warfarin; a diuretic with digoxin; tacrolimus) the app's stepper writes every test
case's prescription with that patient's drugs in its screen (screen weight 4, severe forbidden: the app's settings).
Reported per list: the share of prescriptions whose whole-prescription check raises an interaction warning of each
severity, both for the prescriptions written without the drugs in the screen (what the practitioner would be warned
about if rx ignored them) and with them; and P@5, F1@10 and Jaccard of the screened prescriptions against the
unscreened ones, with 95 % paired bootstrap intervals (clean herb lists).

Usage: python -m bench.interactions [--model assets/models/default/model-q4_k_m.gguf] [--limit N]
                                   [--out runs/bench/interactions.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from pipeline.data.records import load_split
from pipeline.metrics import COMPARED, case_scores, paired_interval, ranking_metrics
from pipeline.runfolder import write_json
from rxapp import DEFAULT_MODEL
from rxapp.backends import load_backend
from rxapp.safety import INTERACTION_RULE, SEVERITIES, Patient, rules
from rxapp.stepper import Recommendation, StepperConfig, recommend

MEDICATION_LISTS = {"none": [], "warfarin": ["warfarin"], "furosemide + digoxin": ["furosemide", "digoxin"],
                    "tacrolimus": ["tacrolimus"]}


def prescriptions(backend, records, patient: Patient, name: str) -> list[Recommendation]:
    cfg = StepperConfig()  # the app's screen
    return [next(e for e in recommend(backend, r.symptoms, patient, cfg) if isinstance(e, Recommendation))
            for r in tqdm(records, desc=name, unit="case", disable=None)]


def alert_shares(herb_lists: list[list[str]], patient: Patient) -> dict[str, float]:
    """The share of prescriptions whose check raises at least one interaction warning of each severity."""
    fired = dict.fromkeys(SEVERITIES, 0)
    for herbs in herb_lists:
        found = {w.severity for w in rules().check_prescription(herbs, patient) if w.rule == INTERACTION_RULE}
        for severity in found:
            fired[severity] += 1
    return {s: fired[s] / len(herb_lists) for s in SEVERITIES}


def metrics(final: list[Recommendation], truths: list[set[str]]) -> dict[str, float]:
    ranked = ranking_metrics([f.ranking for f in final], truths, ks=(5, 10))
    cases = case_scores([f.ranking for f in final], [f.herbs for f in final], truths)
    return {"P@5": ranked["P@5"], "F1@10": ranked["F1@10"], "Jaccard": sum(cases["Jaccard"]) / len(truths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, help="the first N test cases only")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/interactions.json"))
    args = parser.parse_args()

    records = load_split("test", "clean")[: args.limit]
    truths = [set(r.herbs) for r in records]
    rows = []
    with load_backend(args.model) as backend:
        plain = prescriptions(backend, records, Patient(), "no drugs")
        plain_cases = case_scores([f.ranking for f in plain], [f.herbs for f in plain], truths)
        for name, drugs in MEDICATION_LISTS.items():
            patient = Patient.from_input(False, drugs)
            screened = plain if not drugs else prescriptions(backend, records, patient, name)
            cases = case_scores([f.ranking for f in screened], [f.herbs for f in screened], truths)
            row = {"drugs": name, "n": len(records),
                   "unscreened": alert_shares([f.herbs for f in plain], patient),
                   "screened": alert_shares([f.herbs for f in screened], patient),
                   "avg_herbs": sum(len(f.herbs) for f in screened) / len(records), **metrics(screened, truths)}
            for metric in COMPARED:
                row[f"Δ {metric}"] = row[metric] - metrics(plain, truths)[metric]
                row[f"Δ {metric} CI"] = paired_interval(cases, plain_cases, metric)
            rows.append(row)
    print(f"{'drugs':<22}{'n':>6}" + "".join(f"{'unscreened ' + s:>20}" for s in SEVERITIES)
          + "".join(f"{'screened ' + s:>18}" for s in SEVERITIES) + f"{'herbs':>7}"
          + "".join(f"{'Δ ' + m:>26}" for m in COMPARED))
    for row in rows:
        print(f"{row['drugs']:<22}{row['n']:>6}" + "".join(f"{row['unscreened'][s]:>20.1%}" for s in SEVERITIES)
              + "".join(f"{row['screened'][s]:>18.1%}" for s in SEVERITIES) + f"{row['avg_herbs']:>7.2f}"
              + "".join(f"{row[f'Δ {m}']:>+10.4f} [{row[f'Δ {m} CI'][0]:+.4f}, {row[f'Δ {m} CI'][1]:+.4f}]"
                        for m in COMPARED))
    write_json(rows, args.out)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
