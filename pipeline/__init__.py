"""rx training pipeline: data, knowledge, metrics, baselines and evaluation (and, later, the model stages)."""
