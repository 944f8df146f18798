"""The run folder: every path inside a run, the model each trained stage starts from, and the atomic JSON/JSONL
reads and writes that a run's files go through. Nothing else spells a path inside a run.

    RUN/config.yaml                the config the run was made with
    RUN/stages/NAME.json           a finished stage's record (fingerprint, finishing time, seconds, summary)
    RUN/logs/NAME.log              a stage's output
    RUN/run.json                   the last `pipeline run`: each stage's status, time and summary
    RUN/data/splits.json           the splits' sizes and the validation split's identity
    RUN/knowledge/herbs.json       the knowledge rebuilt from the raw files, compared with the shipped one
    RUN/distill/SPLIT.jsonl        training examples (and manifest.json, the inputs they were made from)
    RUN/distill/train-revisions.jsonl  a revision example (a draft to correct) of every training record
    RUN/sft/best, RUN/small/best   the trained models (beside log.json; sft/ also holds checkpoint.pt)
    RUN/prefs/                     pairs.jsonl, unpaired.jsonl, stats.json
    RUN/dpo/best                   the preference-trained model
    RUN/grpo-aα/best               step-wise GRPO at α (beside log.json, curves.png and export/)
    RUN/tradeoff.json, .png        the α sweep
    RUN/export/                    the exported model of the shipped stage, with card.md
    RUN/evaluate/SPLIT.json        every trained stage, the baselines and the doctors, scored
    RUN/evaluate/revision-SPLIT.json   the exported model revising corrupted drafts
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRAINED_STAGES = ("sft", "dpo", "grpo")  # the stages that leave an LLM a run can export and ship
REVISIONS_FILE = "train-revisions.jsonl"  # in distill/: a revision example of every training record


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def record(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def log(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.log"

    @property
    def report(self) -> Path:
        return self.root / "run.json"

    @property
    def splits(self) -> Path:
        return self.root / "data" / "splits.json"

    @property
    def knowledge(self) -> Path:
        return self.root / "knowledge" / "herbs.json"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    def examples(self, split: str) -> Path:
        """The distilled examples of a split."""
        return self.distill / f"{split}.jsonl"

    def revisions(self) -> Path:
        """The revision examples of the training records (pipeline.data.revision)."""
        return self.distill / REVISIONS_FILE

    def stage(self, name: str, alpha: float | None = None) -> Path:
        """A trained stage's folder; GRPO has one per α."""
        if name == "grpo":
            if alpha is None:
                raise ValueError("the grpo folder depends on α")
            return self.root / f"grpo-a{alpha:g}"
        return self.root / name

    def best(self, name: str, alpha: float | None = None) -> Path:
        """The model a trained stage kept."""
        return self.stage(name, alpha) / "best"

    @property
    def prefs(self) -> Path:
        return self.root / "prefs"

    @property
    def sweep_start(self) -> Path:
        """Where the α sweep exports the model GRPO started from."""
        return self.root / "grpo-start"

    @property
    def tradeoff(self) -> Path:
        """The α sweep's rows; its plot is the same name with .png."""
        return self.root / "tradeoff.json"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def evaluation(self, split: str) -> Path:
        return self.root / "evaluate" / f"{split}.json"

    def revision_evaluation(self, split: str) -> Path:
        """The exported model revising the split's corrupted drafts (pipeline.evaluate.evaluate_revision)."""
        return self.root / "evaluate" / f"revision-{split}.json"

    def start_model(self, stage: str, grpo_start: str = "sft") -> Path:
        """The model a trained stage starts from (and, for DPO and GRPO, refers to): prefs and dpo start from SFT;
        grpo and the α sweep from `grpo_start`'s model (the config's grpo.start: sft, or dpo, the preference
        stage's)."""
        if stage in ("prefs", "dpo"):
            return self.best("sft")
        if stage in ("grpo", "tradeoff"):
            return self.best(grpo_start)
        raise ValueError(f"stage {stage!r} does not start from a trained model")


def write_json(document: dict | list, path: Path) -> None:
    """Write JSON atomically (a reader never sees half a file), creating the folder."""
    write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", path)


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    """Write one JSON object per line, atomically, creating the folder."""
    write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)


def write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
