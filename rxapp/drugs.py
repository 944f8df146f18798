"""The patient's Western medications: the drug vocabulary of assets/safety/drugs.csv, reading a typed medication
list against it, and the herb–drug interaction rows of assets/safety/herb_drug_interactions.csv that apply.

A medication is recognised by its English generic name (INN, or a common US/UK spelling listed as an alias), its
Chinese generic name, a class name, or a WHO ATC code; salt and dosage-form words (sodium, 片, 钠 …) and doses are
read past, and nothing is ever matched by a substring of another name. What is not recognised comes back as
"not checked", with suggestions, and is never dropped. A row applies when the patient's drug is one it names, or
the drug's ATC code lies inside one of the row's ATC classes; when the patient names only a wider class than the
row's (diuretics for a row about loop diuretics), the row applies as a possibility and says so.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass, field
from functools import cache

from rxapp import ASSETS
from rxapp.vocab import LongestMatch, clean_text, vocab

DRUGS_FILE = ASSETS / "safety" / "drugs.csv"
INTERACTIONS_FILE = ASSETS / "safety" / "herb_drug_interactions.csv"
INTERACTION_SEVERITY = {"major": "severe", "moderate": "warning", "minor": "info"}  # as the safety rules grade
EVIDENCE = {"case_report": "病例报告", "clinical_study": "临床研究", "pk_study": "药代动力学研究",
            "lab_interference": "检验干扰", "animal": "动物实验", "extrapolated": "由相关产品外推",
            "theoretical": "理论推测"}
MAX_MEDICATION_CHARS = 2000
MAX_MEDICATIONS = 30
MAX_NAME_WORDS = 8  # the longest name with its salt and form words ("non nucleoside reverse transcriptase …")
ATC_CODE = re.compile(r"^[ABCDGHJLMNPRSV]\d{2}(?:[A-Z](?:[A-Z](?:\d{2})?)?)?$")
LIST_SEPARATORS = re.compile(r"[,，、;；。\n\r\t+]+|\band\b")
DOSE = re.compile(r"^(?=.)(?:\d+(?:\.\d+)?)?(?:mg|g|mcg|μg|µg|ug|ml|iu|u|毫克|克|微克|片|粒)?(?:/d|/日)?$"
                  r"|^(?:qd|bid|tid|qid|prn|daily|每日|每天)$")
SALT_OR_FORM = frozenset({
    "sodium", "potassium", "calcium", "magnesium", "hydrochloride", "hcl", "succinate", "tartrate", "maleate",
    "besylate", "besilate", "mesylate", "citrate", "sulfate", "sulphate", "acetate", "phosphate", "tablet",
    "tablets", "capsule", "capsules", "injection", "er", "sr", "xr", "cr", "extended-release", "oral",
    "盐酸", "硫酸", "磷酸", "酒石酸", "琥珀酸", "马来酸", "苯磺酸", "甲磺酸", "枸橼酸", "醋酸", "钠", "钾", "钙",
    "片", "缓释片", "控释片", "肠溶片", "胶囊", "缓释胶囊", "注射液", "注射剂", "口服液", "颗粒"})


class MedicationInputError(ValueError):
    """A medication list that cannot be read at all (too long, too many drugs)."""


@dataclass(frozen=True)
class Drug:
    """A drug or drug class of the vocabulary, or an ATC code the user typed (then `name` is the code)."""

    name: str
    name_zh: str
    atc: tuple[str, ...]  # its WHO ATC code (a class: the codes of its groups)
    is_class: bool = False

    @property
    def label(self) -> str:
        return f"{self.name_zh}（{self.name}）" if self.name_zh else self.name


@dataclass
class MedicationParse:
    drugs: list[Drug] = field(default_factory=list)  # each drug once, in the order given
    unrecognised: list[str] = field(default_factory=list)  # what was typed and not checked, in the order given
    suggestions: dict[str, list[str]] = field(default_factory=dict)  # an unrecognised item -> names it may mean


def _key(text: str) -> str:
    """The form names are compared in: NFKC, case-folded, hyphens and runs of spaces as one space."""
    return re.sub(r"[\s\-_‐‑–]+", " ", clean_text(text).casefold()).strip()


class DrugVocab:
    """The drugs and classes of drugs.csv under every name they may be typed as."""

    def __init__(self, rows: list[dict]) -> None:
        self.drugs: list[Drug] = []
        self.by_name: dict[str, Drug] = {}
        for row in rows:
            drug = Drug(row["name"], row["name_zh"], tuple(_list(row["atc"])), row["kind"] == "class")
            self.drugs.append(drug)
            for name in [row["name"], row["name_zh"], drug.label, *_list(row["aliases"]), *_list(row["aliases_zh"])]:
                key = _key(name)
                if key in self.by_name and self.by_name[key] != drug:
                    raise ValueError(f"{DRUGS_FILE.name}: {name!r} names both {self.by_name[key].name} and "
                                     f"{drug.name}")
                self.by_name[key] = drug
        self._plural = {k + "s": d for k, d in self.by_name.items() if k.isascii() and k + "s" not in self.by_name}
        self._chinese = LongestMatch(k for k in self.by_name if not k.isascii())

    def lookup(self, text: str) -> Drug | None:
        """The drug `text` names: exactly (any case, plural, a salt or dosage form around it), or as an ATC code."""
        key = _key(text)
        if not key:
            return None
        found = self.by_name.get(key) or self._plural.get(key)
        if found:
            return found
        code = key.upper().replace(" ", "")
        if ATC_CODE.match(code):
            known = next((d for d in self.drugs if code in d.atc and not d.is_class), None)
            return known or Drug(code, "", (code,), len(code) < 7)
        return self._without_salt_or_form(key)

    def _without_salt_or_form(self, key: str) -> Drug | None:
        """酒石酸美托洛尔缓释片, metoprolol succinate er: the name inside its salt and dosage-form words, which are
        removed from either end one at a time, the name looked up after each."""
        shorter = {key}
        while shorter:
            found = next((self.by_name[k] for k in shorter if k in self.by_name), None)
            if found:
                return found
            shorter = {rest.strip() for k in shorter for word in SALT_OR_FORM
                       for rest in (k.removesuffix(word), k.removeprefix(word)) if rest != k and rest.strip()}
        return None

    def parse(self, given: str | list[str]) -> MedicationParse:
        """A medication list as typed (free text, or items picked from a list): the drugs recognised, each once,
        and everything else as not checked, with suggestions."""
        text = given if isinstance(given, str) else "\n".join(given)
        if len(text) > MAX_MEDICATION_CHARS:
            raise MedicationInputError(f"the medication list is {len(text)} characters long; the limit is "
                                       f"{MAX_MEDICATION_CHARS}")
        out = MedicationParse()
        for item in LIST_SEPARATORS.split(clean_text(text)):
            item = "".join(c if c.isprintable() else " " for c in item).strip()  # control characters
            if item:
                self._read_item(item, out)
        if len(out.drugs) > MAX_MEDICATIONS:
            raise MedicationInputError(f"{len(out.drugs)} medications given; the limit is {MAX_MEDICATIONS}")
        return out

    def _read_item(self, item: str, out: MedicationParse) -> None:
        """One list item: a name, or several names and doses separated by spaces (longest names first)."""
        words = [w for w in item.split() if not DOSE.match(w.casefold())]
        start, pending = 0, []
        while start < len(words):
            longest = min(len(words), start + MAX_NAME_WORDS)
            end = next((e for e in range(longest, start, -1) if self.lookup(" ".join(words[start:e]))), None)
            found = [self.lookup(" ".join(words[start:end]))] if end else self._run_together(words[start])
            if not found:
                pending.append(words[start])
                start += 1
                continue
            self._unknown(" ".join(pending), out)
            pending = []
            out.drugs.extend(d for d in found if d not in out.drugs)
            start = end or start + 1
        self._unknown(" ".join(pending), out)

    def _run_together(self, word: str) -> list[Drug]:
        """Chinese names written without a separator (华法林地高辛): read only when the names cover the whole word,
        so that no name is ever found inside a longer, unknown one (茶碱 in 氨茶碱)."""
        pieces = list(self._chinese.pieces(_key(word)))
        if len(pieces) < 2 or None in pieces:
            return []
        return [self.by_name[p] for p in pieces]

    def _unknown(self, text: str, out: MedicationParse) -> None:
        text = text.strip()
        if not text or text in out.unrecognised:
            return
        out.unrecognised.append(text[:60])
        close = difflib.get_close_matches(_key(text), list(self.by_name), n=3, cutoff=0.75)
        if close:
            out.suggestions[text[:60]] = list(dict.fromkeys(self.by_name[c].label for c in close))


@dataclass(frozen=True)
class Interaction:
    """One row of the herb–drug table: a herb (and its aliases) with a drug class, through one mechanism."""

    herbs: frozenset[str]  # the herb and its curated aliases, exact names
    herb: str
    drug_class: str
    drugs: frozenset[str]  # the generic names it lists (open-ended markers such as "(other …)" left out)
    atc: tuple[str, ...]
    concern: str  # what goes wrong, in a few words; one warning per (patient drug, concern)
    effect: str
    mechanism: str
    severity: str  # major, moderate, minor
    evidence: tuple[str, ...]
    management: str
    verified: bool
    sources: tuple[tuple[str, str | None], ...]  # (title, URL or DOI)

    def applies(self, drug: Drug) -> str | None:
        """'named' or 'class' when the row concerns `drug`; 'possible' when the patient gave only a wider class
        than the row's, so the row concerns some drugs of it; None otherwise."""
        if drug.name in self.drugs:
            return "named"
        if any(code.startswith(prefix) for code in drug.atc for prefix in self.atc):
            return "class"
        if drug.is_class and any(prefix.startswith(code) for code in drug.atc for prefix in self.atc):
            return "possible"
        return None

    @property
    def evidence_note(self) -> str:
        """How strong the evidence is, in words; theoretical and extrapolated rows say so."""
        words = "、".join(EVIDENCE[e] for e in self.evidence)
        if self.evidence == ("theoretical",):
            return f"{words}：无人体相互作用数据"
        if "extrapolated" in self.evidence:
            return f"{words}：人体数据来自相关产品或成分"
        return words


