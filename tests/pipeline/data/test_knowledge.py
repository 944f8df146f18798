import json

from pipeline.data.knowledge import build
from rxapp.knowledge import KNOWLEDGE_FILE


def test_shipped_knowledge_is_what_the_builder_makes(tmp_path):
    out = tmp_path / "herbs.json"
    coverage = build(out)
    assert out.read_text(encoding="utf-8") == KNOWLEDGE_FILE.read_text(encoding="utf-8"), \
        "assets/knowledge/herbs.json is stale: run python -m pipeline knowledge"
    # the data README counts 690 SMGCN herbs with effects in the KG; 4 artefact tokens (杏, 郁李, 女贞, 冬葵) take
    # theirs from the drug they clearly mean (assets/vocab/artefacts.yaml)
    assert coverage["herbs"] == 753 and coverage["with_effects"] == 694
    assert json.loads(out.read_text(encoding="utf-8"))["herbs"]["甘草"]["nature"] == ["平"]


def test_knowledge_cli(cli, tmp_path):
    result = cli("-m", "pipeline", "knowledge", "--out", str(tmp_path / "k.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["herbs"] == 753
    assert (tmp_path / "k.json").read_text(encoding="utf-8") == KNOWLEDGE_FILE.read_text(encoding="utf-8")
