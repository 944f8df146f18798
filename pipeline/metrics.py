"""Metrics over herb lists: P/R/F1@K (methods.md §3), Jaccard, incompatibility rates, names per drug, average
herbs; and how well a 方解 fits its prescription."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from rxapp.knowledge import herb_actions
from rxapp.safety import incompatible_pairs, safety_cost
from rxapp.vocab import LongestMatch, vocab

KS = (5, 10, 20)


def hits_at_k(ranking: Sequence[str], truth: set[str], k: int) -> int:
    return sum(h in truth for h in ranking[:k])


def ranking_metrics(rankings: Sequence[Sequence[str]], truths: Sequence[set[str]], ks: Sequence[int] = KS
                    ) -> dict[str, float]:
    """P@K = |top_K ∩ H| / K and R@K = |top_K ∩ H| / |H|, each averaged over prescriptions;
    F1@K = 2PR / (P + R) of those averages (as the published results on this split compute it)."""
    if len(rankings) != len(truths) or not truths:
        raise ValueError("need one ranking per true prescription, and at least one")
    out = {}
    for k in ks:
        hits = [hits_at_k(ranking, truth, k) for ranking, truth in zip(rankings, truths, strict=True)]
        p = sum(h / k for h in hits) / len(truths)
        r = sum(h / len(truth) for h, truth in zip(hits, truths, strict=True)) / len(truths)
        out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = p, r, (2 * p * r / (p + r) if p + r else 0.0)
    return out


def case_scores(rankings: Sequence[Sequence[str]], prescriptions: Sequence[Sequence[str]],
                truths: Sequence[set[str]]) -> dict[str, list[float]]:
    """Per case, what the compared metrics average: P@5, P@10 and R@10 of the ranking, Jaccard of the prescription."""
    hits5 = [hits_at_k(r, t, 5) for r, t in zip(rankings, truths, strict=True)]
    hits10 = [hits_at_k(r, t, 10) for r, t in zip(rankings, truths, strict=True)]
    return {"P@5": [h / 5 for h in hits5], "P@10": [h / 10 for h in hits10],
            "R@10": [h / len(t) for h, t in zip(hits10, truths, strict=True)],
            "Jaccard": [jaccard(set(p), t) for p, t in zip(prescriptions, truths, strict=True)]}


COMPARED = ("P@5", "F1@10", "Jaccard")  # the metrics whose differences get a paired bootstrap interval


def _from_cases(cases: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """A COMPARED metric from per-case scores, along the last axis (F1@10 as ranking_metrics computes it)."""
    if metric != "F1@10":
        return cases[metric].mean(-1)
    p, r = cases["P@10"].mean(-1), cases["R@10"].mean(-1)
    return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def paired_interval(a: dict[str, list[float]], b: dict[str, list[float]], metric: str, resamples: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """95 % paired bootstrap interval of metric(a) − metric(b) over the same cases (case_scores of each), resampling
    the cases with replacement `resamples` times (seeded)."""
    n, m = len(next(iter(a.values()))), len(next(iter(b.values())))
    if m != n:
        raise ValueError(f"paired scores need the same cases: {n} against {m}")
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    gaps = (_from_cases({k: np.asarray(v)[picks] for k, v in a.items()}, metric)
            - _from_cases({k: np.asarray(v)[picks] for k, v in b.items()}, metric))
    low, high = np.percentile(gaps, [2.5, 97.5])
    return float(low), float(high)


def jaccard(predicted: set[str], truth: set[str]) -> float:
    union = predicted | truth
    return len(predicted & truth) / len(union) if union else 1.0


def _pair_rate(pairs: int, n: int) -> float:
    return pairs / (n * (n - 1) / 2) if n > 1 else 0.0


def pairwise_incompatibility(herbs: Sequence[str]) -> float:
    """FLAME's DDI rate for one list: incompatible pairs / all pairs (0 for fewer than two herbs)."""
    return _pair_rate(incompatible_pairs(list(herbs)), len(herbs))


def names_a_drug_twice(herbs: Sequence[str]) -> bool:
    """Whether a list holds one drug under two names (麦门冬 and 麦冬) or an artefact token beside its longer name
    (附子 with 白附子): exactly when cleaning it (rxapp.vocab.Vocab.clean_herbs) makes it shorter."""
    return len(vocab().clean_herbs(herbs)) < len(set(herbs))


@cache
def _herbs_actions_symptoms() -> LongestMatch:
    v = vocab()
    return LongestMatch({*v.herbs, *v.symptoms, *(a for h in v.herbs for a in herb_actions(h))})


def herbs_named(text: str) -> list[str]:
    """The vocabulary herbs a text names, read left to right as herbs, actions and symptoms, the longest term at
    each place: 白附子, not 附子; 醒神益智 is an action, not the herb 益智."""
    herbs = vocab().herb_id
    return [term for term in _herbs_actions_symptoms().pieces(text) if term in herbs]


def summary_metrics(summaries: Sequence[str], prescriptions: Sequence[Sequence[str]]) -> dict[str, float]:
    """How well each 方解 fits its prescription, averaged: summary_coverage, the share of prescribed herbs it names;
    summary_foreign, the share of 方解 naming a herb not prescribed; summary_repeats, the share repeating a clause
    (clauses end at ；or 。)."""
    coverage, foreign, repeats = [], [], []
    for summary, herbs in zip(summaries, prescriptions, strict=True):
        named = set(herbs_named(summary))
        coverage.append(len(named & set(herbs)) / len(herbs) if herbs else 1.0)
        foreign.append(bool(named - set(herbs)))
        clauses = [c.strip() for c in summary.replace("。", "；").split("；") if c.strip()]
        repeats.append(len(set(clauses)) < len(clauses))
    n = len(summaries)
    return {"summary_coverage": sum(coverage) / n, "summary_foreign": sum(foreign) / n,
            "summary_repeats": sum(repeats) / n}


def prescription_metrics(prescriptions: Sequence[Sequence[str]], truths: Sequence[set[str]]) -> dict[str, float]:
    """Set metrics of the prescriptions themselves (not the rankings), averaged over prescriptions.

    incompat_rate: share of prescriptions holding at least one 十八反/十九畏 pair;
    pairwise_incompat: FLAME's pairwise rate, averaged; safety_cost: the app's safety cost (rxapp.safety.safety_cost,
    for a patient not known to be pregnant), averaged; two_names: share of prescriptions naming a drug twice
    (names_a_drug_twice); avg_herbs: mean prescription length.
    """
    n = len(prescriptions)
    if n != len(truths) or not n:
        raise ValueError("need one prescription per true prescription, and at least one")
    pair_counts = [incompatible_pairs(list(p)) for p in prescriptions]
    return {
        "Jaccard": sum(jaccard(set(p), t) for p, t in zip(prescriptions, truths, strict=True)) / n,
        "incompat_rate": sum(c > 0 for c in pair_counts) / n,
        "pairwise_incompat": sum(_pair_rate(c, len(p)) for c, p in zip(pair_counts, prescriptions, strict=True)) / n,
        "safety_cost": sum(safety_cost(p) for p in prescriptions) / n,
        "two_names": sum(map(names_a_drug_twice, prescriptions)) / n,
        "avg_herbs": sum(len(p) for p in prescriptions) / n,
    }
