"""The offline knowledge teacher: writes the 处方 steps from the herb knowledge and from statistics of the training
split only (the 症状分析 restates the presenting symptoms and the 方解 is composed from the steps; see
rxapp.stepformat). Every claim it makes is a sourced fact or a training statistic; it is deterministic, so its
output can be cached and reproduced.

Explanation: for each herb, the (main action, symptom) pair of this patient that best says why it is there. A pair
is a candidate when the herb sources pair the action with the symptom well beyond chance (over the vocabulary
herbs, those whose actions hold one of its words, 平喘 of 宣肺平喘, are named for the symptom at least twice as often
as chance, or above chance where the word names the complaint relieved, 止痛 for 头痛; SourceAssociation,
source_pairs), and the herb's own sources name the symptom among what it treats
(rxapp.knowledge.treats) or training prescriptions gave the herb for it. A candidate scores its lift, plus 1 when
the herb's sources name the symptom. The herb's own monograph pairs too (monograph_action: the action that shares
a character with a 主治 term naming the symptom): by a telling character above every pair of the sources (桔梗 祛痰
for 咳嗽痰多's 咳嗽, where the sources pair 利咽), otherwise below them (柴胡 疏散退热 for 寒热往来, which no other
herb's sources name). The best is cited, as 主治 when the sources name the symptom and 用于 otherwise; with none,
the herb's role (调和诸药) when it has one, else its lead action alone (rxapp.knowledge.lead_action): no symptom is
claimed. It never cites an action the herb's sources do not give, nor ties an action to a symptom neither the
sources nor the herb's monograph pair it with.

Why the sources and not the prescriptions: an action's association with a symptom measured on the prescriptions
(the patients given other herbs with the action) is confounded by everything else those herbs do: it tied 黄芩's 安胎
to 恶寒发热, 甘草's 祛痰止咳 to 潮热 and 麻黄's 利水消肿 to 气喘. The sources pair an action with what it treats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import product
from typing import NamedTuple

import numpy as np

from pipeline.data.baselines import CoOccurrence, herb_matrix
from pipeline.data.records import Record, load_split
from rxapp.knowledge import (
    ACTION_VERBS,
    ROLE_ACTIONS,
    herb_actions,
    knowledge,
    lead_action,
    main_actions,
    named_symptoms,
    naming_terms,
    treats,
)
from rxapp.stepformat import (
    Claim,
    explanation_claims,
    render_analysis,
    render_explanation,
    render_prompt,
    render_response,
)
from rxapp.vocab import vocab

MIN_HERBS = 2  # herbs that must pair an action word with a symptom before the sources' pairing counts
MIN_LIFT = float(np.log(2))  # below twice chance, the pairs read on validation were mostly wrong (甘草 清热解毒 噎膈)
MONOGRAPH = 4.0  # added to a pair the herb's monograph gives by a telling character: above any the sources give
MONOGRAPH_ONLY = 1e-3  # the score of a pair the monograph gives otherwise: cited where the sources pair none
COMMON = 10  # a character in this many vocabulary symptoms (痛 37, 热 14, 血 14) tells no action from another
RELIEVING = frozenset("止退平消散除祛明")  # verbs whose object is the complaint relieved: 止痛, 退热, 平喘, 明目


def echoes(action: str, symptom: str) -> bool:
    """Whether the action names the complaint it relieves in the symptom: 止痛 in 祛风止痛 for 头痛, 退热 for 壮热."""
    return any(len(w) == 2 and w[0] in RELIEVING and w[1] in symptom for w in action_words(action))


def action_words(action: str) -> tuple[str, ...]:
    """The verb–object words an action is made of (止咳平喘: 止咳, 平喘); one of odd length (补肝肾) is one word."""
    return (action,) if len(action) % 2 else tuple(action[i:i + 2] for i in range(0, len(action), 2))


class SourceAssociation:
    """Which actions the herb sources pair with which symptoms: over the vocabulary herbs with citable actions
    (rxapp.knowledge.herb_actions), an action word goes with a symptom when the herbs whose actions hold the word are
    named for the symptom (rxapp.knowledge.named_symptoms) more often than chance, by MIN_HERBS herbs at least. An
    action scores the best of its words. Textbook evidence, independent of the prescriptions."""

    def __init__(self) -> None:
        herbs = [h for h in vocab().herbs if herb_actions(h)]
        self.herbs = len(herbs)
        self.with_word: Counter[str] = Counter()
        self.with_symptom: Counter[str] = Counter()
        self.together: Counter[tuple[str, str]] = Counter()
        for herb in herbs:
            words = {w for a in herb_actions(herb) for w in action_words(a)}
            named = named_symptoms(herb)
            self.with_word.update(words)
            self.with_symptom.update(named)
            self.together.update(product(words, named))
        self.named_with: dict[str, set[str]] = {}  # word → the symptoms named for a herb whose actions hold it
        for word, symptom in self.together:
            self.named_with.setdefault(word, set()).add(symptom)

    def lift(self, action: str, symptom: str) -> float:
        """> 0: the sources pair a word of `action` with `symptom` beyond chance; the log of observed over expected
        herbs, one herb added to the expected count so that two rare words sharing a symptom do not count for much."""
        def word_lift(word: str) -> float:
            together = self.together[word, symptom]
            if together < MIN_HERBS:
                return -np.inf
            return float(np.log(together / (self.with_word[word] * self.with_symptom[symptom] / self.herbs + 1)))
        return max(map(word_lift, action_words(action)))

    def symptoms(self, action: str) -> list[str]:
        """The symptoms the sources pair `action` with (source_pairs), in vocabulary order."""
        named = {s for w in action_words(action) for s in self.named_with.get(w, ())}
        return [s for s in vocab().symptoms if s in named and source_pairs(action, s, self.lift(action, s))]


@cache
def source_association() -> SourceAssociation:
    return SourceAssociation()


class Monograph(NamedTuple):
    """What a herb's monograph gives for one symptom (monograph_action)."""

    action: str
    telling: bool  # it shares a character with the 主治 term that few symptoms hold (痰, 痞, 喘; not 痛, 热, 血)


