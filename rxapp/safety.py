"""Safety engine: 十八反/十九畏, pregnancy, toxicity, withdrawn herbs, dose limits and interactions with the
patient's Western drugs, as sourced data rules.

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
from rxapp.drugs import INTERACTION_SEVERITY, Drug, Interaction, drug_vocab, interaction_herbs, rows_for
from rxapp.vocab import MAX_HERB_NAME, MAX_INPUT_HERBS, HerbInputError, clean_text, vocab

RULES_FILE = ASSETS / "safety" / "rules.yaml"
SEVERITIES = ("severe", "warning", "info")  # most severe first
SEVERITY_COST = {"severe": 2.0, "warning": 1.0, "info": 0.0}  # what one broken rule costs (`safety_cost`)
SEVERITY_WORD = {"severe": "严重", "warning": "警告", "info": "提示"}  # how the page and the 方解 name them
INCOMPATIBILITY_RULES = ("十八反", "十九畏")
INTERACTION_RULE = "药物相互作用"  # a herb with a Western drug the patient takes (rxapp.drugs)
DOSE_GATED_HERB = "甘草"  # its interaction rows depend on daily dose and duration (the reference's licorice gating)
HERB_RULE_KINDS = ("pregnancy", "toxicity", "regulated", "withdrawn")
MAX_DOSE_G = 250.0  # no single herb is dosed above this per day; larger numbers are typing errors


def check_safety_weight(weight: float, name: str) -> float:
    """A safety weight (the stepper's screen weight, GRPO's α) as given, or ValueError: it must be a finite number
    ≥ 0, since a negative one would turn every broken rule into a reward."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {weight!r}")
    return float(weight)


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
    rule: str  # 十八反, 十九畏, 妊娠禁用, 妊娠慎用, 大毒/有毒/小毒, 毒性药品管理, 马兜铃酸, 超量, 药物相互作用, 未识别
    herbs: tuple[str, ...]
    message: str
    sources: tuple[Source, ...]
    verified: bool  # False where the rule's source is itself marked unverified
    drug: str | None = None  # 药物相互作用: the patient's drug (its generic name, a class, or an ATC code)
    interactions: tuple[dict, ...] = ()  # 药物相互作用: each table row behind the warning, as data

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Patient:
    pregnant: bool = False
    drugs: tuple[Drug, ...] = ()  # the Western drugs the patient takes (rxapp.drugs.drug_vocab().parse)
    unchecked_drugs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # typed, not recognised: (text, suggestions)

    @classmethod
    def from_input(cls, pregnant: bool = False, medications: str | Sequence[str] = "") -> Patient:
        """A patient as the user described them: the medication list read against the drug vocabulary (an
        unrecognised entry is kept, to be reported as not checked). MedicationInputError if it cannot be read."""
        parsed = drug_vocab().parse(medications if isinstance(medications, str) else list(medications))
        return cls(bool(pregnant), tuple(parsed.drugs),
                   tuple((text, tuple(parsed.suggestions.get(text, ()))) for text in parsed.unrecognised))


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
        self.known_names |= {d["herb"] for d in self.dose_limits} | interaction_herbs()
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
        return warnings + self.interaction_warnings([candidate], patient, {candidate: dose_g} if dose_g else None)

    def interaction_warnings(self, herbs: list[str], patient: Patient,
                             doses: dict[str, float] | None = None) -> list[SafetyWarning]:
        """One warning per (patient drug, concern) that `herbs` bring with the patient's drugs, naming every herb
        that contributes (甘草 and 大黄 with furosemide: one 低血钾 warning)."""
        grouped: dict[tuple[Drug, str], list[tuple[str, Interaction, str]]] = {}
        for herb in herbs:
            for row, drug, how in rows_for(herb, patient.drugs):
                grouped.setdefault((drug, row.concern), []).append((herb, row, how))
        return [_interaction_warning(drug, concern, found, doses or {}) for (drug, concern), found in grouped.items()]

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
        for herb, warnings in self._interaction_risks(patient.drugs).items():
            risks.setdefault(herb, []).extend(warnings)
        return risks

    @cache  # noqa: B019 (one rule set per process)
    def severe_herbs(self) -> frozenset[str]:
        """Vocabulary herbs under a severe rule of their own whoever the patient (马兜铃酸): a screen that forbids
        severe additions never adds them."""
        return frozenset(h for h in vocab().herbs
                         if any(w.severity == "severe" for w in self._herb_warnings(h, Patient())))

    @lru_cache(maxsize=64)  # noqa: B019 (asked at every step; keyed by a patient's drugs, so bounded: the app lives long)
    def _interaction_risks(self, drugs: tuple[Drug, ...]) -> dict[str, tuple[SafetyWarning, ...]]:
        """Each vocabulary herb that interacts with one of `drugs`, and those warnings (minor ones left out)."""
        found = {h: tuple(w for w in self.interaction_warnings([h], Patient(drugs=drugs)) if w.severity != "info")
                 for h in vocab().herbs} if drugs else {}
        return {herb: warnings for herb, warnings in found.items() if warnings}

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
        """All warnings for a whole prescription, most severe first; one per (drug, concern) for interactions."""
        doses = doses or {}
        warnings = []
        for i, herb in enumerate(herbs):
            warnings += self.check_addition(herbs[:i], herb, Patient(patient.pregnant), doses.get(herb))
        warnings += self.interaction_warnings(herbs, patient, doses)
        warnings += [SafetyWarning("warning", "未识别", (), f"{text}：不是已知的西药名，未做相互作用核查" +
                                   (f"（是否指：{'、'.join(hint)}）" if hint else "") + "。", (), True, text)
                     for text, hint in patient.unchecked_drugs]
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


