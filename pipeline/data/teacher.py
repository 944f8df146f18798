"""The offline knowledge teacher: writes the 处方 steps and the 方解 from the herb knowledge and from statistics of
the training split only (the 症状分析 restates the presenting symptoms; see rxapp.stepformat). Every claim it
makes is a knowledge-graph fact or a training statistic; it is deterministic, so its output can be cached and
reproduced.

Step order: a record's herbs are ordered most certain first given its symptoms: by the co-occurrence score
Σ_s P(herb | s) on the training split, then by training popularity, then by vocabulary id. The first steps are
thus the herbs the symptoms predict best, and later steps the more individual choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.baselines import CoOccurrence, herb_matrix
from pipeline.data.records import Record
from rxapp.knowledge import HerbFacts, knowledge
from rxapp.stepformat import Claim, render_analysis, render_explanation, render_prompt, render_response
from rxapp.vocab import vocab

# First characters of 功效 phrases (补脾益气, 清热解毒 …); the KG mixes these with 主治 (indications).
ACTION_VERBS = frozenset("清利消祛补止解通活散凉益温润健破化除行养舒泻理滋宣平安和调缓收敛固涩开醒降升发息定燥渗宁"
                         "排托软逐杀透纳回助暖壮退镇驱截")
NOT_ACTIONS = frozenset({"发热", "发黄", "消渴", "温疟", "温病", "泻痢", "化脓", "行经", "发狂", "发疹", "消化不良"})
MAX_EFFECTS = 1


@dataclass
class TrainStats:
    """Symptom–herb statistics of the training records."""

    conditional: np.ndarray  # symptoms × herbs: P(herb | symptom)
    popularity: np.ndarray  # herbs: number of training prescriptions

    @classmethod
    def from_records(cls, train: Sequence[Record]) -> TrainStats:
        return cls(CoOccurrence().fit(train).conditional, herb_matrix(train).sum(axis=0))

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


def action_effects(facts: HerbFacts, n: int = MAX_EFFECTS) -> list[str]:
    """The herb's first `n` 功效 phrases, in KG order."""
    symptoms = vocab().symptom_id
    return [e for e in facts.effects if 2 <= len(e) <= 6 and e[0] in ACTION_VERBS and e not in NOT_ACTIONS
            and e not in symptoms][:n]


def claim_is_grounded(claim: Claim, herb: str, symptoms: Sequence[str], stats: TrainStats) -> bool:
    """A 功效 or 主治 claim must be a KG fact about the herb (主治 also a symptom of this patient); a 用于 claim
    must name a symptom of this patient with which training prescriptions gave the herb."""
    facts = knowledge()[herb]
    if claim.kind == "effect":
        return claim.value in facts.effects
    if claim.kind == "indication":
        return claim.value in facts.effects and claim.value in symptoms
    return claim.value in symptoms and claim.value in vocab().symptom_id and stats.p(herb, claim.value) > 0


def explain(herb: str, symptoms: Sequence[str], stats: TrainStats) -> str:
    """Why this herb for these symptoms: its first 功效, and the symptom it treats (KG) or was most often prescribed
    for in training (statistics)."""
    facts = knowledge()[herb]
    indication = next((s for s in symptoms if s in facts.effects), None)
    usage = None if indication else stats.usage(herb, symptoms)
    return render_explanation(action_effects(facts), indication, usage)


def teach(record: Record, stats: TrainStats) -> dict:
    """One distilled training example: prompt, response, and the herbs in step order."""
    herbs = stats.order(record.symptoms, record.herbs)
    response = render_response(render_analysis(record.symptoms),
                               [(h, explain(h, record.symptoms, stats)) for h in herbs])
    return {"id": record.id, "symptoms": list(record.symptoms), "prompt": render_prompt(record.symptoms),
            "response": response, "herbs": herbs}
