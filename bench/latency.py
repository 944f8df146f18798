"""Latency of whole recommendations through the stepper, per backend and precision, against bare llama.cpp.

Each row runs in its own process (so that its peak memory is its own) on the first N test cases, after one warm-up
case. `reference_llama_s` is bare llama-cpp-python evaluating the same tokens one at a time (the GGUF of the row's
precision; f16 for the transformers rows): the cost of the model alone, which the stepper's own work adds to. It is
timed right after each case, so that both see the same machine (a shared CPU drifts), and `overhead` is the median
of those paired ratios; the reference model counts in the row's peak memory. `revision_s` is a whole revision of a
draft of the case's first 6 herbs (the draft explained, then revised; models of step format 2 and later).
Usage: python -m bench.latency --model-dir RUN/export [--cases 30] [--rows ...] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from pipeline.data.records import load_split
from pipeline.runfolder import write_json
from rxapp import DEFAULT_MODEL

ROWS = ("hf:fp32", "hf:4bit", "llama:f16", "llama:q8_0", "llama:q4_k_m")
COLUMNS = ("backend", "precision", "load_s", "first_step_s", "prescription_s", "revision_s", "reference_llama_s",
           "overhead", "tokens_per_s", "herbs", "peak_rss_mb")
DRAFT_HERBS = 6  # the draft a revision is timed on


def bare_llama_s(llm, prompt: list[int], decoded: list[int]) -> float:
    """Time for llama.cpp alone to evaluate the prompt, then each decoded token one at a time."""
    started = time.perf_counter()
    llm.n_tokens = 0
    llm.eval(prompt)
    for token in decoded[:-1]:  # the last token's logits are never needed
        llm.eval([token])
        llm._ctx.get_logits_ith(-1)
    return time.perf_counter() - started


def measure(row: str, model_dir: Path, cases: int) -> dict:
    """One row, in this process."""
    from rxapp.backends import HFBackend, LlamaBackend
    from rxapp.draft import Draft
    from rxapp.stepformat import REVISION_FORMAT
    from rxapp.stepper import Recommendation, recommend, warm_up
    from rxapp.vocab import vocab

    backend_name, precision = row.split(":")
    warm_up()
    if backend_name == "llama":
        gguf = model_dir / f"model-{precision}.gguf"
        backend = LlamaBackend(gguf, n_threads=2)
    else:
        gguf = model_dir / "model-f16.gguf"
        backend = HFBackend.load(model_dir / "hf", quantization="none" if precision == "fp32" else precision)
    import llama_cpp

    records = load_split("test")[: cases + 1]
    first, whole, tokens, herbs, reference, revision = [], [], [], [], [], []
    with backend, closing(llama_cpp.Llama(str(gguf), n_ctx=0, verbose=False, n_threads=2)) as reference_llm:
        for i, record in enumerate(records):
            started = time.perf_counter()
            first_at = None
            for event in recommend(backend, list(record.symptoms)):
                first_at = first_at or time.perf_counter() - started
                if isinstance(event, Recommendation):
                    final = event
            if i == 0:
                continue  # warm-up
            whole.append(time.perf_counter() - started)
            first.append(first_at)
            tokens.append(final.tokens)
            herbs.append(len(final.herbs))
            reference.append(bare_llama_s(reference_llm, final.prompt_ids, final.response_ids))
            if backend.format_version >= REVISION_FORMAT:
                draft = Draft(tuple(vocab().clean_herbs(record.herbs)[:DRAFT_HERBS]), ())
                started = time.perf_counter()
                for _ in recommend(backend, list(record.symptoms), draft=draft):
                    pass
                revision.append(time.perf_counter() - started)
    prescription, reference_s = statistics.median(whole), statistics.median(reference)
    return {"backend": backend_name, "precision": precision, "load_s": backend.load_s,
            "first_step_s": statistics.median(first), "prescription_s": prescription,
            "revision_s": statistics.median(revision) if revision else None,
            "reference_llama_s": reference_s,
            "overhead": statistics.median(w / r for w, r in zip(whole, reference, strict=True)),
            "tokens_per_s": sum(tokens) / sum(whole), "herbs": statistics.mean(herbs), "cases": len(whole),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def table(rows: list[dict]) -> str:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL.parent,
                        help="an export folder: hf/ and model-*.gguf (default: the embedded model)")
    parser.add_argument("--cases", type=int, default=30, help="test cases per row (default %(default)s)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--json", action="store_true", help="also print the JSON rows")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/latency.json"))
    parser.add_argument("--one", choices=ROWS, help=argparse.SUPPRESS)  # a row, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model_dir, args.cases)))
        return
    rows = []
    for row in args.rows:
        child = subprocess.run([sys.executable, "-m", "bench.latency", "--one", row, "--model-dir",
                                str(args.model_dir), "--cases", str(args.cases)], capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{row}: failed: {child.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"{row}: {rows[-1]['prescription_s']:.3f} s per prescription", file=sys.stderr)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=2))
    write_json(rows, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
