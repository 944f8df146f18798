"""rx at the bedside: vocabulary, herb knowledge, safety engine, the model backends and stepper, the feedback store and
the UI. It never imports the training pipeline."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "models" / "default" / "model-q4_k_m.gguf"  # the embedded model the app starts on
