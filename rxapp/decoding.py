"""The step format at the level of tokens, for any model whose tokenizer makes each vocabulary herb one token: which
tokens may come next once the response has reached 【处方】. The stepper and the batched evaluator both use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import prod, tanh

from rxapp.knowledge import herb_actions, treats
from rxapp.modelinfo import DEFAULT_STOP_THRESHOLD, ModelMismatchError
from rxapp.stepformat import ACTION_SEPARATOR, ADD, EXPLANATION_MARK, INDICATION, REMOVE, USAGE
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

    def chosen(self, generated: list[int]) -> list[int]:
        """Herb tokens of the list so far (added and not removed), in the order added."""
        held: dict[int, None] = {}
        for marker, herb in self.moves(generated):
            if marker == self.add:
                held[herb] = None
            else:
                held.pop(herb, None)
        return list(held)

    def allowed(self, generated: list[int], max_herbs: int = MAX_DECODED_HERBS, revising: bool = False
                ) -> list[int] | None:
        """Token ids allowed after `generated` (the tokens since 【处方】 and its newline), or None where the format
        leaves the model free (explanations, 方解). When `revising` a draft (its herbs written as the first 加 steps),
        a herb of the list may be removed; a herb removed is never added again, so a revision cannot cycle."""
        if self.stop in generated:
            return None
        last = generated[-1] if generated else self.newline
        chosen = self.chosen(generated)
        if last == self.add:
            taken = set(chosen) | {h for m, h in self.moves(generated) if m == self.remove}
            return [h for h in self.herbs if h not in taken]
        if last == self.remove:
            return chosen
        if last == self.newline:
            markers = [self.add] if len(chosen) < max_herbs else []
            if revising and chosen:
                markers.append(self.remove)
            if not chosen:
                return markers
            return [*markers, self.stop]
        return None


def stop_probability(add_logit: float, stop_logit: float) -> float:
    """The model's probability of stopping at a step boundary, where only 加 or 【 may follow."""
    return 0.5 * (1.0 + tanh((stop_logit - add_logit) / 2))  # the logistic function, without overflow


def greedy_stop(stop_probabilities: Sequence[float], threshold: float = DEFAULT_STOP_THRESHOLD) -> bool:
    """Greedy decoding's stop decision, given the model's stop probability at every step boundary so far: stop once
    the chance that the prescription is still open, Π(1 − p), falls to `threshold`; at ½ that is the median of the
    model's own length distribution. (Each boundary's argmax would almost never stop: one more herb is nearly
    always likelier than being done at that very step.) Each model carries a threshold tuned on validation."""
    return prod(1.0 - p for p in stop_probabilities) <= threshold


def claim_targets(tokenize: Callable[[str], list[int]], herb: str, symptoms: Sequence[str]) -> dict[int, list[int]]:
    """What may follow where in a step's explanation, so that it claims only what the sources give: after its
    opening colon and after 、, one of the herb's citable actions
    (rxapp.knowledge.herb_actions); after 主治 and 用于, a symptom of this patient (for 主治, one the herb's sources
    say it treats, when there is one: rxapp.knowledge.treats). A constraint whose words the tokenizer does not make
    one token each is left out."""
    targets = {}
    words = {w: tokenize(w) for w in (INDICATION, USAGE, *symptoms)}
    if all(len(t) == 1 for t in words.values()):
        indicated = [s for s in symptoms if treats(herb, s)] or list(symptoms)
        targets = {words[INDICATION][0]: [words[s][0] for s in indicated],
                   words[USAGE][0]: [words[s][0] for s in symptoms]}
    actions = [t[0] for t in map(tokenize, herb_actions(herb)) if len(t) == 1]
    marks = [tokenize(mark) for mark in (EXPLANATION_MARK, ACTION_SEPARATOR)]
    if actions and all(len(m) == 1 for m in marks):
        targets |= {m[0]: actions for m in marks}
    return targets
