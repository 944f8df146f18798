from pipeline.data.records import load_split
from pipeline.metrics import names_a_drug_twice
from pipeline.runfolder import RunFolder, read_jsonl


def test_the_default_config_teaches_from_the_clean_lists(micro_run):
    # configs/micro.yaml keeps the default herb_lists: the examples hold no artefact token beside its longer name and
    # no drug under two names, and their herbs are the clean lists' (not the published ones)
    examples = read_jsonl(RunFolder(micro_run).examples("validation"))
    clean = {r.id: set(r.herbs) for r in load_split("validation", "clean")}
    raw = {r.id: set(r.herbs) for r in load_split("validation", "raw")}
    assert examples and all(set(e["herbs"]) == clean[e["id"]] for e in examples)
    assert not any(names_a_drug_twice(e["herbs"]) for e in examples)
    assert any(set(e["herbs"]) != raw[e["id"]] for e in examples)
