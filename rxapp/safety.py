"""Safety engine: 十八反/十九畏, pregnancy, toxicity, withdrawn herbs and dose limits, as sourced data rules.

Two checks share one code path: `check_addition` (one proposed herb against the current list and the patient) and
`check_prescription` (a whole list, which is every herb added in turn). Both return structured warnings and never
drop a herb: the caller decides what to do with a warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from itertools import chain

import yaml

from rxapp import ASSETS
from rxapp.vocab import MAX_HERB_NAME, MAX_INPUT_HERBS, HerbInputError, clean_text, vocab

RULES_FILE = ASSETS / "safety" / "rules.yaml"
SEVERITIES = ("severe", "warning", "info")  # most severe first
SEVERITY_COST = {"severe": 2.0, "warning": 1.0, "info": 0.0}  # what one broken rule costs (`safety_cost`)
INCOMPATIBILITY_RULES = ("十八反", "十九畏")
HERB_RULE_KINDS = ("pregnancy", "toxicity", "regulated", "withdrawn")
MAX_DOSE_G = 250.0  # no single herb is dosed above this per day; larger numbers are typing errors


class DoseError(ValueError):
    """A dose that is not a positive, plausible number of grams."""


@dataclass(frozen=True)
class Source:
    key: str
    title: str
    url: str | None


@dataclass(frozen=True)
class SafetyWarning:
    severity: str  # "severe", "warning" or "info"
    rule: str  # 十八反, 十九畏, 妊娠禁用, 妊娠慎用, 大毒/有毒/小毒, 毒性药品管理, 马兜铃酸, 超量, 未识别
    herbs: tuple[str, ...]
    message: str
    sources: tuple[Source, ...]
    verified: bool  # False where the rule's source is itself marked unverified

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Patient:
    pregnant: bool = False


@dataclass(frozen=True)
class _HerbRule:
    """A rule about single herbs (pregnancy, toxicity, withdrawn)."""

    kind: str  # "pregnancy", "toxicity", "regulated" or "withdrawn"
    rule: str
    severity: str
    herbs: frozenset[str]
    families: frozenset[str]
    note: str
    sources: tuple[Source, ...]
    verified: bool


def parse_dose(text: str | float) -> float:
    """A dose in grams from user input; DoseError with a readable reason otherwise."""
    try:
        grams = float(str(text).strip().lower().removesuffix("g").strip())
    except ValueError:
        raise DoseError(f"dose {text!r} is not a number of grams") from None
    if not math.isfinite(grams) or grams <= 0:
        raise DoseError(f"dose {text!r} must be a positive number of grams")
    if grams > MAX_DOSE_G:
        raise DoseError(f"dose {grams:g} g is implausible (over {MAX_DOSE_G:g} g a day for one herb); check the units")
    return grams


def parse_doses(items: Iterable[str], herbs: list[str]) -> dict[str, float]:
    """`附子=30` items -> {herb: grams}; each must name a herb of `herbs` and give a plausible dose."""
    doses = {}
    for item in items:
        name, sep, amount = clean_text(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise DoseError(f"dose {item!r} is not of the form HERB=GRAMS, e.g. 附子=9")
        if name not in herbs:
            raise DoseError(f"a dose is given for {name}, which is not in the prescription")
        try:
            doses[name] = parse_dose(amount)
        except DoseError as e:
            raise DoseError(f"{name}: {e}") from None
    return doses


PRESCRIPTION_ITEMS = re.compile(r"[,，、;；\n]+")
PRESCRIPTION_ITEM = re.compile(r"^(?P<herbs>[^\d=:：.+-]+?)\s*(?:[=:：]\s*)?(?P<dose>[-+.\d]\S*)?$")


def parse_prescription(text: str) -> list[tuple[str, float | None]]:
    """`麻黄 9g、桂枝=6、甘草 大枣` -> [(herb, grams or None)], in order, each herb once. Names resolve to vocabulary
    herbs where they are exact or aliases; other names stay as typed (the safety check flags unknown ones).
    HerbInputError or DoseError says what is wrong."""
    items = [i.strip() for i in PRESCRIPTION_ITEMS.split(clean_text(text).replace("克", "g")) if i.strip()]
    found: dict[str, float | None] = {}
    for item in items:
        match = PRESCRIPTION_ITEM.match(item)
        if not match:
            raise HerbInputError(f"cannot read {item!r}: write a herb name and an optional dose, e.g. 麻黄 9g")
        names = match["herbs"].split()
        if match["dose"] and len(names) > 1:
            raise HerbInputError(f"{item!r}: a dose belongs to one herb; separate herbs with 、 or commas")
        for name in names:
            if len(name) > MAX_HERB_NAME:
                raise HerbInputError(f"not a herb name (over {MAX_HERB_NAME} characters): {name[:40]}…")
            resolved = vocab().resolve_herb(name)
            herb = resolved.herb if resolved.via in ("exact", "alias") else name
            try:
                found[herb] = parse_dose(match["dose"]) if match["dose"] else None
            except DoseError as e:
                raise DoseError(f"{name}: {e}") from None
    if len(found) > MAX_INPUT_HERBS:
        raise HerbInputError(f"{len(found)} herbs given; a prescription here holds at most {MAX_INPUT_HERBS}")
    return list(found.items())


class SafetyRules:
    """The rules of assets/safety/rules.yaml, matched through the vocabulary's families."""

    def __init__(self, data: dict) -> None:
        self.sources = {k: Source(k, v["title"], v["url"]) for k, v in data["sources"].items()}
        self.pairs = [
            (frozenset(map(self._family, p["a"])), frozenset(map(self._family, p["b"])), p) for p in data["pairs"]
        ]
        self.herb_rules = [
            _HerbRule(kind, r["rule"], r["severity"], frozenset(r["herbs"]), frozenset(map(self._family, r["herbs"])),
                      r["note"], self._sources(r), r["verified"])
            for kind in HERB_RULE_KINDS for r in data[kind]
        ]
        self.dose_limits = data["dose_limits"]
        self.known_names = set(chain.from_iterable(r.herbs | r.families for r in self.herb_rules))
        self.known_names |= set(chain.from_iterable(a | b for a, b, _ in self.pairs))
        self.known_names |= {d["herb"] for d in self.dose_limits}
        unknown = ({p["severity"] for *_, p in self.pairs} | {r.severity for r in self.herb_rules}) - set(SEVERITIES)
        if unknown:
            raise ValueError(f"{RULES_FILE}: unknown severities {sorted(unknown)}")

    @staticmethod
    def _family(name: str) -> str:
        return vocab().family(name)

    def _sources(self, rule: dict) -> tuple[Source, ...]:
        return tuple(self.sources[k] for k in rule["sources"])

    def is_known(self, name: str) -> bool:
        resolved = vocab().resolve_herb(name)
        return resolved.herb is not None or resolved.text in self.known_names or resolved.family in self.known_names

    # -- checks ------------------------------------------------------------------------------------------
    def check_addition(self, current: list[str], candidate: str, patient: Patient = Patient(),
                       dose_g: float | None = None) -> list[SafetyWarning]:
        """Warnings that adding `candidate` (at `dose_g`, if given) to `current` would bring."""
        warnings = self._herb_warnings(candidate, patient) + self.pair_warnings(current, candidate)
        if dose_g is not None:
            warnings += self._dose_warnings(candidate, dose_g)
        return warnings

    def pair_warnings(self, current: list[str], candidate: str) -> list[SafetyWarning]:
        """十八反/十九畏 (and informational) pairs between `candidate` and each herb of `current`."""
        warnings = []
        family = self._family(candidate)
        for other in current:
            other_family = self._family(other)
            for a, b, p in self.pairs:
                if (family in a and other_family in b) or (family in b and other_family in a):
                    advice = "仅供参考" if p["severity"] == "info" else "不宜同用"
                    warnings.append(SafetyWarning(
                        p["severity"], p["rule"], (other, candidate),
                        f"{other} 与 {candidate}：{p['rule']}（{p['note']}），{advice}。" + _unverified(p["verified"]),
                        self._sources(p), p["verified"]))
        return warnings

    def addition_risks(self, current: list[str], patient: Patient = Patient()) -> dict[str, list[SafetyWarning]]:
        """For every vocabulary herb that adding to `current` would put in a 十八反/十九畏 pair or against a pregnancy
        rule, those warnings (informational pairs left out): what safety-aware decoding penalises or forbids."""
        risks: dict[str, list[SafetyWarning]] = {}
        for other in current:
            for herb, warnings in self._risks_against(other).items():
                risks.setdefault(herb, []).extend(warnings)
        if patient.pregnant:
            for herb, warnings in self._pregnancy_risks().items():
                risks.setdefault(herb, []).extend(warnings)
        return risks

    @cache  # noqa: B019 (one rule set per process)
    def _partners(self) -> dict[str, frozenset[str]]:
        """Family -> the vocabulary herbs that some pair rule sets against it."""
        partners: dict[str, set[str]] = {}
        for herb in vocab().herbs:
            family = self._family(herb)
            for a, b, _ in self.pairs:
                for mine, theirs in ((a, b), (b, a)):
                    if family in mine:
                        for f in theirs:
                            partners.setdefault(f, set()).add(herb)
        return {f: frozenset(h) for f, h in partners.items()}

    @cache  # noqa: B019 (the stepper asks again at every step)
    def _risks_against(self, other: str) -> dict[str, tuple[SafetyWarning, ...]]:
        """Each vocabulary herb that would make a 十八反/十九畏 pair with `other`, and those warnings."""
        found = {herb: tuple(w for w in self.pair_warnings([other], herb) if w.severity != "info")
                 for herb in self._partners().get(self._family(other), ())}
        return {herb: warnings for herb, warnings in found.items() if warnings}

    @cache  # noqa: B019
    def _pregnancy_risks(self) -> dict[str, list[SafetyWarning]]:
        pregnant = Patient(pregnant=True)
        found = {h: [w for w in self._herb_warnings(h, pregnant) if w.rule.startswith("妊娠")] for h in vocab().herbs}
        return {h: w for h, w in found.items() if w}

    def check_prescription(self, herbs: list[str], patient: Patient = Patient(),
                           doses: dict[str, float] | None = None) -> list[SafetyWarning]:
        """All warnings for a whole prescription, most severe first."""
        doses = doses or {}
        warnings = []
        for i, herb in enumerate(herbs):
            warnings += self.check_addition(herbs[:i], herb, patient, doses.get(herb))
        return sorted(warnings, key=lambda w: SEVERITIES.index(w.severity))

    def _herb_warnings(self, herb: str, patient: Patient) -> list[SafetyWarning]:
        if not self.is_known(herb):
            return [SafetyWarning("warning", "未识别", (herb,),
                                  f"{herb}：不是已知的药名，未能做安全核查（请核对名称）。", (), True)]
        name, family = vocab().resolve_herb(herb).text, self._family(herb)
        warnings = []
        for kind in HERB_RULE_KINDS:
            if kind == "pregnancy" and not patient.pregnant:
                continue
            rules = [r for r in self.herb_rules if r.kind == kind]
            matched = [r for r in rules if name in r.herbs]
            if not matched and kind != "regulated":  # regulated rules name raw forms: exact names only
                matched = [r for r in rules if family in r.families]
            if matched:  # one entry per kind and herb: the most severe, verified first
                matched = [min(matched, key=lambda r: (SEVERITIES.index(r.severity), not r.verified))]
            for r in matched:
                warnings.append(SafetyWarning(r.severity, r.rule, (herb,), f"{herb}：{r.rule}（{r.note}）。" +
                                              _unverified(r.verified), r.sources, r.verified))
        return warnings

    def _dose_warnings(self, herb: str, dose_g: float) -> list[SafetyWarning]:
        name, family = vocab().resolve_herb(herb).text, self._family(herb)
        limits = [d for d in self.dose_limits if d["herb"] == name] or [
            d for d in self.dose_limits if self._family(d["herb"]) == family]
        if not limits:
            return []
        limit = min(limits, key=lambda d: d["max_g"])
        if dose_g <= limit["max_g"]:
            return []
        form = f"，{limit['form']}" if limit.get("form") else ""
        return [SafetyWarning(
            "severe", "超量", (herb,),
            f"{herb} {dose_g:g} g 超过每日上限 {limit['max_g']:g} g（常用 {limit['min_g']:g}–{limit['max_g']:g} g"
            f"{form}，参照 {limit['herb']}）。" + _unverified(limit["verified"]),
            self._sources(limit), limit["verified"])]


