"""`pipeline distill`: turn records into 症状分析—处方—方解 training examples (JSONL), cached on its inputs."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.data.llm_teacher import Endpoint, distill_with_llm
from pipeline.data.records import SMGCN, load_split
from pipeline.data.revision import teach_revisions
from pipeline.data.teacher import TrainStats, teach
from pipeline.runfolder import REVISIONS_FILE, read_json, read_jsonl, write_json, write_jsonl
from rxapp import knowledge, stepformat, vocab

# A change to any of these (data, knowledge, the vocabulary and its artefact map, the teacher's, the knowledge
# reader's or the format's code) rebuilds the cache.
INPUTS = (SMGCN / "train.txt", SMGCN / "test.txt", knowledge.KNOWLEDGE_FILE, knowledge.MAIN_ACTIONS_FILE,
          *(vocab.VOCAB_DIR / name for name in ("herbs.yaml", "symptoms.yaml", "artefacts.yaml")), Path(__file__),
          Path(__file__).with_name("teacher.py"), Path(__file__).with_name("llm_teacher.py"),
          Path(__file__).with_name("revision.py"),
          Path(stepformat.__file__), Path(knowledge.__file__), Path(vocab.__file__))


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for path in INPUTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def distill(splits: list[str], out_dir: Path, lists: str = "clean", endpoint: Endpoint | None = None,
            llm_limit: int | None = None) -> dict[str, Path]:
    """Write `<split>.jsonl` for each split from its `lists` herb lists (pipeline.data.records.HERB_LISTS), and
    `train-revisions.jsonl`, a revision example of every training record (pipeline.data.revision); a split whose
    files match the current inputs is not redone.
    With an `endpoint`, the OpenAI-compatible teacher is asked about the first `llm_limit` records of each split (all
    by default; its answers are cached in `llm-<split>.jsonl`) and writes each response it is not rejected on; the
    knowledge teacher writes the rest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    key = inputs_digest() + f" {lists}" + (f" {endpoint.url} {endpoint.model}" if endpoint else "")
    stats = None
    paths = {}
    for split in splits:
        path = paths[split] = out_dir / f"{split}.jsonl"
        revisions = out_dir / REVISIONS_FILE if split == "train" else None
        if revisions:
            paths["train-revisions"] = revisions
        if manifest.get(split) == key and path.exists() and endpoint is None and (revisions is None
                                                                                  or revisions.exists()):
            continue
        stats = stats or TrainStats.from_records(load_split("train", lists))  # statistics of the training split only
        records = load_split(split, lists)
        accepted = {}
        if endpoint is not None:
            counts = distill_with_llm(records[:llm_limit], endpoint, out_dir / f"llm-{split}.jsonl", stats)
            print(f"{split}: llm teacher {json.dumps(counts)}", file=sys.stderr)
            accepted = {e["id"]: e for e in read_jsonl(out_dir / f"llm-{split}.jsonl") if e["status"] != "rejected"}
        examples = []
        for record in tqdm(records, desc=f"distill {split}", unit="rx", disable=None):
            example = teach(record, stats)
            if record.id in accepted:
                example.update(response=accepted[record.id]["response"], herbs=accepted[record.id]["herbs"])
            examples.append(example)
        write_jsonl(examples, path)
        if revisions:
            write_jsonl(teach_revisions(records, stats), revisions)
        manifest[split] = key
        write_json(manifest, manifest_path)
    return paths
