"""How one generated prescription becomes a ranked list of herbs; the evaluator and the app use this same rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rxapp.vocab import vocab


def rank_herbs(generated: Sequence[str], first_step_scores: Sequence[float]) -> list[str]:
    """The generated herbs first, then every other vocabulary herb; each part ordered by the model's first-step
    score (one score per vocabulary herb, in vocabulary order; ties keep step order, then vocabulary order).

    Ordering the generated herbs by their first-step score rather than by step gave +1 point P@5 on validation:
    the first step sees every herb as a candidate, later steps only what is left."""
    herbs = vocab().herbs
    if len(first_step_scores) != len(herbs):
        raise ValueError(f"need one score per vocabulary herb ({len(herbs)}), got {len(first_step_scores)}")
    index = vocab().herb_id
    chosen = sorted(dict.fromkeys(generated), key=lambda h: -first_step_scores[index[h]])
    taken = set(chosen)
    rest = [herbs[i] for i in np.argsort(-np.asarray(first_step_scores), kind="stable") if herbs[i] not in taken]
    return chosen + rest
