"""The offline knowledge teacher: writes the 处方 steps from the herb knowledge and from statistics of the training
split only (the 症状分析 restates the presenting symptoms and the 方解 is composed from the steps; see
rxapp.stepformat). Every claim it makes is a sourced fact or a training statistic; it is deterministic, so its
output can be cached and reproduced.

Explanation: for each herb, the (main action, symptom) pair of this patient that best says why it is there. A pair
is a candidate when the action goes with the symptom beyond chance in the training prescriptions (a positive log
lift: prescriptions whose other herbs have the action were written for patients with the symptom more often than
chance; ActionAssociation), and the herb's sources name the symptom among what it treats (rxapp.knowledge.treats)
or training prescriptions gave the herb for it. A candidate scores its lift, plus 1 when the sources name the
symptom. The best is cited, as 主治 when the sources name the symptom and 用于 otherwise; with none, the herb's role
(调和诸药) when it has one, else, for no symptom, its main action that comes closest to one of this patient's (the
highest lift, though not above chance; the main order breaks ties). It never cites an action the herb's sources do
not give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.data.baselines import CoOccurrence, herb_matrix
from pipeline.data.records import Record
from rxapp.knowledge import ROLE_ACTIONS, herb_actions, knowledge, treats
from rxapp.stepformat import (
    Claim,
    explanation_claims,
    render_analysis,
    render_explanation,
    render_prompt,
    render_response,
)
from rxapp.vocab import vocab

SMOOTHING = 5.0  # pseudo-prescriptions added to both sides of a lift, so that rare actions do not win on a few


class ActionAssociation:
    """Which actions (功效) of the prescribed herbs go with which symptoms beyond chance in the training
    prescriptions: a prescription has an action when one of its herbs does (rxapp.knowledge.herb_actions). For one
    herb's explanation it is measured without that herb, so that the patients 麻黄 was given for do not make every
    action of 麻黄 look like it treats their symptoms: only the other herbs sharing the action speak for it."""

    def __init__(self, train: Sequence[Record]) -> None:
        v = vocab()
        actions = sorted({a for h in v.herbs for a in herb_actions(h)})
        self.index = {a: i for i, a in enumerate(actions)}
        self.herbs = [set(r.herbs) for r in train]
        self.carriers = np.zeros((len(train), len(actions)), dtype=np.uint8)  # herbs of the record with the action
        self.symptoms = np.zeros((len(train), len(v.symptoms)), dtype=np.float32)
        for row, record in enumerate(train):
            for herb in record.herbs:
                self.carriers[row, [self.index[a] for a in herb_actions(herb)]] += 1
            self.symptoms[row, [v.symptom_id[s] for s in record.symptoms]] = 1
        self.together = (self.carriers > 0).T.astype(np.float32) @ self.symptoms  # actions × symptoms
        self.with_action = (self.carriers > 0).sum(axis=0)
        self.with_symptom = self.symptoms.sum(axis=0)

    @lru_cache(maxsize=1024)  # noqa: B019 (one per teacher run; the herbs' lifts are asked again for every record)
    def lifts_without(self, herb: str) -> dict[str, np.ndarray]:
        """For each action of `herb`: its smoothed log lift with every symptom, `herb`'s own prescriptions counting
        for the action only where another of their herbs has it."""
        rows = [i for i, herbs in enumerate(self.herbs) if herb in herbs]
        out = {}
        for action in herb_actions(herb):
            a = self.index[action]
            only_this = [r for r in rows if self.carriers[r, a] == 1]
            together = self.together[a] - self.symptoms[only_this].sum(axis=0)
            expected = (self.with_action[a] - len(only_this)) * self.with_symptom / len(self.herbs)
            out[action] = np.log((together + SMOOTHING) / (expected + SMOOTHING))
        return out

    def lift(self, herb: str, action: str, symptom: str) -> float:
        """> 0: prescriptions whose other herbs have `action` were written for `symptom` more often than chance."""
        lifts = self.lifts_without(herb)
        return float(lifts[action][vocab().symptom_id[symptom]]) if action in lifts else -np.inf


@dataclass
class TrainStats:
    """Symptom–herb statistics of the training records."""

    conditional: np.ndarray  # symptoms × herbs: P(herb | symptom)
    popularity: np.ndarray  # herbs: number of training prescriptions
    actions: ActionAssociation

    @classmethod
    def from_records(cls, train: Sequence[Record]) -> TrainStats:
        return cls(CoOccurrence().fit(train).conditional, herb_matrix(train).sum(axis=0), ActionAssociation(train))

    def p(self, herb: str, symptom: str) -> float:
        v = vocab()
        return float(self.conditional[v.symptom_id[symptom], v.herb_id[herb]])

    def order(self, symptoms: Sequence[str], herbs: Sequence[str]) -> list[str]:
        """Most certain first: co-occurrence score, then popularity, then vocabulary id."""
        v = vocab()

        def key(h: str) -> tuple[float, float, int]:
            return -sum(self.p(h, s) for s in symptoms), -self.popularity[v.herb_id[h]], v.herb_id[h]
        return sorted(herbs, key=key)

    def usage(self, herb: str, symptoms: Sequence[str]) -> str | None:
        """The patient's symptom with which this herb was most often prescribed in training, if any."""
        best = max(symptoms, key=lambda s: self.p(herb, s), default=None)
        return best if best is not None and self.p(herb, best) > 0 else None


