"""rx at the bedside: vocabulary, herb knowledge, safety engine, and (later) the model backends and the UI."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "models" / "default" / "model-q4_k_m.gguf"  # the embedded model the app starts on
