"""The model-file contract, in one place: what a model file declares so that the app can trust it (the step-format
version it was trained on and a digest of the herb vocabulary its herb tokens stand for), how to decode it (the
threshold of the greedy stop rule), where a Hugging Face folder keeps that (rx.json), and a model's identity (the
sha256 of its file or folder). The trainers and the exporter write these; the backends check and read them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rxapp.stepformat import FORMAT_VERSION, READABLE_FORMATS
from rxapp.vocab import vocab

FORMAT_KEY = "rx.step_format_version"
VOCABULARY_KEY = "rx.herb_vocabulary_sha256"
STOP_KEY = "rx.stop_threshold"  # the greedy stop rule's threshold, tuned on validation (rxapp.decoding.greedy_stop)
DEFAULT_STOP_THRESHOLD = 0.5
HF_METADATA = "rx.json"  # beside config.json: the metadata of a Hugging Face folder (a GGUF holds it as fields)


class ModelMismatchError(ValueError):
    """The model was trained for another step format or herb vocabulary than this app's."""


def vocabulary_digest() -> str:
    return hashlib.sha256("\n".join(vocab().herbs).encode("utf-8")).hexdigest()


def model_metadata(stop_threshold: float = DEFAULT_STOP_THRESHOLD) -> dict[str, str]:
    return {FORMAT_KEY: str(FORMAT_VERSION), VOCABULARY_KEY: vocabulary_digest(), STOP_KEY: f"{stop_threshold:g}"}


def format_version(metadata: dict[str, str]) -> int:
    """The step format a checked model was trained on."""
    return int(metadata[FORMAT_KEY])


def stop_threshold(metadata: dict[str, str]) -> float:
    """The model's tuned stop threshold; ½ (the median length) for a model that declares none."""
    return float(metadata.get(STOP_KEY, DEFAULT_STOP_THRESHOLD))


def saved_stop_threshold(folder: Path) -> float:
    """The stop threshold in a Hugging Face folder's rx.json (½ when the folder has none)."""
    saved = Path(folder) / HF_METADATA
    return stop_threshold(json.loads(saved.read_text()) if saved.exists() else {})


def write_model_metadata(folder: Path, threshold: float = DEFAULT_STOP_THRESHOLD) -> None:
    """Declare a Hugging Face folder an rx model of this app's format and vocabulary, with its stop threshold."""
    (Path(folder) / HF_METADATA).write_text(json.dumps(model_metadata(threshold), indent=2) + "\n")


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
