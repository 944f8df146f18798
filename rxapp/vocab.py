"""The one herb and symptom vocabulary: names and ids, aliases, families, synonyms and substring artefacts, and the
free-text symptom parser."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from rxapp import ASSETS

SMGCN = ASSETS / "data" / "smgcn"
VOCAB_DIR = ASSETS / "vocab"
MAX_SYMPTOM_CHARS = 2000
# Longest first, so that 蜜炙 is stripped before 蜜.
PROCESSING_PREFIXES = ("蜜炙", "麸炒", "土炒", "酒炒", "醋炙", "盐炙", "炒", "炙", "制", "生", "熟", "焦", "煅",
                       "酒", "醋", "盐", "姜", "蜜", "净")
PROCESSING_SUFFIXES = ("炭", "粉", "片")
SEPARATORS = re.compile(r"[\s,，、;；。.!！?？:：/|+]+")
MARKUP = re.compile(r"<[^<>]{0,100}>")


MAX_INPUT_HERBS = 60  # a herb list typed or pasted by the user; longer ones are refused as not a prescription
MAX_HERB_NAME = 20


class SymptomInputError(ValueError):
    """Symptom input that cannot be parsed at all (empty, too long)."""


class HerbInputError(ValueError):
    """A herb list that cannot be read (empty, too long, not names)."""


def clean_text(text: str) -> str:
    """NFKC-normalise (full-width letters and punctuation become plain) and strip."""
    return unicodedata.normalize("NFKC", text).strip()


def read_mapping(path: Path) -> list[str]:
    """Names of an SMGCN `name id` mapping file, indexed by id."""
    pairs = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = [""] * len(pairs)
    for name, index in pairs:
        names[int(index)] = name
    if "" in names:
        raise ValueError(f"{path}: ids are not 0..{len(pairs) - 1}")
    return names


def split_herb_list(text: str | Iterable[str]) -> list[str]:
    """Herb names from text (or several texts) separated by spaces, commas or 、; duplicates dropped."""
    text = text if isinstance(text, str) else " ".join(text)
    if len(text) > MAX_SYMPTOM_CHARS:
        raise HerbInputError(f"the herb list is {len(text)} characters long; the limit is {MAX_SYMPTOM_CHARS}")
    herbs = _unique(h for h in SEPARATORS.split(clean_text(text)) if h)
    if not herbs:
        raise HerbInputError("no herbs given: enter names such as 附子 半夏")
    if len(herbs) > MAX_INPUT_HERBS:
        raise HerbInputError(f"{len(herbs)} herbs given; a prescription here holds at most {MAX_INPUT_HERBS}")
    too_long = next((h for h in herbs if len(h) > MAX_HERB_NAME), None)
    if too_long:
        raise HerbInputError(f"not a herb name (over {MAX_HERB_NAME} characters): {too_long[:40]}…")
    return herbs


@dataclass(frozen=True)
class HerbName:
    """How one herb name given by a person or a model resolved."""

    text: str  # as given, cleaned
    herb: str | None  # the vocabulary herb it means, None when unknown
    via: str  # "exact", "alias", "processed" (a processing prefix/suffix was stripped) or "unknown"
    family: str  # shared by processed forms and sibling species (炙甘草 -> 甘草, 浙贝母 -> 贝母)


@dataclass
class SymptomParse:
    """Recognised vocabulary symptoms, and every fragment that was not recognised (never dropped)."""

    symptoms: list[str]
    unrecognised: list[str]
    suggestions: dict[str, list[str]] = field(default_factory=dict)  # fragment -> vocabulary symptoms


@dataclass(frozen=True)
class Artefact:
    """A token the data's substring extraction left beside longer names containing it (assets/vocab/artefacts.yaml)."""

    token: str
    of: dict[str, list[int]]  # longer name -> [training lists holding it, of them also holding the token]
    alone: int  # training lists holding the token and none of the longer names
    certainty: str  # what the token means alone: "itself" (a drug), "clear" / "inferred" (`means`), "unclear"
    means: str | None = None
    found_by: str = "rule"  # "rule" (pipeline/data/artefacts.py) or "review"
    note: str = ""


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class LongestMatch:
    """Reads a text left to right as known terms, the longest term at each place (白附子, not 附子)."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.by_first_char: dict[str, list[str]] = {}
        for term in sorted(set(terms), key=len, reverse=True):
            self.by_first_char.setdefault(term[0], []).append(term)

    def pieces(self, text: str) -> Iterator[str | None]:
        """For each place read: the term found there, or None for one character no term starts."""
        i = 0
        while i < len(text):
            term = next((t for t in self.by_first_char.get(text[i], ()) if text.startswith(t, i)), None)
            yield term
            i += len(term) if term else 1


class Vocab:
    """Herbs and symptoms of the SMGCN data, with the alias and family tables of assets/vocab/."""

    def __init__(self) -> None:
        self.herbs = read_mapping(SMGCN / "herb_mapping.txt")
        self.symptoms = read_mapping(SMGCN / "sym_mapping.txt")
        self.herb_id = {name: i for i, name in enumerate(self.herbs)}
        self.symptom_id = {name: i for i, name in enumerate(self.symptoms)}

        herb_tables = yaml.safe_load((VOCAB_DIR / "herbs.yaml").read_text(encoding="utf-8"))
        self.aliases: dict[str, str] = herb_tables["aliases"]
        self.family_of = {m: key for key, members in herb_tables["families"].items() for m in members}
        bad = {a: h for a, h in self.aliases.items() if h not in self.herb_id or a in self.herb_id}
        if bad:
            raise ValueError(f"herbs.yaml: aliases must map a non-vocabulary name to a vocabulary herb: {bad}")
        self._read_artefacts(yaml.safe_load((VOCAB_DIR / "artefacts.yaml").read_text(encoding="utf-8")))

        symptom_tables = yaml.safe_load((VOCAB_DIR / "symptoms.yaml").read_text(encoding="utf-8"))
        self.synonyms = {k: [v] if isinstance(v, str) else list(v) for k, v in symptom_tables["synonyms"].items()}
        bad = {k: v for k, v in self.synonyms.items() if not set(v) <= self.symptom_id.keys()}
        if bad:
            raise ValueError(f"symptoms.yaml: synonyms must map to vocabulary symptoms: {bad}")
        self.fillers = sorted(symptom_tables["fillers"], key=len, reverse=True)

        meanings = {s: [s] for s in self.symptoms} | self.synonyms
        self._meaning = meanings
        self._terms = LongestMatch(meanings)

    def _read_artefacts(self, tables: dict) -> None:
        self.synonyms_of: dict[str, str] = tables["synonyms"]
        self.artefacts = {token: Artefact(token, **fields) for token, fields in tables["artefacts"].items()}
        names = {*self.synonyms_of, *self.synonyms_of.values(), *self.artefacts,
                 *(n for a in self.artefacts.values() for n in [*a.of, *([a.means] if a.means else [])])}
        if not names <= self.herb_id.keys():
            raise ValueError(f"artefacts.yaml: not vocabulary herbs: {sorted(names - self.herb_id.keys())}")
        # One drug, one name: a clear artefact and a synonym take the canonical name (and its family, for safety).
        self.canonical = dict(self.synonyms_of) | {
            t: self.synonyms_of.get(a.means, a.means) for t, a in self.artefacts.items() if a.certainty == "clear"}
        for name, canonical in self.canonical.items():
            self.family_of.setdefault(name, self.family_of.get(canonical, canonical))
            self.family_of.setdefault(canonical, self.family_of[name])
        self.longer_names = {t: frozenset(a.of) for t, a in self.artefacts.items()}
        self.names_of: dict[str, set[str]] = {}  # a drug's one name -> all its vocabulary names, itself included
        for name, canonical in self.canonical.items():
            self.names_of.setdefault(canonical, {canonical}).add(name)

    # -- herbs ---------------------------------------------------------------------------------------------
    @lru_cache(maxsize=4096)  # noqa: B019 (one vocabulary per process; the stepper asks the same names every step)
    def resolve_herb(self, text: str) -> HerbName:
        """Map a herb name to a vocabulary herb: exact, alias, or a processed form of one."""
        name = clean_text(text)
        herb, via = self._lookup(name)
        if herb is None:
            stripped = [name[len(p):] for p in PROCESSING_PREFIXES if name.startswith(p) and len(name) > len(p)]
            stripped += [name[: -len(s)] for s in PROCESSING_SUFFIXES if name.endswith(s) and len(name) > len(s)]
            for base in stripped:
                herb, _ = self._lookup(base)
                if herb is not None:
                    via = "processed"
                    break
        family = self.family_of.get(name) or (herb and self.family_of.get(herb)) or herb or name
        return HerbName(text=name, herb=herb, via=via, family=family)

    def _lookup(self, name: str) -> tuple[str | None, str]:
        if name in self.herb_id:
            return name, "exact"
        if name in self.aliases:
            return self.aliases[name], "alias"
        return None, "unknown"

    def family(self, name: str) -> str:
        """The key under which processed forms and sibling species of a herb are compared."""
        return self.resolve_herb(name).family

    def identity(self, herb: str) -> str:
        """The one name of a vocabulary herb's drug: synonyms and clear artefact tokens take their canonical name."""
        return self.canonical.get(herb, herb)

    def display_name(self, herb: str) -> str:
        """How a vocabulary herb is shown to a practitioner: its drug's one name, an inferred identity marked as
        such, a name whose drug is unclear said to be so."""
        artefact = self.artefacts.get(herb)
        if artefact and artefact.certainty == "inferred":
            return f"{artefact.means}（原作“{herb}”，推定）"
        if artefact and artefact.certainty == "unclear":
            return f"{herb}（所指药物未定）"
        return self.identity(herb)

    def clean_herbs(self, herbs: Iterable[str]) -> list[str]:
        """A prescription's herb list without its artefacts: a token beside one of its longer names is dropped,
        then every herb takes its drug's one name, each once (order kept)."""
        herbs = list(herbs)
        present = set(herbs)
        kept = [h for h in herbs if not (self.longer_names.get(h, frozenset()) & present)]
        return _unique(self.identity(h) for h in kept)

    def second_names(self, herbs: Iterable[str]) -> set[str]:
        """Vocabulary herbs that would name a drug of `herbs` a second time: its other names, an artefact token
        of one of them, or a longer name one of them is an artefact of."""
        herbs = set(herbs)
        out = {n for h in herbs for n in self.names_of.get(self.identity(h), {h})}
        out |= {t for t, longer in self.longer_names.items() if longer & herbs}
        out |= {n for h in herbs for n in self.longer_names.get(h, ())}
        return out - herbs

    # -- symptoms ------------------------------------------------------------------------------------------
    def parse_symptoms(self, given: str | Iterable[str]) -> SymptomParse:
        """Recognise vocabulary symptoms in free Chinese text or a list of terms.

        Longest match wins (恶寒发热 before 恶寒). Everything between matches that is not a connective word is
        returned in `unrecognised`, with vocabulary symptoms that share two characters with it as suggestions.
        """
        pieces = [given] if isinstance(given, str) else [str(p) for p in given]
        total = sum(len(p) for p in pieces)
        if total > MAX_SYMPTOM_CHARS:
            raise SymptomInputError(f"symptom text is {total} characters long; the limit is {MAX_SYMPTOM_CHARS}")
        found: list[str] = []
        unrecognised: list[str] = []
        for piece in pieces:
            piece = clean_text(piece)
            unrecognised.extend(MARKUP.findall(piece))  # a tag is reported whole, not as scattered characters
            for segment in SEPARATORS.split(MARKUP.sub(" ", piece)):
                if segment:
                    self._scan(segment, found, unrecognised)
        if not found and not unrecognised:
            raise SymptomInputError("no symptoms given: enter symptoms such as 咳嗽 恶寒, separated by spaces or 、")
        unrecognised = _unique(unrecognised)
        suggestions = {frag: s for frag in unrecognised if (s := self.suggest_symptoms(frag))}
        return SymptomParse(_unique(found), unrecognised, suggestions)

    def _scan(self, segment: str, found: list[str], unrecognised: list[str]) -> None:
        pending, i = "", 0
        for term in self._terms.pieces(segment):
            if term is None:
                pending += segment[i]
                i += 1
                continue
            self._flush(pending, unrecognised)
            pending = ""
            found.extend(self._meaning[term])
            i += len(term)
        self._flush(pending, unrecognised)

    def _flush(self, pending: str, unrecognised: list[str]) -> None:
        changed = True
        while pending and changed:
            changed = False
            for word in self.fillers:
                if pending.startswith(word) or pending.endswith(word):
                    pending = pending[len(word):] if pending.startswith(word) else pending[: -len(word)]
                    changed = True
                    break
        if pending:
            unrecognised.append(pending)

    def suggest_symptoms(self, fragment: str, limit: int = 5) -> list[str]:
        """Vocabulary symptoms sharing a two-character run with `fragment`, most overlapping first."""
        grams = {fragment[i : i + 2] for i in range(len(fragment) - 1)}
        scored = [(sum(g in s for g in grams), s) for s in self.symptoms]
        return [s for score, s in sorted(scored, key=lambda x: -x[0]) if score > 0][:limit]


@lru_cache(maxsize=1)
def vocab() -> Vocab:
    """The process-wide vocabulary (loaded once)."""
    return Vocab()
