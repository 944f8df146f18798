"""The greedy stop rule (rxapp.modelinfo.StopThresholds: two thresholds and a herb limit), tuned on validation and
written into a trained model's metadata, which the evaluator, the exporter and the app read.

Greedy decoding picks the same herbs whenever it stops, so one pass per case that stops only at the most herbs a
rule may hold gives every threshold's prescription, and every herb limit's, as a prefix of that pass. Building from
nothing, the pass is the batched decoder's (pipeline.model.generation). Revising a draft, it is the app's own
stepper's, on validation drafts corrupted as the revision training examples are (0–3 of the doctors' herbs dropped,
0–3 plausible wrong ones added; not as the revision evaluation's test drafts are), cut after MAX_REVISION_STEPS: a
threshold that would go on past the cut is scored on the list there.
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
from pipeline.metrics import jaccard, paired_interval
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
# from nothing, the most herbs a prescription may hold; None leaves the threshold alone (the pass ends at 20 herbs)
HERB_LIMITS = (None, *range(4, 21))
MAX_REVISION_STEPS = 10  # a draft with the training's changes needs at most 6
REVISION_TUNING_SEED = 6


Pass = tuple[Sequence[float], Sequence[Sequence[str]]]


def stopped_list(opens: Sequence[float], lists: Sequence[Sequence[str]], threshold: float, limit: int | None = None
                 ) -> Sequence[str]:
    """The list a pass holds where the rule stops: at the first boundary whose chance still open is at most
    `threshold` (else at the pass's end), cut to `limit` herbs (a from-nothing pass only adds, so its cut is the
    list at that boundary)."""
    held = next((lists[i] for i, o in enumerate(opens) if o <= threshold), lists[-1])
    return held[:limit] if limit else held


def best_threshold(passes: Sequence[Pass], truths: Sequence[set[str]]) -> tuple[float, float]:
    """The threshold among THRESHOLDS whose lists have the best mean Jaccard, and that Jaccard. Each pass holds the
    chance still open at each step boundary where the rule was asked, and the list at each of those boundaries and
    at the pass's end (one list more)."""
    def mean_jaccard(threshold: float) -> float:
        return float(np.mean([jaccard(set(stopped_list(opens, lists, threshold)), truth)
                              for (opens, lists), truth in zip(passes, truths, strict=True)]))

    scores = {t: mean_jaccard(t) for t in THRESHOLDS}
    best = max(scores, key=scores.get)
    return best, scores[best]


def shortest_tied_rule(passes: Sequence[Pass], truths: Sequence[set[str]]) -> tuple[float, int | None, float]:
    """The from-nothing rule (threshold, herb limit) and its mean Jaccard: of the rules whose Jaccard ties the best
    one's (the 95 % paired bootstrap interval of best − it holds zero), the one with the shortest lists. Every herb
    past the doctors' is one the practitioner must strike out, and the model's stop probabilities barely tell which
    patients need longer lists (docs/lab/2026-12-07-stop-length.md), so a shorter list that scores as well is the
    better one."""
    scores, means, lengths = {}, {}, {}
    for rule in ((t, limit) for limit in HERB_LIMITS for t in THRESHOLDS):
        held = [stopped_list(opens, lists, *rule) for opens, lists in passes]
        scores[rule] = [jaccard(set(h), truth) for h, truth in zip(held, truths, strict=True)]
        means[rule] = float(np.mean(scores[rule]))
        lengths[rule] = float(np.mean([len(h) for h in held]))
    best = max(means, key=means.get)

    def ties(rule: tuple[float, int | None]) -> bool:
        return rule == best or paired_interval({"Jaccard": scores[best]}, {"Jaccard": scores[rule]}, "Jaccard")[0] <= 0

    chosen = min((rule for rule in scores if ties(rule)), key=lambda rule: (lengths[rule], -means[rule]))
    return *chosen, means[chosen]


def tune_scratch(model, tokenizer, symptom_sets: Sequence[Sequence[str]], truths: Sequence[set[str]],
                 max_herbs: int = HERB_LIMITS[-1]) -> tuple[float, int | None, float]:
    """The from-nothing threshold and herb limit (shortest_tied_rule) and their validation Jaccard, from one
    batched greedy pass per case that stops only at `max_herbs` herbs, the most any rule may hold (its steps
    alone: the 方解 after them would only cost time)."""
    passes = []
    for text, probabilities in decode(model, tokenizer, symptom_sets, StopThresholds(scratch=0.0, herb_limit=max_herbs),
                                      max_new_tokens=12 * max_herbs, desc="tune stopping", steps_only=True):
        herbs = parse_response(text).herbs
        passes.append((np.cumprod([1.0 - p for p in probabilities]), [herbs[: i + 1] for i in
                                                                       range(len(probabilities))] + [herbs]))
    return shortest_tied_rule(passes, truths)


def revision_pass(backend: HFBackend, symptoms: Sequence[str], draft: Sequence[str]
                  ) -> tuple[list[float], list[list[str]]]:
    """The stepper revising `draft` without stopping (the backend's revision threshold is 0), cut after
    MAX_REVISION_STEPS: the chance still open and the list at each boundary where the rule was asked, then the list
    at the end."""
    opens, lists, held, steps = [], [], list(draft), 0
    cfg = StepperConfig(screen_weight=0.0, remove_severe=False)  # the model's own moves, which its threshold stops
    for event in recommend(backend, symptoms, Patient(), cfg, Draft(tuple(draft), ())):
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
                  kept: StopThresholds | None = None, revision: bool = True) -> StopThresholds:
    """Tune a trained model's stop rule on (the first cases of) `validation`, examples with symptoms and the
    doctors' herbs, and write it into its metadata; with `kept`, keep its from-nothing threshold and herb limit;
    with `revision` false, keep the revision threshold too (`kept`'s, else ½): a run's trained stages tune building
    from nothing alone, and its export tunes revising, once, for the model that ships (pipeline.run.export)."""
    model, tokenizer = load_trained(folder)
    model.to(device)
    cases = validation[: settings.cases]
    if kept is None:
        scratch, limit, score = tune_scratch(model, tokenizer, [e["symptoms"] for e in cases],
                                             [set(e["herbs"]) for e in cases])
        report = {"stop_threshold": scratch, "herb_limit": limit, "val_Jaccard": round(score, 4),
                  "cases": len(cases)}
    else:
        scratch, limit = kept.scratch, kept.herb_limit
        report = {"stop_threshold": scratch, "herb_limit": limit, "kept": True}
    revising = (kept or StopThresholds()).revision
    if revision:
        backend = HFBackend(model, tokenizer, model_metadata(StopThresholds(scratch, 0.0)), str(folder))
        records = [Record(str(i), tuple(e["symptoms"]), tuple(e["herbs"]))
                   for i, e in enumerate(validation[: settings.revision_cases])]
        revising, revision_score, drafts = tune_revision(backend, records)
        report |= {"revision_stop_threshold": revising, "val_revision_Jaccard": round(revision_score, 4),
                   "drafts": drafts}
    thresholds = StopThresholds(scratch, revising, limit)
    write_model_metadata(folder, thresholds)
    tqdm.write(json.dumps(report))
    return thresholds
