"""The herb lists' substring artefacts, found by a rule over the training prescriptions and checked against the
reviewed map in assets/vocab/artefacts.yaml.

The SMGCN herb lists were extracted by substring matching, so a prescription that holds 白附子 also holds 附子,
one with 杏仁 also 杏. The rule: a vocabulary token is an artefact of a longer vocabulary name that contains it when
at least `COVERAGE` of the training prescriptions holding the longer name also hold the token, and that share is
unlikely by chance (binomial tail below `CHANCE` at the token's base rate, so that 甘草, in 39 % of all lists, is not
called an artefact of a name seen twice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb

from pipeline.data.records import Record
from rxapp.vocab import vocab

COVERAGE = 0.95
CHANCE = 1e-3

Found = dict[str, dict[str, tuple[int, int]]]  # token -> {longer name: (lists with it, of them also with the token)}


def chance_of(covered: int, lists: int, rate: float) -> float:
    """P(at least `covered` of `lists` prescriptions hold a token present in a share `rate` of all of them)."""
    return sum(comb(lists, i) * rate**i * (1 - rate) ** (lists - i) for i in range(covered, lists + 1))


def find_artefacts(records: Sequence[Record]) -> Found:
    """Every (token, longer name) pair the rule finds in `records`, with its counts."""
    lists = [set(r.herbs) for r in records]
    count = Counter(h for herbs in lists for h in herbs)
    present = [h for h in vocab().herbs if count[h]]
    found: Found = {}
    for longer in present:
        for token in present:
            if token == longer or token not in longer:
                continue
            covered = sum(1 for herbs in lists if longer in herbs and token in herbs)
            if covered >= COVERAGE * count[longer] and chance_of(covered, count[longer],
                                                                 count[token] / len(lists)) < CHANCE:
                found.setdefault(token, {})[longer] = (count[longer], covered)
    return found


def differences(records: Sequence[Record], found: Found | None = None) -> list[str]:
    """Where assets/vocab/artefacts.yaml and the data disagree: a pair the rule finds that the map lacks (or the
    reverse, for pairs the map says the rule found), or a count that differs; empty when they agree. `found`: the
    rule's result on `records`, when the caller has it already."""
    lists = [set(r.herbs) for r in records]
    found, reviewed = found if found is not None else find_artefacts(records), vocab().artefacts
    out = []
    for token in sorted(found.keys() | {t for t, a in reviewed.items() if a.found_by == "rule"}):
        if token not in reviewed or reviewed[token].found_by != "rule" or found.get(token, {}).keys() != \
                reviewed[token].of.keys():
            mine = reviewed[token].of if token in reviewed else {}
            out.append(f"{token}: the rule finds {sorted(found.get(token, {}))}, the map has {sorted(mine)}")
    for token, artefact in reviewed.items():
        for longer, counts in artefact.of.items():
            actual = [sum(1 for h in lists if longer in h), sum(1 for h in lists if longer in h and token in h)]
            if counts != actual:
                out.append(f"{token} beside {longer}: the map counts {counts}, the data {actual}")
        alone = sum(1 for h in lists if token in h and not h & artefact.of.keys())
        if alone != artefact.alone:
            out.append(f"{token} alone: the map counts {artefact.alone}, the data {alone}")
    return out