def claim_is_grounded(claim: Claim, herb: str, symptoms: Sequence[str], stats: TrainStats) -> bool:
    """A 功效 claim must be a sourced fact about the herb (a KG effect or a citable main action); a 主治 claim must
    name a symptom of this patient that the herb's sources say it treats; a 用于 claim must name a symptom of this
    patient with which training prescriptions gave the herb."""
    if claim.kind == "effect":
        return claim.value in knowledge()[herb].effects or claim.value in herb_actions(herb)
    if claim.kind == "indication":
        return claim.value in symptoms and treats(herb, claim.value)
    return claim.value in symptoms and claim.value in vocab().symptom_id and stats.p(herb, claim.value) > 0


def pair_score(herb: str, action: str, symptom: str, stats: TrainStats) -> float:
    """How well "this action, for this symptom" says why the herb is there (see the module docstring); -inf when
    the action does not go with the symptom beyond chance."""
    lift, named = stats.actions.lift(herb, action, symptom), treats(herb, symptom)
    if lift <= 0 or not (named or stats.p(herb, symptom) > 0):  # 用于 claims a herb was given for the symptom
        return -np.inf
    return lift + named


def associated_pairs(stats: TrainStats) -> list[tuple[str, str, str, float]]:
    """Every (herb, main action, symptom) that `explain` may cite together (pair_score above −∞), with its log lift:
    the table the app ships (rxapp.knowledge.associated), so that its steps tie the pairs the teacher taught."""
    v, out = vocab(), []
    for herb in v.herbs:
        for action, lifts in stats.actions.lifts_without(herb).items():
            out += [(herb, action, v.symptoms[i], round(float(lifts[i]), 4)) for i in np.flatnonzero(lifts > 0)
                    if pair_score(herb, action, v.symptoms[i], stats) > -np.inf]
    return out


def step_is_relevant(herb: str, explanation: str, symptoms: Sequence[str], stats: TrainStats) -> bool:
    """A step's reason is relevant when it cites a main action of the herb (herb_actions) for a symptom of this
    patient that went with that action beyond chance in training (ActionAssociation.lift > 0), or cites the herb's
    role alone (调和诸药)."""
    claims = explanation_claims(explanation)
    actions = [c.value for c in claims if c.kind == "effect"]
    cited = [c.value for c in claims if c.kind != "effect" and c.value in symptoms]
    if not actions or actions[0] not in herb_actions(herb):
        return False
    if not cited:
        return actions[0] in ROLE_ACTIONS
    return any(stats.actions.lift(herb, actions[0], s) > 0 for s in cited)


def explain(herb: str, symptoms: Sequence[str], stats: TrainStats) -> str:
    """Why this herb for this patient: the best-scoring (main action, symptom) pair, its role, or its closest main
    action alone (see the module docstring)."""
    actions = herb_actions(herb)
    pairs = [(pair_score(herb, a, s, stats), -i, -j, a, s) for i, a in enumerate(actions)
             for j, s in enumerate(symptoms)]
    score, _, _, action, symptom = max(pairs, default=(-np.inf, 0, 0, None, None))
    if score > 0:
        return render_explanation([action], *((symptom, None) if treats(herb, symptom) else (None, symptom)))
    role = next((a for a in actions if a in ROLE_ACTIONS), None)
    if role or actions:
        return render_explanation([role or max(actions, key=lambda a: max(
            (stats.actions.lift(herb, a, s) for s in symptoms), default=-np.inf))])
    return render_explanation(usage=stats.usage(herb, symptoms))


def teach(record: Record, stats: TrainStats) -> dict:
    """One distilled training example: prompt, response, and the herbs in step order."""
    herbs = stats.order(record.symptoms, record.herbs)
    response = render_response(render_analysis(record.symptoms),
                               [(h, explain(h, record.symptoms, stats)) for h in herbs])
    return {"id": record.id, "symptoms": list(record.symptoms), "prompt": render_prompt(record.symptoms),
            "response": response, "herbs": herbs}
