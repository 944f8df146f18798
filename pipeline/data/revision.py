"""Drafts to revise: a doctors' list corrupted (true herbs dropped, plausible wrong herbs added), and the revision
example the knowledge teacher writes for it. One corruption serves SFT's revision examples, GRPO's corrupted states
and the revision evaluation.

A revision example names the draft in its prompt (初稿) and gives it as the first 加 lines of the response (`given`:
the model is not trained to write them, so it never learns to add the wrong herbs), then removes each wrong herb (减,
with the main action this presentation does not need), then adds back each dropped one (加, explained as `teach`
explains), then the 方解 of the doctors' list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.baselines import symptom_matrix
from pipeline.data.records import Record
from pipeline.data.teacher import TrainStats, explain
from rxapp.knowledge import herb_actions
from rxapp.stepformat import (
    render_analysis,
    render_moves,
    render_prompt,
    render_removal,
    render_step,
    steps_prefix,
)
from rxapp.vocab import vocab

MAX_CHANGES = 3  # a revision example drops 0–3 true herbs and adds 0–3 wrong ones (at least one change)
SEED = 28  # the corruptions of the training records, fixed so that distillation is reproducible
# where an evaluation draft's wrong herbs come from (pipeline.evaluate.revision_cases): "plausible", the herbs the
# training statistics rank highest for the symptoms, as in every training draft; "foreign", other cases' doctors'
# lists, written for other presentations: herbs that do not fit, which the statistics can tell
WRONG_HERBS = ("plausible", "foreign")


@dataclass(frozen=True)
class Corruption:
    draft: tuple[str, ...]  # what the reviser starts from: the kept true herbs and the wrong ones, mixed
    dropped: tuple[str, ...]  # true herbs left out of the draft
    wrong: tuple[str, ...]  # herbs in the draft that the doctors did not write


def corrupt(truth: Sequence[str], candidates: Sequence[str], drop: int, add: int, rng: random.Random) -> Corruption:
    """`truth` with `drop` herbs left out (at least one kept) and `add` plausible wrong herbs put in: the best-ranked
    `candidates` outside the truth that name no drug of it, one drawn from each of the 3 × `add` best."""
    v = vocab()
    kept = list(truth)
    rng.shuffle(kept)
    dropped, kept = kept[: min(drop, len(kept) - 1)], kept[min(drop, len(kept) - 1):]
    taken = {v.identity(h) for h in truth} | v.second_names(truth)
    wrong = [h for h in candidates if h not in taken and v.identity(h) == h][: 3 * add]
    wrong = rng.sample(wrong, min(len(wrong), add))
    draft = kept + wrong
    rng.shuffle(draft)
    return Corruption(tuple(draft), tuple(dropped), tuple(wrong))


def plausible(stats: TrainStats, symptom_sets: Sequence[Sequence[str]], k: int = 30) -> list[list[str]]:
    """For each symptom set, the `k` herbs the co-occurrence statistics score highest, best first."""
    herbs = vocab().herbs
    scores = symptom_matrix(symptom_sets) @ stats.conditional
    return [[herbs[i] for i in row[:k]] for row in np.argsort(-scores, axis=1, kind="stable")]


def training_drafts(records: Sequence[Record], stats: TrainStats, rng: random.Random, chunk: int = 2048
                    ) -> list[Corruption]:
    """A draft of each record as the revision examples draw them: 0–MAX_CHANGES of its herbs dropped and as many
    plausible wrong ones added, at least one change."""
    out = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        for record, candidates in zip(part, plausible(stats, [r.symptoms for r in part]), strict=True):
            out.append(corrupt(record.herbs, candidates, *draw_changes(rng), rng))
    return out


def draw_changes(rng: random.Random) -> tuple[int, int]:
    """How many true herbs a training draft drops and how many wrong ones it adds: 0–MAX_CHANGES each, at least one
    change."""
    while True:
        drop, add = rng.randint(0, MAX_CHANGES), rng.randint(0, MAX_CHANGES)
        if drop or add:
            return drop, add


def teach_revisions(records: Sequence[Record], stats: TrainStats) -> list[dict]:
    """A revision example of every record, seeded (SEED)."""
    drafts = training_drafts(records, stats, random.Random(SEED))
    return [teach_revision(r, c, stats) for r, c in zip(records, drafts, strict=True)]


def removal_reason(herb: str) -> str:
    """Why a wrong herb goes: its first main action, which this presentation does not need."""
    actions = herb_actions(herb)
    return render_removal(actions[:1])


def teach_revision(record: Record, c: Corruption, stats: TrainStats) -> dict:
    """The revision example of `record` from its draft (see the module docstring)."""
    symptoms = record.symptoms
    draft = [("add", h, explain(h, symptoms, stats)) for h in c.draft]
    moves = (draft + [("remove", h, removal_reason(h)) for h in reversed(stats.order(symptoms, c.wrong))]
             + [("add", h, explain(h, symptoms, stats)) for h in stats.order(symptoms, c.dropped)])
    analysis = render_analysis(symptoms)
    given = steps_prefix(analysis) + "".join(render_step(h, e) for _, h, e in draft)  # what render_moves begins with
    response = render_moves(analysis, moves)
    return {"id": f"{record.id}:revision", "symptoms": list(symptoms), "prompt": render_prompt(symptoms, draft=c.draft),
            "given": given, "response": response, "draft": list(c.draft), "dropped": list(c.dropped),
            "wrong": list(c.wrong), "herbs": list(record.herbs)}
