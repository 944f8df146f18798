"""Three non-learned recommenders: herb popularity, symptom–herb co-occurrence (methods.md §3), and kNN over
symptom sets. Each scores every vocabulary herb for a batch of symptom sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.records import Record
from rxapp.vocab import vocab


def symptom_matrix(symptom_sets: Sequence[Sequence[str]]) -> np.ndarray:
    """Binary (records × vocabulary symptoms) matrix."""
    ids = vocab().symptom_id
    x = np.zeros((len(symptom_sets), len(ids)))
    for row, symptoms in enumerate(symptom_sets):
        x[row, [ids[s] for s in symptoms]] = 1.0
    return x


def herb_matrix(records: Sequence[Record]) -> np.ndarray:
    """Binary (records × vocabulary herbs) matrix."""
    ids = vocab().herb_id
    y = np.zeros((len(records), len(ids)))
    for row, r in enumerate(records):
        y[row, [ids[h] for h in r.herbs]] = 1.0
    return y


class Popularity:
    """Every patient gets the herbs most often prescribed in training."""

    name = "popularity"

    def fit(self, train: Sequence[Record]) -> Popularity:
        self.counts = herb_matrix(train).sum(axis=0)
        return self

    def scores(self, symptom_sets: Sequence[Sequence[str]]) -> np.ndarray:
        return np.tile(self.counts, (len(symptom_sets), 1))


class CoOccurrence:
    """score(h) = Σ over the input symptoms s of count(s, h) / count(s), counted on the training records."""

    name = "cooccurrence"

    def fit(self, train: Sequence[Record]) -> CoOccurrence:
        x, y = symptom_matrix([r.symptoms for r in train]), herb_matrix(train)
        self.conditional = (x.T @ y) / np.maximum(x.sum(axis=0), 1.0)[:, None]  # symptoms × herbs
        return self

    def scores(self, symptom_sets: Sequence[Sequence[str]]) -> np.ndarray:
        return symptom_matrix(symptom_sets) @ self.conditional


class KNN:
    """Herbs of the k training records whose symptom sets are most similar (Jaccard), weighted by similarity."""

    name = "knn"

    def __init__(self, k: int = 50) -> None:
        self.k = k

    def fit(self, train: Sequence[Record]) -> KNN:
        self.x = symptom_matrix([r.symptoms for r in train])
        self.y = herb_matrix(train)
        return self

    def scores(self, symptom_sets: Sequence[Sequence[str]]) -> np.ndarray:
        return self.scores_by_k(symptom_sets, (self.k,))[self.k]

    def scores_by_k(self, symptom_sets: Sequence[Sequence[str]], ks: Sequence[int], chunk: int = 512
                    ) -> dict[int, np.ndarray]:
        """The scores with each number of neighbours in `ks`, from one similarity sort (so tuning k sorts once)."""
        out = {k: np.zeros((len(symptom_sets), self.y.shape[1])) for k in ks}
        queries = symptom_matrix(symptom_sets)
        sizes = self.x.sum(axis=1)
        for start in range(0, len(queries), chunk):
            q = queries[start : start + chunk]
            inter = q @ self.x.T
            sim = inter / np.maximum(q.sum(axis=1)[:, None] + sizes[None, :] - inter, 1.0)
            # ties at the k-th similarity are broken by training order (stable sort), so results are reproducible
            order = np.argsort(-sim, axis=1, kind="stable")
            for k in ks:
                top = order[:, :k]
                weights = np.zeros_like(sim)
                np.put_along_axis(weights, top, np.take_along_axis(sim, top, axis=1), axis=1)
                out[k][start : start + chunk] = weights @ self.y
        return out


BASELINES = {b.name: b for b in (Popularity, CoOccurrence, KNN)}


def rank(scores: np.ndarray) -> list[list[str]]:
    """Herb names from best to worst per row; equal scores keep vocabulary-id order."""
    herbs = vocab().herbs
    return [[herbs[i] for i in row] for row in np.argsort(-scores, axis=1, kind="stable")]
