"""The greedy stop rule's two thresholds (rxapp.modelinfo.StopThresholds), tuned on validation and written into a
trained model's metadata, which the evaluator, the exporter and the app read.

Greedy decoding picks the same herbs whenever it stops, so one pass per case that never stops gives every
threshold's prescription as a prefix of that pass. Building from nothing, the pass is the batched decoder's
(pipeline.model.generation). Revising a draft, it is the app's own stepper's, on validation drafts corrupted as the
revision training examples are (0–3 of the doctors' herbs dropped, 0–3 plausible wrong ones added; not as the
revision evaluation's test drafts are), cut after MAX_REVISION_STEPS: a threshold that would go on past the cut is
scored on the list there.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import StoppingConfig
from pipeline.data.records import Record
from pipeline.data.revision import training_drafts
from pipeline.data.teacher import training_stats
from pipeline.metrics import jaccard
from pipeline.model.generation import decode
from pipeline.model.llm import load_trained
from rxapp.backends import HFBackend
from rxapp.draft import Draft, DraftInputError
from rxapp.modelinfo import StopThresholds, model_metadata, write_model_metadata
from rxapp.safety import Patient
from rxapp.stepformat import parse_response
from rxapp.stepper import Recommendation, Step, StepperConfig, recommend

# 1 stops at the first decision: for a revision, proposing no change, which validation picks when every change hurts
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 21))
MAX_REVISION_STEPS = 10  # a draft with the training's changes needs at most 6
REVISION_TUNING_SEED = 6


def best_threshold(passes: Sequence[tuple[Sequence[float], Sequence[Sequence[str]]]], truths: Sequence[set[str]]
                   ) -> tuple[float, float]:
    """The threshold among THRESHOLDS whose lists have the best mean Jaccard, and that Jaccard. Each pass holds the
    chance still open at each step boundary where the rule was asked, and the list at each of those boundaries and
    at the pass's end (one list more)."""
    def mean_jaccard(threshold: float) -> float:
        return float(np.mean([jaccard(set(next((lists[i] for i, o in enumerate(opens) if o <= threshold), lists[-1])),
                                      truth) for (opens, lists), truth in zip(passes, truths, strict=True)]))

    scores = {t: mean_jaccard(t) for t in THRESHOLDS}
    best = max(scores, key=scores.get)
    return best, scores[best]


def tune_scratch(model, tokenizer, symptom_sets: Sequence[Sequence[str]], truths: Sequence[set[str]],
                 max_herbs: int = 20) -> tuple[float, float]:
    """The from-nothing threshold and its validation Jaccard, from one batched greedy pass per case."""
    passes = []
    for text, probabilities in decode(model, tokenizer, symptom_sets, 0.0, max_new_tokens=12 * max_herbs,
                                      desc="tune stopping"):
        herbs = parse_response(text).herbs
        passes.append((np.cumprod([1.0 - p for p in probabilities]), [herbs[: i + 1] for i in
                                                                       range(len(probabilities))] + [herbs]))
    return best_threshold(passes, truths)


def revision_pass(backend: HFBackend, symptoms: Sequence[str], draft: Sequence[str]
                  ) -> tuple[list[float], list[list[str]]]:
    """The stepper revising `draft` without stopping (the backend's revision threshold is 0), cut after
    MAX_REVISION_STEPS: the chance still open and the list at each boundary where the rule was asked, then the list
    at the end."""
    opens, lists, held, steps = [], [], list(draft), 0
    for event in recommend(backend, symptoms, Patient(), StepperConfig(screen_weight=0.0), Draft(tuple(draft), ())):
        if isinstance(event, Recommendation) or steps == MAX_REVISION_STEPS:
            break
        if isinstance(event, Step) and event.action != "draft":
            if event.still_open is not None:
                opens.append(event.still_open)
                lists.append(list(held))
            held = [h for h in held if h != event.herb] if event.action == "remove" else [*held, event.herb]
            steps += 1
    return opens, [*lists, held]


def tune_revision(backend: HFBackend, records: Sequence[Record]) -> tuple[float, float, int]:
    """The revision threshold and its validation Jaccard on drafts of `records` corrupted as training's are, and
    the number of drafts it was tuned on (those too long for the model's context are left out)."""
    drafts = training_drafts(records, training_stats(), random.Random(REVISION_TUNING_SEED))
    passes, truths = [], []
    for record, corruption in tqdm(list(zip(records, drafts, strict=True)), desc="tune revision stopping",
                                   unit="draft", disable=None):
        try:
            passes.append(revision_pass(backend, record.symptoms, corruption.draft))
        except DraftInputError:
            continue
        truths.append(set(record.herbs))
    return *best_threshold(passes, truths), len(passes)


def tune_stopping(folder: Path, validation: Sequence[dict], device: str, settings: StoppingConfig,
                  scratch: float | None = None) -> StopThresholds:
    """Tune a trained model's two stop thresholds on (the first cases of) `validation`, examples with symptoms and
    the doctors' herbs, and write them into its metadata; with `scratch`, keep that from-nothing threshold and tune
    the revision one alone (GRPO trains the from-nothing stop but not revising, whose stop its changes move)."""
    model, tokenizer = load_trained(folder)
    model.to(device)
    cases = validation[: settings.cases]
    score = None
    if scratch is None:
        scratch, score = tune_scratch(model, tokenizer, [e["symptoms"] for e in cases],
                                      [set(e["herbs"]) for e in cases])
    backend = HFBackend(model, tokenizer, model_metadata(StopThresholds(scratch, 0.0)), str(folder))
    records = [Record(str(i), tuple(e["symptoms"]), tuple(e["herbs"]))
               for i, e in enumerate(validation[: settings.revision_cases])]
    revision, revision_score, drafts = tune_revision(backend, records)
    thresholds = StopThresholds(scratch, revision)
    write_model_metadata(folder, thresholds)
    tqdm.write(json.dumps({"stop_threshold": scratch, "val_Jaccard": score and round(score, 4), "cases": len(cases),
                           "revision_stop_threshold": revision, "val_revision_Jaccard": round(revision_score, 4),
                           "drafts": drafts}))
    return thresholds