@cache  # pair_score asks it once per action of the herb, and associated_pairs once more per symptom
def monograph_action(herb: str, symptom: str) -> Monograph | None:
    """The main action the herb's own monograph gives for the symptom. A monograph (药典, 《中药学》) lists the
    功效 and then what they treat; for a 主治 term that names the symptom (rxapp.knowledge.naming_terms), its action
    is the one that shares an object character with it: most shared with the symptom itself first (清热泻火 with
    高热烦渴 for 石膏's 壮热, by 热), then telling ones (fewer than COMMON symptoms hold them: 祛痰 with 咳嗽痰多 for
    桔梗's 咳嗽, 消痞散结 with 胸脘痞闷 for 半夏's 胸闷), then any, then the first listed. Where no action
    shares one (杜仲: 补肝肾, 强筋骨 and 腰膝酸痛), the action whose words the herb sources pair best with the
    symptom, if above chance. None for a herb without curated actions, or a symptom its terms do not name."""
    terms = naming_terms(herb, symptom)
    actions = herb_actions(herb) if herb in main_actions() and terms else ()
    common = symptoms_holding()
    shared = [(len(objects & set(symptom)), len({c for c in objects & set(term) if common[c] < COMMON}),
               len(objects & set(term)), -i, action)
              for i, action in enumerate(actions) for objects in [set(action) - ACTION_VERBS] for term in terms]
    if best := max((key for key in shared if key[2]), default=None):
        return Monograph(best[-1], best[1] > 0)
    lift, action = max(((source_association().lift(a, symptom), a) for a in actions), default=(-np.inf, None))
    return Monograph(action, False) if lift > 0 else None


@cache
def symptoms_holding() -> Counter[str]:
    """How many vocabulary symptoms hold each character."""
    return Counter(c for s in vocab().symptoms for c in set(s))


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


