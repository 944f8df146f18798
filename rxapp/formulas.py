"""Classical formulas (方剂) and the one a prescription resembles: the 120 compositions of
assets/knowledge/classical_formulas.csv, each read in a cited classical text, matched with the lenient equivalences of
formula_equivalents.csv (芍药 for 白芍, 甘草 for 炙甘草 …) and the vocabulary's one name per drug, and with the
common substitutions of formula_substitutes.csv (党参 for 人参: another drug, so the match says it); and a formula
looked up by name, to start a revision from."""

from __future__ import annotations

import csv
import difflib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rxapp import ASSETS
from rxapp.vocab import vocab

FORMULAS_FILE = ASSETS / "knowledge" / "classical_formulas.csv"
EQUIVALENTS_FILE = ASSETS / "knowledge" / "formula_equivalents.csv"
SUBSTITUTES_FILE = ASSETS / "knowledge" / "formula_substitutes.csv"
# Herbs that many formulas add to harmonise or as a vehicle: holding them says little about which formula a
# prescription follows (the reference notes that a near match of a 4-herb formula with 甘草 is weak evidence).
COMMON_HERBS = frozenset({"甘草", "炙甘草", "生姜", "大枣"})
MIN_DISTINCTIVE = 3  # formula herbs besides COMMON_HERBS a prescription must hold (two-herb formulas match trivially)
MIN_HERBS_FOR_A_GAP = 5  # a formula this large may lack one herb and still be resembled; a smaller one must be whole


@dataclass(frozen=True)
class Formula:
    name: str
    source_book: str
    herbs: tuple[str, ...]  # vocabulary names, in the source's order
    doses: tuple[str, ...]  # as written in the source (historical units, not converted), "" where it gives none
    not_in_vocab: tuple[str, ...]  # the source's herbs the vocabulary lacks (牡丹皮, 车前子 …)
    sources: tuple[str, ...]  # URLs of the texts the composition was read in
    pinyin: str = ""


class FormulaInputError(ValueError):
    """A formula name that is not in the table; the message suggests the closest names."""


@dataclass(frozen=True)
class Resemblance:
    formula: Formula
    present: tuple[str, ...]  # the formula's herbs the prescription holds (or holds an equivalent of)
    missing: tuple[str, ...]  # the formula's vocabulary herbs it lacks, neither held nor substituted
    added: tuple[str, ...] = ()  # the prescription's herbs that stand for none of the formula's
    substituted: tuple[tuple[str, str], ...] = ()  # (formula herb, the other drug the prescription holds for it)

    def modification(self) -> str:
        """The prescription as the formula modified (加减): `四君子汤加减：党参代人参 +黄芪 −白术`, or `麻黄汤原方`."""
        changes = [*(f"{sub}代{herb}" for herb, sub in self.substituted), *(f"+{h}" for h in self.added),
                   *(f"−{h}" for h in self.missing)]
        return f"{self.formula.name}加减：{' '.join(changes)}" if changes else f"{self.formula.name}原方"

    def to_dict(self) -> dict:
        f = self.formula
        return {"formula": f.name, "source_book": f.source_book, "formula_herbs": list(f.herbs),
                "present": list(self.present), "added": list(self.added), "removed": list(self.missing),
                "substituted": [{"formula_herb": herb, "herb": sub} for herb, sub in self.substituted],
                "not_in_vocab": list(f.not_in_vocab), "modification": self.modification(), "text": self.describe()}

    def describe(self) -> str:
        """One line for the practitioner: `类方：麻黄汤（《伤寒论》：麻黄、桂枝、炙甘草、杏仁），本方全含。`; a
        substitution is said, not counted as the formula's herb: `本方含其三味，以党参代人参。`"""
        f = self.formula
        whole = not self.missing and not self.substituted
        held = "本方全含" if whole else f"本方含其{count(len(self.present))}味"
        held += "".join(f"，以{sub}代{herb}" for herb, sub in self.substituted)
        held += f"，缺{'、'.join(self.missing)}" if self.missing else ""
        absent = f"；原方另有{'、'.join(f.not_in_vocab)}，词表未收" if f.not_in_vocab else ""
        return f"类方：{f.name}（《{f.source_book}》：{'、'.join(f.herbs)}），{held}{absent}。"


