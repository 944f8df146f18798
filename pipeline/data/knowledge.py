"""Build assets/knowledge/herbs.json from the raw KDHR knowledge-graph files, for every vocabulary herb, and
assets/knowledge/action_symptoms.csv, the (herb, action, symptom) pairs a step may cite together (the teacher's
candidates)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

from pipeline.data.records import load_split
from pipeline.data.teacher import TrainStats, associated_pairs
from pipeline.runfolder import write_text
from rxapp import ASSETS
from rxapp.knowledge import ASSOCIATION_COLUMNS, ASSOCIATIONS_FILE, KNOWLEDGE_FILE
from rxapp.vocab import vocab

KG_DIR = ASSETS / "data" / "kdhr-kg"
NATURES = {"寒", "热", "温", "凉", "平", "冷", "暖"}  # 性; 微寒, 大热 … are graded natures
TOXICITY_LABELS = {"有毒", "有小毒", "有大毒", "无毒"}
# relation file, property entity file, column of the herb id in the relation file
RELATIONS = {
    "effects": ("herbTOeffect.csv", "effectID.csv", 0),
    "flavour": ("herbTOflavor.csv", "flavorID.csv", 0),
    "channels": ("herbTOchannelTropism.csv", "channel_tropismID.csv", 1),
    "kg_taboos": ("herbTOtaboo.csv", "tabooID.csv", 0),
}


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))[1:]


def _is_nature(term: str) -> bool:
    return term in NATURES or (len(term) == 2 and term[0] in "微大" and term[1] in NATURES)


def read_kg(kg_dir: Path = KG_DIR) -> dict[str, dict[str, list[str]]]:
    """KG name -> property kind -> values (deduplicated, in KG order). Duplicate KG names are merged."""
    names = {hid: name for hid, name, _ in _rows(kg_dir / "entity" / "herbID.csv")}
    by_name: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for kind, (relation_file, entity_file, herb_col) in RELATIONS.items():
        values = {row[0]: row[1] for row in _rows(kg_dir / "entity" / entity_file)}
        for row in _rows(kg_dir / "relation" / relation_file):
            herb_id, value_id = row[herb_col], row[herb_col + 1]
            value = values[value_id].strip()
            bucket = by_name[names[herb_id]][kind]
            if value and value not in bucket:
                bucket.append(value)
    return by_name


def build(out: Path = KNOWLEDGE_FILE, kg_dir: Path = KG_DIR) -> dict[str, int]:
    """Write the knowledge file and return coverage counts."""
    kg = read_kg(kg_dir)
    v = vocab()
    herbs = {}
    for herb in v.herbs:
        kg_name, match = (herb, "exact") if herb in kg else (v.family(herb), "family")
        if kg_name not in kg:
            kg_name, match = None, None
        props = kg.get(kg_name, {}) if kg_name else {}
        flavour_terms = props.get("flavour", [])
        herbs[herb] = {
            "kg_name": kg_name,
            "kg_match": match,
            "effects": props.get("effects", []),
            "nature": [t for t in flavour_terms if _is_nature(t)],
            "flavour": [t for t in flavour_terms if not _is_nature(t) and t not in TOXICITY_LABELS],
            "toxicity": [t for t in flavour_terms if t in TOXICITY_LABELS],
            "channels": props.get("channels", []),
            "kg_taboos": props.get("kg_taboos", []),
        }
    coverage = {
        "herbs": len(herbs),
        "kg_exact": sum(h["kg_match"] == "exact" for h in herbs.values()),
        "kg_family": sum(h["kg_match"] == "family" for h in herbs.values()),
        **{f"with_{k}": sum(bool(h[k]) for h in herbs.values()) for k in ("effects", "nature", "channels",
                                                                            "kg_taboos")},
    }
    document = {
        "about": "Herb facts for the SMGCN vocabulary, from the KDHR knowledge graph (ETCM-derived, Apache-2.0, "
                 "assets/data/kdhr-kg). Built by `python -m pipeline knowledge`; do not edit by hand.",
        "coverage": coverage,
        "herbs": herbs,
    }
    write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", out)
    return coverage


def build_associations(out: Path = ASSOCIATIONS_FILE, herb_lists: str = "clean") -> int:
    """Write the teacher's candidate (herb, action, symptom) pairs with their score (pipeline.data.teacher
    .associated_pairs; its 用于 pairs need the training split's `herb_lists` to have given the herb for the symptom);
    returns the number of rows. They depend on the shipped herbs.json and main actions."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ASSOCIATION_COLUMNS)
    rows = associated_pairs(TrainStats.from_records(load_split("train", herb_lists)))
    writer.writerows(rows)
    write_text(text.getvalue(), out)
    return len(rows)
