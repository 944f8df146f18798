"""The list a revision starts from: a practitioner's own herbs or a classical formula picked by name, read into
vocabulary herbs, each drug once under its one name; a name that is no vocabulary herb is kept, to be shown as not
checked, never dropped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rxapp.formulas import Formula, formula_named
from rxapp.stepformat import DRAFT
from rxapp.vocab import HerbInputError, split_herb_list, vocab

MAX_DRAFT_HERBS = 30  # the stepper's own list limit (rxapp.stepper.StepperConfig.max_herbs)


class DraftInputError(HerbInputError):
    """A start list that cannot be revised as given; the message says why."""


@dataclass(frozen=True)
class Draft:
    herbs: tuple[str, ...]  # vocabulary herbs, in the order given, each drug once under its one name
    unknown: tuple[str, ...]  # names given that are no vocabulary herb: the model cannot hold them
    merged: tuple[tuple[str, str], ...] = ()  # (name given, the herb it was read as), where they differ
    formula: Formula | None = None  # when the draft is a classical formula

    @property
    def label(self) -> str:
        """How the draft is named to the practitioner: 麻黄汤 (《伤寒论》), or 初稿."""
        return f"{self.formula.name}（《{self.formula.source_book}》）" if self.formula else DRAFT

    def to_dict(self) -> dict:
        return {"herbs": list(self.herbs), "unknown": list(self.unknown),
                "merged": [{"given": given, "herb": herb} for given, herb in self.merged],
                "formula": self.formula.name if self.formula else None}


def read_draft(herbs: str | Iterable[str] = (), formula: str | None = None) -> Draft | None:
    """The draft from typed herb names or a formula's name (not both); None when neither is given."""
    herbs = herbs if isinstance(herbs, str) else " ".join(herbs)
    if herbs.strip() and formula and formula.strip():
        raise DraftInputError("start from a formula or from a herb list, not both")
    if formula and formula.strip():
        picked = formula_named(formula)
        names = list(picked.herbs)
    elif herbs.strip():
        picked, names = None, split_herb_list(herbs)
    else:
        return None
    v = vocab()
    kept: list[str] = []
    unknown, merged = [], []
    for name in names:
        resolved = v.resolve_herb(name)
        if resolved.herb is None:
            unknown.append(resolved.text)
            continue
        herb = v.identity(resolved.herb)
        if herb != resolved.text:
            merged.append((resolved.text, herb))
        if herb not in kept:
            kept.append(herb)
    if len(kept) > MAX_DRAFT_HERBS:
        raise DraftInputError(f"a start list of {len(kept)} herbs; a revision starts from at most {MAX_DRAFT_HERBS}")
    return Draft(tuple(kept), tuple(unknown), tuple(merged), picked)