def _list(cell: str) -> list[str]:
    return [x.strip() for x in cell.split(";") if x.strip()]


def _sources(cell: str) -> tuple[tuple[str, str | None], ...]:
    """`Title <url> | Title <doi:…>` -> ((title, url), …)."""
    out = []
    for part in cell.split(" | "):
        match = re.match(r"^(?P<title>.*?)\s*(?:<(?P<url>[^<>]+)>)?\s*$", part.strip(), re.S)
        out.append((match["title"], match["url"]))
    return tuple(out)


@cache
def drug_vocab() -> DrugVocab:
    """The process-wide drug vocabulary (loaded once)."""
    with DRUGS_FILE.open(encoding="utf-8", newline="") as f:
        return DrugVocab(list(csv.DictReader(f)))


@cache
def interactions() -> tuple[Interaction, ...]:
    """The herb–drug table (loaded once)."""
    with INTERACTIONS_FILE.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(Interaction(
        frozenset([r["herb"], *_list(r["herb_aliases"])]), r["herb"], r["drug_class"],
        frozenset(d for d in _list(r["drugs"]) if not d.startswith("(")), tuple(_list(r["atc_prefix"])),
        r["concern"], r["effect"], r["mechanism"], r["severity"], tuple(r["evidence"].split("+")), r["management"],
        r["verified"] == "true", _sources(r["source"])) for r in rows)


@cache
def interaction_herbs() -> frozenset[str]:
    """Every herb name the table is written for (its herbs and their aliases)."""
    return frozenset().union(*(row.herbs for row in interactions()))


def herb_names(herb: str) -> set[str]:
    """The names under which the table may list `herb`: as typed, its vocabulary herb (a processed form resolved),
    and that herb's one name. Never a family or a substring: 白附子 is not 附子 and 川牛膝 is not 牛膝."""
    resolved = vocab().resolve_herb(herb)
    names = {resolved.text}
    if resolved.herb:
        names |= {resolved.herb, vocab().identity(resolved.herb)}
    return names


def rows_for(herb: str, drugs: tuple[Drug, ...]) -> list[tuple[Interaction, Drug, str]]:
    """The rows that `herb` brings with the patient's `drugs`: (row, drug, how it applies)."""
    names = herb_names(herb)
    found = []
    for row in interactions():
        if row.herbs & names:
            for drug in drugs:
                how = row.applies(drug)
                if how:
                    found.append((row, drug, how))
    return found
