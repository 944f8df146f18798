"""The step format at the level of tokens, for any model whose tokenizer makes each vocabulary herb one token: which
tokens may come next once the response has reached 【处方】. The stepper and the batched evaluator both use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import prod, tanh

from rxapp.knowledge import associated, herb_actions, lead_action, treats
from rxapp.modelinfo import DEFAULT_STOP_THRESHOLD, ModelMismatchError
from rxapp.stepformat import ACTION_SEPARATOR, ADD, CLAUSE_SEPARATOR, EXPLANATION_MARK, INDICATION, REMOVE, USAGE
from rxapp.vocab import vocab

MAX_DECODED_HERBS = 50  # the stepper stops adding here; the longest training prescription has 43 herbs


@dataclass(frozen=True)
class FormatTokens:
    add: int  # 加: a herb is added
    remove: int  # 减: a herb of the list is removed (revising a draft)
    stop: int  # 【: the model stops and goes on to 【方解】
    newline: int
    herbs: tuple[int, ...]  # the token of each vocabulary herb, in vocabulary order

    @classmethod
    def of(cls, tokenize: Callable[[str], list[int]], source: str = "the model") -> FormatTokens:
        """The format's tokens under `tokenize`; ModelMismatchError when a herb or marker is not one token."""
        def one(text: str) -> int:
            ids = tokenize(text)
            if len(ids) != 1:
                raise ModelMismatchError(f"{source}: {text!r} is {len(ids)} tokens, not one; the model's tokenizer "
                                         "does not match this app's herb vocabulary")
            return ids[0]

        return cls(one(ADD), one(REMOVE), one("【"), one("\n"), tuple(one(h) for h in vocab().herbs))

    def moves(self, generated: list[int]) -> list[tuple[int, int]]:
        """(marker, herb token) of each step so far, in order."""
        return [(prev, t) for prev, t in pairwise(generated) if prev in (self.add, self.remove)]

    def explanation(self, generated: list[int]) -> list[int]:
        """The tokens after the last step's herb (its explanation so far)."""
        starts = [i + 2 for i, t in enumerate(generated[:-1]) if t in (self.add, self.remove)]
        return generated[starts[-1]:] if starts else []

    def chosen(self, generated: list[int]) -> list[int]:
        """Herb tokens of the list so far (added and not removed), in the order added."""
        held: dict[int, None] = {}
        for marker, herb in self.moves(generated):
            if marker == self.add:
                held[herb] = None
            else:
                held.pop(herb, None)
        return list(held)

    def allowed(self, generated: list[int], max_herbs: int = MAX_DECODED_HERBS, draft_size: int = 0
                ) -> list[int] | None:
        """Token ids allowed after `generated` (the tokens since 【处方】 and its newline), or None where the format
        leaves the model free (explanations, 方解). Revising a draft (its `draft_size` herbs written as the first 加
        steps), a herb of the draft still in the list may be removed: not one the revision added (adding a herb only
        to take it out again says nothing), and a herb removed is never added again, so a revision cannot cycle."""
        if self.stop in generated:
            return None
        last = generated[-1] if generated else self.newline
        if last not in (self.add, self.remove, self.newline):
            return None  # inside an explanation: the list is only read at a marker or a step's end
        moves, chosen = self.moves(generated), self.chosen(generated)
        if last == self.add:
            taken = set(chosen) | {h for m, h in moves if m == self.remove}
            return [h for h in self.herbs if h not in taken]
        drafted = {h for _, h in moves[:draft_size]}
        removable = [h for h in chosen if h in drafted]
        if last == self.remove:
            return removable
        markers = [self.add] if len(chosen) < max_herbs else []
        if removable:
            markers.append(self.remove)
        return [*markers, self.stop] if chosen else markers


def stop_probability(add_logit: float, stop_logit: float) -> float:
    """The model's probability of stopping at a step boundary, where only 加 or 【 may follow."""
    return 0.5 * (1.0 + tanh((stop_logit - add_logit) / 2))  # the logistic function, without overflow


def open_chance(stop_probabilities: Sequence[float]) -> float:
    """The model's chance that the prescription is still open after these step boundaries: Π(1 − p_stop)."""
    return prod(1.0 - p for p in stop_probabilities)


def greedy_stop(stop_probabilities: Sequence[float], threshold: float = DEFAULT_STOP_THRESHOLD) -> bool:
    """Greedy decoding's stop decision, given the model's stop probability at every step boundary so far: stop once
    the chance that the prescription is still open falls to `threshold`; at ½ that is the median of the model's own
    length distribution. (Each boundary's argmax would almost never stop: one more herb is nearly always likelier
    than being done at that very step.) Each model carries thresholds tuned on validation (modelinfo.StopThresholds)."""
    return open_chance(stop_probabilities) <= threshold


