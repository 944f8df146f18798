import json
import math

from pipeline.data.knowledge import build
from pipeline.data.records import load_split
from pipeline.data.teacher import TrainStats, pair_score
from rxapp.knowledge import ASSOCIATIONS_FILE, KNOWLEDGE_FILE, associated, herb_actions


def test_shipped_knowledge_is_what_the_builder_makes(tmp_path):
    out = tmp_path / "herbs.json"
    coverage = build(out)
    assert out.read_text(encoding="utf-8") == KNOWLEDGE_FILE.read_text(encoding="utf-8"), \
        "assets/knowledge/herbs.json is stale: run python -m pipeline knowledge"
    # the data README counts 690 SMGCN herbs with effects in the KG; 4 artefact tokens (杏, 郁李, 女贞, 冬葵) take
    # theirs from the drug they clearly mean (assets/vocab/artefacts.yaml)
    assert coverage["herbs"] == 753 and coverage["with_effects"] == 694
    assert json.loads(out.read_text(encoding="utf-8"))["herbs"]["甘草"]["nature"] == ["平"]


def test_knowledge_cli_rebuilds_the_shipped_knowledge_and_associations(cli, tmp_path):
    result = cli("-m", "pipeline", "knowledge", "--out", str(tmp_path / "k.json"), "--associations",
                 str(tmp_path / "a.csv"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["herbs"] == 753 and summary["associations"] > 5_000
    assert (tmp_path / "k.json").read_text(encoding="utf-8") == KNOWLEDGE_FILE.read_text(encoding="utf-8")
    assert (tmp_path / "a.csv").read_text(encoding="utf-8") == ASSOCIATIONS_FILE.read_text(encoding="utf-8"), \
        "assets/knowledge/action_symptoms.csv is stale: run python -m pipeline knowledge"


def test_associations_are_the_teachers_candidate_pairs():
    stats = TrainStats.from_records(load_split("train", "clean"))
    symptoms = ["恶寒发热", "无汗", "头痛", "身痛", "咳嗽", "气喘"]
    for herb in ("麻黄", "桔梗", "川芎", "人参"):
        shipped = {(a, s, score) for a, scores in associated(herb).items() for s, score in scores.items()
                   if s in symptoms}
        assert shipped == {(a, s, round(pair_score(herb, a, s, stats), 4)) for a in herb_actions(herb)
                           for s in symptoms if pair_score(herb, a, s, stats) > -math.inf}
    assert ("发汗解表", "无汗") in {(a, s) for a, scores in associated("麻黄").items() for s in scores}
