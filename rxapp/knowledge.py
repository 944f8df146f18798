"""Herb knowledge (功效, 性味, 归经, KG taboo notes) for the vocabulary herbs, read from assets/knowledge/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from rxapp import ASSETS
from rxapp.stepformat import NO_RECORD
from rxapp.vocab import vocab

KNOWLEDGE_FILE = ASSETS / "knowledge" / "herbs.json"


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
        """One line for a herb card: 功效 …；性味 …；归经 …"""
        parts = []
        if self.effects:
            parts.append("功效 " + "、".join(self.effects[:max_effects]))
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
