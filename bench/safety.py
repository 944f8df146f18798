"""How long the safety engine and the symptom parser take per call, on the test split's real prescriptions.

The stepper calls `check_addition` once per candidate herb, so this bounds what safety costs a generated step.
Usage: python -m bench.safety [--json] [--out runs/bench/safety.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.data.records import load_split
from pipeline.runfolder import write_json
from rxapp.safety import Patient, rules
from rxapp.vocab import vocab


def elapsed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print the JSON rows")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/safety.json"))
    args = parser.parse_args()

    records = load_split("test")
    vocab.cache_clear()
    rules.cache_clear()
    load_ms = elapsed(rules) * 1e3  # reads the vocabulary and the rule file
    engine, v = rules(), vocab()
    cases: dict[str, Callable] = {
        "check_prescription": lambda r: engine.check_prescription(list(r.herbs), Patient(pregnant=True)),
        "check_addition": lambda r: engine.check_addition(list(r.herbs[:-1]), r.herbs[-1], Patient(pregnant=True)),
        "parse_symptoms": lambda r: v.parse_symptoms(" ".join(r.symptoms)),
    }
    rows = [{"operation": "load rules + vocabulary", "calls": 1, "median_ms": load_ms, "p95_ms": load_ms,
             "max_ms": load_ms}]
    for name, fn in cases.items():
        per_record = [elapsed(lambda r=r, fn=fn: fn(r)) for r in records]
        rows.append({"operation": name, "calls": len(per_record),
                     "median_ms": statistics.median(per_record) * 1e3,
                     "p95_ms": statistics.quantiles(per_record, n=20)[-1] * 1e3,
                     "max_ms": max(per_record) * 1e3})
    print(f"{'operation':<26}{'calls':>8}{'median ms':>12}{'p95 ms':>10}{'max ms':>10}")
    for row in rows:
        print(f"{row['operation']:<26}{row['calls']:>8}{row['median_ms']:>12.3f}{row['p95_ms']:>10.3f}"
              f"{row['max_ms']:>10.3f}")
    write_json(rows, args.out)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
