"""Herb knowledge for the vocabulary herbs, read from assets/knowledge/: the KG's 功效, 性味, 归经 and taboo
notes, the curated main actions (功效) and indications (主治) of the most-prescribed herbs, and from both the
actions a step may cite for a herb and whether a herb treats a symptom; and for which symptoms a step may cite each
of a herb's actions (the teacher's candidate pairs, so that the app's steps tie the same pairs)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from rxapp import ASSETS
from rxapp.stepformat import NO_RECORD
from rxapp.vocab import vocab

KNOWLEDGE_FILE = ASSETS / "knowledge" / "herbs.json"
MAIN_ACTIONS_FILE = ASSETS / "knowledge" / "main_actions.csv"
ASSOCIATIONS_FILE = ASSETS / "knowledge" / "action_symptoms.csv"
ASSOCIATION_COLUMNS = ("herb", "action", "symptom", "score")


@dataclass(frozen=True)
class HerbFacts:
    """What the KDHR knowledge graph says about one vocabulary herb."""

    herb: str
    kg_name: str | None  # the KG entry the facts come from
    kg_match: str | None  # "exact", "family" (from the herb's family, e.g. 瓜蒌皮 -> 瓜蒌) or None (no entry)
    effects: tuple[str, ...]  # 功效 and 主治 strings, as the KG lists them
    nature: tuple[str, ...]  # 性: 寒 热 温 凉 平 and their 微/大 grades
    flavour: tuple[str, ...]  # 味: 辛 甘 酸 苦 咸 淡 涩 …
    toxicity: tuple[str, ...]  # the KG's own 有毒/有小毒/有大毒/无毒 label
    channels: tuple[str, ...]  # 归经
    kg_taboos: tuple[str, ...]  # KG 禁忌 notes: noisy, shown as notes, never used as safety rules

    def summary(self, max_effects: int = 6) -> str:
        """One line for a herb card: 功效 …；性味 …；归经 …. The 功效 are the herb's textbook main actions where it has
        curated ones (main_actions.csv, each row sourced; a row not verified says so), else the knowledge graph's
        effects, headed 功效主治: the graph mixes actions with indications in no meaningful order (甘草: 补脾益气、
        气短、腰痛 …)."""
        parts = []
        curated = main_actions().get(self.herb)
        if curated:
            unverified = "" if curated.verified else "（未核实）"
            parts.append("功效 " + "、".join(curated.actions[:max_effects]) + unverified)
        elif self.effects:
            parts.append("功效主治 " + "、".join(self.effects[:max_effects]))
        if self.nature or self.flavour:
            parts.append("性味 " + "、".join(self.flavour + self.nature))
        if self.channels:
            parts.append("归经 " + "、".join(self.channels))
        return "；".join(parts) if parts else NO_RECORD


@lru_cache(maxsize=1)
def knowledge() -> dict[str, HerbFacts]:
    """Facts for every vocabulary herb, keyed by vocabulary name."""
    if not KNOWLEDGE_FILE.exists():
        raise FileNotFoundError(f"{KNOWLEDGE_FILE} is missing; rebuild it with: python -m pipeline knowledge")
    raw = json.loads(KNOWLEDGE_FILE.read_text(encoding="utf-8"))
    return {
        name: HerbFacts(herb=name, kg_name=r["kg_name"], kg_match=r["kg_match"],
                        **{k: tuple(r[k]) for k in ("effects", "nature", "flavour", "toxicity", "channels",
                                                    "kg_taboos")})
        for name, r in raw["herbs"].items()
    }


def facts_for(name: str) -> HerbFacts | None:
    """Facts for a herb given by any name the vocabulary resolves (炒白术 -> 白术); None if unknown."""
    herb = vocab().resolve_herb(name).herb
    return knowledge().get(herb) if herb else None


@dataclass(frozen=True)
class MainActions:
    """A herb's textbook main actions (功效) and indications (主治), curated with sources in main_actions.csv."""

    herb: str
    actions: tuple[str, ...]  # 功效 phrases in 药典/《中药学》 wording, e.g. 发汗解表
    indications: tuple[str, ...]  # 主治 terms, the ones to match against a patient's symptoms
    role: str  # textbook role and cautions (调和诸药, 要药, 有毒 …); "" where the reference read none
    identity: str  # how the vocabulary name maps to a drug; "FLAG" marks an inferred or doubtful mapping
    sources: str  # titles and URLs of the pages the text was read on
    verified: bool  # the actions and indications were read in the cited pages (the identity may still be FLAGged)


