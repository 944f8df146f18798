"""rx at the bedside: vocabulary, herb knowledge, safety engine, and (later) the model backends and the UI."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
