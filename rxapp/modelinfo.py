"""The model-file contract, in one place: what a model file declares so that the app can trust it (the step-format
version it was trained on and a digest of the herb vocabulary its herb tokens stand for), how to decode it (the
greedy stop rule's thresholds), where a Hugging Face folder keeps that (rx.json), and a model's identity (the
sha256 of its file or folder). The trainers and the exporter write these; the backends check and read them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rxapp.stepformat import FORMAT_VERSION, READABLE_FORMATS
from rxapp.vocab import vocab

FORMAT_KEY = "rx.step_format_version"
VOCABULARY_KEY = "rx.herb_vocabulary_sha256"
STOP_KEY = "rx.stop_threshold"  # the greedy stop rule's threshold building from nothing (rxapp.decoding.greedy_stop)
REVISION_STOP_KEY = "rx.revision_stop_threshold"  # and revising a draft
HERB_LIMIT_KEY = "rx.herb_limit"  # the most herbs a prescription built from nothing holds ("0": no limit of its own)
DEFAULT_STOP_THRESHOLD = 0.5
HF_METADATA = "rx.json"  # beside config.json: the metadata of a Hugging Face folder (a GGUF holds it as fields)


class ModelMismatchError(ValueError):
    """The model was trained for another step format or herb vocabulary than this app's."""


def vocabulary_digest() -> str:
    return hashlib.sha256("\n".join(vocab().herbs).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StopThresholds:
    """The greedy stop rule's thresholds (rxapp.decoding.greedy_stop), each tuned on validation: one for building a
    prescription from nothing, one for revising a draft, where the same model should stop after a few changes
    rather than a prescription's worth of steps; and the most herbs a prescription built from nothing may hold,
    tuned with its threshold, since the model's stop probabilities set how long its lists are on average but barely
    which patients need longer ones (pipeline.model.stopping)."""

    scratch: float = DEFAULT_STOP_THRESHOLD
    revision: float = DEFAULT_STOP_THRESHOLD
    herb_limit: int | None = None  # None: only the stepper's own limit (StepperConfig.max_herbs)

    def of(self, revising: bool) -> float:
        return self.revision if revising else self.scratch

    def most_herbs(self, revising: bool, ceiling: int) -> int:
        """The most herbs decoding may hold under `ceiling` (the decoder's own limit): the herb limit building from
        nothing, where it is lower; a revision keeps its draft and is not limited by it."""
        return min(ceiling, self.herb_limit) if self.herb_limit and not revising else ceiling


def model_metadata(thresholds: StopThresholds = StopThresholds()) -> dict[str, str]:
    return {FORMAT_KEY: str(FORMAT_VERSION), VOCABULARY_KEY: vocabulary_digest(),
            STOP_KEY: f"{thresholds.scratch:g}", REVISION_STOP_KEY: f"{thresholds.revision:g}",
            HERB_LIMIT_KEY: str(thresholds.herb_limit or 0)}


def format_version(metadata: dict[str, str]) -> int:
    """The step format a checked model was trained on."""
    return int(metadata[FORMAT_KEY])


def stop_thresholds(metadata: dict[str, str]) -> StopThresholds:
    """The model's tuned stop thresholds: ½ (the median length) where it declares none, its from-nothing threshold
    for revising where it declares no revision threshold, and no herb limit where it declares none (models exported
    before there was one)."""
    scratch = float(metadata.get(STOP_KEY, DEFAULT_STOP_THRESHOLD))
    return StopThresholds(scratch, float(metadata.get(REVISION_STOP_KEY, scratch)),
                          int(metadata.get(HERB_LIMIT_KEY, 0)) or None)


def saved_stop_thresholds(folder: Path) -> StopThresholds:
    """The stop thresholds in a Hugging Face folder's rx.json (½ when the folder has none)."""
    saved = Path(folder) / HF_METADATA
    return stop_thresholds(json.loads(saved.read_text()) if saved.exists() else {})


def write_model_metadata(folder: Path, thresholds: StopThresholds = StopThresholds()) -> None:
    """Declare a Hugging Face folder an rx model of this app's format and vocabulary, with its stop thresholds."""
    (Path(folder) / HF_METADATA).write_text(json.dumps(model_metadata(thresholds), indent=2) + "\n")


def file_sha256(path: Path) -> str:
    """Of a file, or of every file of a folder in name order: the model's identity in the feedback records."""
    digest = hashlib.sha256()
    for part in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def check_metadata(metadata: dict[str, str], source: str) -> None:
    """Raise ModelMismatchError, naming `source`, unless the metadata matches this app's format and vocabulary."""
    expected = model_metadata()
    if FORMAT_KEY not in metadata or VOCABULARY_KEY not in metadata:
        raise ModelMismatchError(f"{source} is not an rx model: it carries no step-format or herb-vocabulary "
                                 "metadata (export it with `python -m pipeline export`)")
    if metadata[FORMAT_KEY] not in map(str, READABLE_FORMATS):
        raise ModelMismatchError(f"{source} writes step format v{metadata[FORMAT_KEY]}; this app reads "
                                 + " and ".join(f"v{v}" for v in READABLE_FORMATS))
    if metadata[VOCABULARY_KEY] != expected[VOCABULARY_KEY]:
        raise ModelMismatchError(f"{source} was trained on another herb vocabulary than this app's "
                                 "(assets/vocab); retrain or use a matching app version")