@lru_cache(maxsize=1)
def main_actions() -> dict[str, MainActions]:
    """Main actions of the curated herbs (not every vocabulary herb), keyed by vocabulary name."""
    herbs = set(vocab().herbs)
    table = {}
    with MAIN_ACTIONS_FILE.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            where = f"{MAIN_ACTIONS_FILE}, line {reader.line_num}"
            # an unknown name would silently never be looked up, and an empty action would explain nothing
            if row["herb"] not in herbs:
                raise ValueError(f"{where}: {row['herb']!r} is not a vocabulary herb")
            if row["herb"] in table:
                raise ValueError(f"{where}: {row['herb']} has a second row")
            actions = tuple(a for a in row["actions"].split(";") if a)
            if not actions:
                raise ValueError(f"{where}: {row['herb']} has no actions")
            if row["verified"] not in ("true", "false"):
                raise ValueError(f"{where}: verified must be true or false, not {row['verified']!r}")
            table[row["herb"]] = MainActions(
                herb=row["herb"], actions=actions, indications=tuple(i for i in row["indications"].split(";") if i),
                role=row["role"], identity=row["identity"], sources=row["source"], verified=row["verified"] == "true")
    return table


# First characters of 功效 phrases (补脾益气, 清热解毒 …); the KG mixes these with 主治 (indications).
ACTION_VERBS = frozenset("清利消祛补止解通活散凉益温润健破化除行养舒泻理滋宣平安和调缓收敛固涩开醒降升发息定燥渗宁"
                         "排托软逐杀透纳回助暖壮退镇驱截")
NOT_ACTIONS = frozenset({"发热", "发黄", "消渴", "温疟", "温病", "泻痢", "化脓", "行经", "发狂", "发疹", "消化不良"})
ROLE_ACTIONS = frozenset({"调和诸药"})  # a herb's role in the formula: citable without a symptom


PLAIN_USES = frozenset({"生用", "内服"})  # markers of the form a decoction takes: their actions are citable
USE_MARKER = re.compile(r"^[(（\[]([^)）\]]*)[)）\]]")  # a leading (煅用), [制] or （外用）
OTHER_WORDING = re.compile(r"[(（][^)）]*[)）]")  # 祛风除湿(祛风胜湿): the same action in another source's words


def decoction_actions(listed: Sequence[str]) -> list[str]:
    """The curated actions of the form a decoction takes, in order. A leading marker limits its action and those
    after it, up to the next marker, to one processing or use (石膏: (生用)清热泻火; 除烦止渴; (煅用)收湿; 生肌 …);
    only the plain form's count (no marker, 生用, 内服), and an action that is itself external (外用蚀疮) does not.
    A parenthesis elsewhere gives another wording of the same action and is dropped."""
    citable, plain = [], True
    for action in listed:
        if marker := USE_MARKER.match(action):
            plain, action = marker.group(1) in PLAIN_USES, action[marker.end():]
        action = OTHER_WORDING.sub("", action)
        if plain and action and not action.startswith("外用"):
            citable.append(action)
    return citable


@lru_cache(maxsize=4096)
def herb_actions(herb: str) -> tuple[str, ...]:
    """The 功效 a step may cite for a vocabulary herb, main first: its curated main actions of the form a decoction
    takes (decoction_actions), else the knowledge graph's action-like effects in the graph's order."""
    curated = main_actions().get(herb)
    actions = decoction_actions(curated.actions) if curated else []
    if not actions:
        symptoms = vocab().symptom_id
        facts = knowledge().get(herb)
        actions = [e for e in (facts.effects if facts else ()) if 2 <= len(e) <= 6 and e[0] in ACTION_VERBS
                   and e not in NOT_ACTIONS and e not in symptoms]
    return tuple(dict.fromkeys(a.replace("、", "") for a in actions))  # 、 separates an explanation's actions