def _unverified(verified: bool) -> str:
    return "" if verified else "〔来源未核实〕"


def warnings_cost(warnings: Iterable[SafetyWarning]) -> float:
    return sum(SEVERITY_COST[w.severity] for w in warnings)


def safety_cost(herbs: Sequence[str], patient: Patient = Patient()) -> float:
    """The safety cost of a herb list for this patient, rx's one definition: every 十八反/十九畏 pair the list holds
    and (for a pregnant patient) every herb under a pregnancy rule, each costing SEVERITY_COST of its severity. It
    adds up herb by herb: the cost a herb brings is that of its `addition_risks`, which is what the stepper's screen
    charges (×`StepperConfig.screen_weight`) before adding it; GRPO's potential subtracts the whole (×`grpo.alpha`);
    the evaluator reports its mean."""
    engine = rules()
    return sum(warnings_cost(engine.addition_risks(list(herbs[:i]), patient).get(herb, ()))
               for i, herb in enumerate(herbs))


def incompatible_pairs(herbs: list[str]) -> int:
    """Number of 十八反/十九畏 pairs in a list (informational pairs and pregnancy rules are not counted)."""
    engine = rules()
    return sum(w.rule in INCOMPATIBILITY_RULES and w.severity != "info"
               for i, herb in enumerate(herbs) for w in engine.pair_warnings(herbs[:i], herb))


@lru_cache(maxsize=1)
def rules() -> SafetyRules:
    """The process-wide rule set (loaded once)."""
    return SafetyRules(yaml.safe_load(RULES_FILE.read_text(encoding="utf-8")))