@dataclass(frozen=True)
class ClaimRule:
    """What may come next in one step's explanation, given the explanation so far (see `claim_rule`)."""

    mark: int | None  # the opening colon
    separator: int | None  # 、 between two actions
    clause: int | None  # ， before a claim about a symptom
    actions: tuple[int, ...]  # after the colon: the best pair's action, else the role or lead action, else any
    any_action: tuple[int, ...]  # every citable action of the herb (after 、)
    tied: dict[int, dict[int, list[int]]]  # action → 主治/用于 → the symptoms of this patient tied to it
    claims: dict[int, tuple[int, ...]]  # 主治/用于 → the symptoms it may name after an action not tied
    end: int | None  # the line's end
    alone: bool  # the end is the only token after the action (none is tied to this patient)

    def allowed(self, explanation: Sequence[int]) -> list[int] | None:
        """Token ids allowed after `explanation` (the tokens after the step's herb), or None where it is free."""
        if not explanation:
            return [self.mark] if self.mark is not None else None
        last = explanation[-1]
        if last == self.mark and len(explanation) == 1:
            return list(self.actions) or None
        tied = self.tied.get(explanation[1]) if explanation[0] == self.mark and len(explanation) > 1 else None
        if tied and len(explanation) == 2:
            return [self.clause]
        if tied and len(explanation) == 3:
            return list(tied)
        if tied and len(explanation) == 4:
            return list(tied[last])
        if tied and len(explanation) == 5:
            return [self.end]  # one claim, as the teacher writes it
        if self.alone and len(explanation) == 2 and explanation[0] == self.mark:
            return [self.end]
        if last == self.separator:
            return list(self.any_action) or None
        targets = self.claims.get(last)
        return list(targets) if targets else None


def claim_rule(tokenize: Callable[[str], list[int]], herb: str, symptoms: Sequence[str], tie: bool = True
               ) -> ClaimRule:
    """What a step's explanation may say, so that it claims only what the sources give and ties the herb's action to
    this patient's symptom where the sources pair them: the step format's colon opens it (a model that skipped it
    would leave the rest unconstrained), then one of the herb's citable actions (rxapp.knowledge.herb_actions), only
    that of the herb's best-scoring pair with one of the patient's symptoms (rxapp.knowledge.associated; the pair
    the teacher cites) when there is one; after it, ，主治 or ，用于 and that symptom (主治 where the herb's sources
    name the symptom, as the teacher writes it), and the line ends; equal best pairs are all allowed. With no pair,
    the herb's role or lead action (rxapp.knowledge.lead_action) is the whole reason: no symptom is claimed.
    Without `tie` (a removal, whose reason is an action this patient does not need), nothing is tied: after 、 any
    citable action; after 主治 and 用于, a symptom of this patient (for 主治, one the herb's sources say it treats,
    when there is one: rxapp.knowledge.treats). A constraint whose words the tokenizer does not make one token each
    is left out."""
    def one(text: str) -> int | None:
        ids = tokenize(text)
        return ids[0] if len(ids) == 1 else None

    words = {w: one(w) for w in (INDICATION, USAGE, *symptoms)}
    actions = {a: t for a in herb_actions(herb) if (t := one(a)) is not None}
    claims, tied = {}, {}
    if all(t is not None for t in words.values()):
        indicated = [s for s in symptoms if treats(herb, s)] or list(symptoms)
        claims = {words[INDICATION]: tuple(words[s] for s in indicated),
                  words[USAGE]: tuple(words[s] for s in symptoms)}
        pairs = [(scores[s], action, s) for action, scores in (associated(herb) if tie else {}).items()
                 if action in actions for s in symptoms if s in scores]
        best = max((score for score, _, _ in pairs), default=None)
        for _, action, symptom in (p for p in pairs if p[0] == best):
            word = words[INDICATION if treats(herb, symptom) else USAGE]
            tied.setdefault(actions[action], {}).setdefault(word, []).append(words[symptom])
    marks = [one(m) for m in (EXPLANATION_MARK, ACTION_SEPARATOR, CLAUSE_SEPARATOR, "\n")]
    if None in marks:
        return ClaimRule(None, None, None, (), (), {}, claims, None, False)
    mark, separator, clause, end = marks
    lead = actions.get(lead_action(herb)) if tie and not tied else None
    return ClaimRule(mark, separator, clause, tuple(tied) or ((lead,) if lead else tuple(actions.values())),
                     tuple(actions.values()), tied, claims, end, lead is not None)