def lead_action(herb: str) -> str | None:
    """What a step says for a herb tied to none of this patient's symptoms: its role (调和诸药) when it has one,
    else its first citable action, the textbook's lead 功效."""
    actions = herb_actions(herb)
    return next((a for a in actions if a in ROLE_ACTIONS), actions[0] if actions else None)


def names(term: str, symptom: str) -> bool:
    """Whether a curated 主治 term names the symptom: it holds it (咳嗽 in 咳嗽痰多), is held by it (头痛 for the
    term 头痛), names two sites and their complaint (腰膝酸痛 names 腰痛, 胸胁胀痛 names 胸痛 and 胁痛: four
    characters ending in 痛 or 闷, neither half a symptom, the first no sore: 厥阴头痛 and 阴疽肿痛 name no
    阴痛), or holds a wording the vocabulary maps to it (symptoms.yaml's synonyms: 泄泻 in 脾虚泄泻 names 腹泻)."""
    if len(symptom) >= 2 and len(term) >= 2 and (symptom in term or term in symptom):
        return True
    symptoms = vocab().symptom_id
    if (len(term) == len(symptom) * 2 == 4 and term[3] == symptom[1] and symptom[1] in "痛闷"
            and symptom[0] in term[:2] and term[:2] not in symptoms and term[2:] not in symptoms
            and not set(term[:2]) & set("疽疮")):
        return True
    return any(w in term for w in _wordings().get(symptom, ()))


@cache
def _wordings() -> dict[str, list[str]]:
    """symptoms.yaml's synonyms by the symptom they mean: the wordings (two characters or more) that name it."""
    out: dict[str, list[str]] = {}
    for wording, meant in vocab().synonyms.items():
        for symptom in meant if len(wording) >= 2 else ():
            out.setdefault(symptom, []).append(wording)
    return out


def naming_terms(herb: str, symptom: str) -> list[str]:
    """The herb's curated 主治 terms that name the symptom (names), in the source's order."""
    curated = main_actions().get(herb)
    return [t for t in curated.indications if names(t, symptom)] if curated else []


@cache
def named_symptoms(herb: str) -> frozenset[str]:
    """The vocabulary symptoms a herb's sources name among what it treats: named by one of its curated 主治 terms
    (names); or by one of its knowledge-graph effects: the symptom itself, inside one (腹痛 in 心腹痛; not the
    reverse, since the effect 腹痛 does not name the symptom 产后腹痛), or a synonym's wording inside one."""
    facts = knowledge().get(herb)
    effects = facts.effects if facts else ()
    named = {s for s in vocab().symptoms if naming_terms(herb, s) or s in effects
             or (len(s) >= 2 and any(s in e for e in effects))}
    named |= {s for s, wordings in _wordings().items() if any(w in e for w in wordings for e in effects)}
    return frozenset(named)


def treats(herb: str, symptom: str) -> bool:
    """Whether a herb's sources name the symptom among what it treats (named_symptoms)."""
    return symptom in named_symptoms(herb)


@lru_cache(maxsize=1)
def _associations() -> dict[str, dict[str, dict[str, float]]]:
    if not ASSOCIATIONS_FILE.exists():
        raise FileNotFoundError(f"{ASSOCIATIONS_FILE} is missing; rebuild it with: python -m pipeline knowledge")
    table: dict[str, dict[str, dict[str, float]]] = {}
    with ASSOCIATIONS_FILE.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["herb"], {}).setdefault(row["action"], {})[row["symptom"]] = float(row["score"])
    return table


def associated(herb: str) -> dict[str, dict[str, float]]:
    """For each citable action of `herb` (herb_actions): the symptoms a step may cite it for, with the pair's score
    (the knowledge teacher's candidate pairs and their pair_score: the herb sources pair the action's words with the
    symptom beyond chance, and the herb's sources name the symptom or training prescriptions gave the herb for it;
    the teacher cites the best). Built by `python -m pipeline knowledge` (pipeline.data.teacher.associated_pairs)."""
    return _associations().get(herb, {})