def count(n: int) -> str:
    """A count below 100 in Chinese numerals (6 → 六, 12 → 十二)."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    return ("" if n < 20 else digits[n // 10]) + "十" + (digits[n % 10] if n % 10 else "")


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part for part in cell.split(";") if part)


@lru_cache(maxsize=1)
def formulas() -> tuple[Formula, ...]:
    herbs = set(vocab().herbs)
    table = []
    with FORMULAS_FILE.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            unknown = [h for h in _split(row["herbs"]) if h not in herbs]
            if unknown:  # an unknown name would never match, and the formula would silently never be named
                raise ValueError(f"{FORMULAS_FILE}, line {reader.line_num}: {'、'.join(unknown)} not in the vocabulary")
            table.append(Formula(row["formula"], row["source_book"], _split(row["herbs"]),
                                 tuple(row["doses_as_written"].split(";")), _split(row["not_in_vocab"]),
                                 _split(row["source_url"]), row["pinyin"]))
    return tuple(table)


@lru_cache(maxsize=1)
def equivalents() -> dict[str, frozenset[str]]:
    """For a formula herb, the drugs (one name each) a prescription may hold for it."""
    v = vocab()
    with EQUIVALENTS_FILE.open(encoding="utf-8", newline="") as f:
        return {row["formula_herb"]: frozenset(v.identity(t) for t in _split(row["accepted_tokens"]))
                for row in csv.DictReader(f)}


@lru_cache(maxsize=1)
def substitutes() -> dict[str, str]:
    """For a formula herb, the other drug (its one name) that practice commonly writes in its place."""
    v = vocab()
    with SUBSTITUTES_FILE.open(encoding="utf-8", newline="") as f:
        return {row["formula_herb"]: v.identity(row["substitute"]) for row in csv.DictReader(f)}


def folded(name: str) -> str:
    """A formula name or its pinyin as compared: without tone marks, spaces or case (má huáng tāng -> mahuangtang)."""
    plain = "".join(c for c in unicodedata.normalize("NFD", name) if not unicodedata.combining(c))
    return "".join(plain.split()).lower()


def formula_named(name: str) -> Formula:
    """The formula called `name`, in characters or pinyin (tone marks optional); FormulaInputError with the closest
    names otherwise."""
    wanted = folded(name)
    if not wanted:
        raise FormulaInputError("no formula name given")
    for formula in formulas():
        if wanted in (folded(formula.name), folded(formula.pinyin)):
            return formula
    names = [f.name for f in formulas()]
    hints = [n for n in names if wanted in n] or difflib.get_close_matches(name.strip(), names, n=5, cutoff=0.4)
    raise FormulaInputError(f"{name.strip()[:40]} is not one of the {len(names)} classical formulas in "
                            f"{FORMULAS_FILE.name}" + (f" (是否指：{'、'.join(hints[:5])})" if hints else ""))


def resembled(herbs: list[str]) -> Resemblance | None:
    """The classical formula the prescription holds most herbs of (a common substitute, 党参 for 人参, standing in for
    one), whole, or short of one herb when the formula has MIN_HERBS_FOR_A_GAP or more; at least MIN_DISTINCTIVE of
    them besides COMMON_HERBS. Ties: fewer missing, then fewer substituted, then the table's order (the classical
    books first). None when no formula qualifies."""
    v = vocab()
    held = {v.identity(h) for h in herbs}
    best, best_key = None, None
    for formula in formulas():
        accepted = [equivalents().get(h, frozenset({v.identity(h)})) for h in formula.herbs]
        present = tuple(h for h, ok in zip(formula.herbs, accepted, strict=True) if ok & held)
        substituted = tuple((h, substitutes()[h]) for h in formula.herbs
                            if h not in present and substitutes().get(h) in held)
        missing = tuple(h for h in formula.herbs if h not in present and h not in dict(substituted))
        gap_allowed = 1 if len(formula.herbs) >= MIN_HERBS_FOR_A_GAP else 0
        stood_for = {*present, *dict(substituted)}
        if len(missing) > gap_allowed or len(stood_for - COMMON_HERBS) < MIN_DISTINCTIVE:
            continue
        key = (len(stood_for), -len(missing), -len(substituted))
        if best_key is None or key > best_key:
            covered = set().union(*accepted, (sub for _, sub in substituted))
            best, best_key = Resemblance(formula, present, missing, tuple(h for h in herbs if v.identity(h) not in
                                                                          covered), substituted), key
    return best