@cache
def training_stats() -> TrainStats:
    """The teacher's statistics from the clean training lists, whatever lists a model learned from: what the
    explanation metrics judge every model by, and what the revision drafts of the evaluation and of stop tuning draw
    their plausible wrong herbs from."""
    return TrainStats.from_records(load_split("train", "clean"))


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
    """How well "this action, for this symptom" says why the herb is there (see the module docstring): a pair the
    herb's own monograph gives by a telling character (monograph_action) above every pair the sources give, one it
    gives otherwise below them; -inf when neither pairs the action with the symptom."""
    lift, named = source_association().lift(action, symptom), treats(herb, symptom)
    given = monograph_action(herb, symptom)
    if given and given.action == action and given.telling:
        return MONOGRAPH + max(lift, 0) + named
    if source_pairs(action, symptom, lift) and (named or stats.p(herb, symptom) > 0):  # 用于: it was given
        return lift + named
    return MONOGRAPH_ONLY if given and given.action == action else -np.inf


def source_pairs(action: str, symptom: str, lift: float) -> bool:
    """Whether the sources pair the action with the symptom: at least twice as often as chance (MIN_LIFT), or above
    chance where the action names the complaint relieved (echoes): 止痛 and 头痛 are both too common for a high
    lift."""
    return lift >= MIN_LIFT or (lift > 0 and echoes(action, symptom))


def associated_pairs(stats: TrainStats) -> list[tuple[str, str, str, float]]:
    """Every (herb, main action, symptom) that `explain` may cite together, with its pair_score (above −∞): the
    table the app ships (rxapp.knowledge.associated), so that its steps cite the pair the teacher would."""
    out = []
    for herb in vocab().herbs:
        given = {s: m.action for s in named_symptoms(herb) if (m := monograph_action(herb, s))}
        for action in herb_actions(herb):
            candidates = {*source_association().symptoms(action), *(s for s, a in given.items() if a == action)}
            scored = [(s, pair_score(herb, action, s, stats)) for s in vocab().symptoms if s in candidates]
            out += [(herb, action, s, round(score, 4)) for s, score in scored if score > -np.inf]
    return out


def step_is_relevant(herb: str, explanation: str, symptoms: Sequence[str]) -> bool:
    """A step's reason is relevant when it cites a main action of the herb (herb_actions) for a symptom of this
    patient that the herb's monograph gives the action for (monograph_action) or that the herb sources pair with the
    action (source_pairs), or cites the herb's role alone (调和诸药)."""
    claims = explanation_claims(explanation)
    actions = [c.value for c in claims if c.kind == "effect"]
    cited = [c.value for c in claims if c.kind != "effect" and c.value in symptoms]
    if not actions or actions[0] not in herb_actions(herb):
        return False
    if not cited:
        return actions[0] in ROLE_ACTIONS
    return any(((m := monograph_action(herb, s)) and m.action == actions[0])
               or source_pairs(actions[0], s, source_association().lift(actions[0], s)) for s in cited)


def explain(herb: str, symptoms: Sequence[str], stats: TrainStats) -> str:
    """Why this herb for this patient: the best-scoring (main action, symptom) pair, else its role or lead action
    alone (see the module docstring)."""
    actions = herb_actions(herb)
    pairs = [(pair_score(herb, a, s, stats), -i, -j, a, s) for i, a in enumerate(actions)
             for j, s in enumerate(symptoms)]
    score, _, _, action, symptom = max(pairs, default=(-np.inf, 0, 0, None, None))
    if score > 0:
        return render_explanation([action], *((symptom, None) if treats(herb, symptom) else (None, symptom)))
    if lead := lead_action(herb):
        return render_explanation([lead])
    return render_explanation(usage=stats.usage(herb, symptoms))


def teach(record: Record, stats: TrainStats) -> dict:
    """One distilled training example: prompt, response, and the herbs in step order."""
    herbs = stats.order(record.symptoms, record.herbs)
    response = render_response(render_analysis(record.symptoms),
                               [(h, explain(h, record.symptoms, stats)) for h in herbs])
    return {"id": record.id, "symptoms": list(record.symptoms), "prompt": render_prompt(record.symptoms),
            "response": response, "herbs": herbs}