def interaction_summary(warnings: Iterable[SafetyWarning]) -> str:
    """The interactions of a whole prescription with the patient's drugs in one line, for beside the 方解
    (`丹参、当归 与 华法林：出血风险`); empty when there are none."""
    return "；".join(f"{'、'.join(w.herbs)} 与 {drug_vocab().lookup(w.drug).label}：{w.interactions[0]['concern']}"
                    f"（{SEVERITY_WORD[w.severity]}）" for w in warnings if w.rule == INTERACTION_RULE)


def removal_reason(herb: str, warnings: Iterable[SafetyWarning]) -> str:
    """What removing `herb` ends, in one line, from the warnings it is named in: the reason of a removal the safety
    check proposes (`妊娠禁用；十八反（半夏）`, `与华法林（warfarin）相互作用，出血风险`); a rule whose source is
    unverified stays marked."""
    reasons: dict[str, list[str]] = {}
    for w in warnings:
        if w.rule == INTERACTION_RULE:
            rule = f"与{drug_vocab().lookup(w.drug).label}相互作用，{w.interactions[0]['concern']}"
        else:
            rule = w.rule
        reasons.setdefault(rule + _unverified(w.verified), []).extend(
            h for h in w.herbs if h != herb and w.rule != INTERACTION_RULE)
    return "；".join(f"{rule}（{'、'.join(others)}）" if others else rule for rule, others in reasons.items())


def _unverified(verified: bool) -> str:
    return "" if verified else "〔来源未核实〕"


INTERACTION_GRADE = {"major": "重大", "moderate": "中度", "minor": "轻度"}


def _interaction_warning(drug: Drug, concern: str, found: list[tuple[str, Interaction, str]],
                         doses: dict[str, float]) -> SafetyWarning:
    """The warning for one (drug, concern): every herb behind it, each row's effect and what to do, the strongest
    severity, and what the evidence is; a row that applies only if the patient's drug is of the row's class (the
    patient named a wider class) says so."""
    herbs = tuple(dict.fromkeys(herb for herb, _, _ in found))
    rows = list(dict.fromkeys((row, how) for _, row, how in found))
    severity = min((INTERACTION_SEVERITY[row.severity] for row, _ in rows), key=SEVERITIES.index)
    parts = []
    for row, how in rows:
        names = "、".join(h for h, r, _ in found if r == row)
        if_class = f"（若所用药物属于 {row.drug_class}）" if how == "possible" else ""
        dose = next((doses[h] for h, r, _ in found if r == row and doses.get(h)), None)
        gated = (f"本方 {row.herb} {dose:g} g/日；所引证据多为每日 ≥100 mg 甘草酸或长期服用，克数与甘草酸的换算因药材"
                 "而异，未作换算，故不按剂量降级。") if dose and row.herb == DOSE_GATED_HERB else ""
        parts.append(f"{names}{if_class}：{row.effect}〔{INTERACTION_GRADE[row.severity]}；{row.evidence_note}〕。"
                     f"处理：{row.management}。{gated}" + _unverified(row.verified))
    message = f"{'、'.join(herbs)} 与 {drug.label} 相互作用：{concern}。" + " ".join(parts)
    sources = tuple(dict.fromkeys(Source(title[:60], title, url) for row, _ in rows for title, url in row.sources))
    details = tuple({"herb": row.herb, "drug_class": row.drug_class, "concern": row.concern, "applies": how,
                     "effect": row.effect, "mechanism": row.mechanism, "management": row.management,
                     "severity": row.severity, "evidence": list(row.evidence), "verified": row.verified}
                    for row, how in rows)
    return SafetyWarning(severity, INTERACTION_RULE, herbs, message, sources, all(r.verified for r, _ in rows),
                         drug.name, details)


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
