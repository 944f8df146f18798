"""The one evaluator: every recommender (the baselines, the small BART, a trained model folder, or any model the app
loads, through the app's own stepper) is scored by `evaluate` on the same split with the same metrics, and shown
beside the published results on this split. Each split is scored on its herb lists as published (raw, comparable
with the published results) and cleaned of their substring artefacts (clean: what a practitioner would count).
`evaluate_revision` scores a model's revisions of seeded corrupted drafts beside the co-occurrence revision."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import HERB_LISTS
from pipeline.data.baselines import BASELINES, KNN, CoOccurrence, rank
from pipeline.data.records import Record, load_split
from pipeline.data.revision import Corruption, corrupt, plausible
from pipeline.data.teacher import claim_is_grounded, step_is_relevant, training_stats
from pipeline.metrics import (
    COMPARED,
    case_scores,
    jaccard,
    names_a_drug_twice,
    paired_interval,
    prescription_metrics,
    ranking_metrics,
    summary_metrics,
)
from rxapp.backends import Backend
from rxapp.modelinfo import saved_stop_thresholds
from rxapp.ranking import rank_herbs
from rxapp.safety import Patient
from rxapp.stepformat import Response, explanation_claims, parse_response
from rxapp.vocab import vocab

# Published results on this exact split (TCMRGCL paper, 2025; methods.md §3). Rankings only, no set metrics.
PUBLISHED = {
    "SMGCN": {"P@5": .2878, "P@10": .2287, "P@20": .1664, "R@5": .2070, "R@10": .3229, "R@20": .4631,
              "F1@5": .2409, "F1@10": .2677, "F1@20": .2449},
    "KDHR": {"P@5": .2698, "P@10": .2103, "P@20": .1537, "R@5": .1932, "R@10": .2967, "R@20": .4299,
             "F1@5": .2251, "F1@10": .2461, "F1@20": .2264},
    "PresRecST": {"P@5": .2807, "P@10": .2248, "P@20": .1656, "R@5": .1988, "R@10": .3173, "R@20": .4618,
                  "F1@5": .2327, "F1@10": .2632, "F1@20": .2438},
    "TCMRGCL": {"P@5": .2884, "P@10": .2310, "P@20": .1689, "R@5": .2082, "R@10": .3266, "R@20": .4707,
                "F1@5": .2418, "F1@10": .2706, "F1@20": .2486},
}
COLUMNS = ("P@5", "P@10", "P@20", "R@5", "R@10", "R@20", "F1@5", "F1@10", "F1@20", "Jaccard", "incompat_rate",
           "pairwise_incompat", "safety_cost", "two_names", "avg_herbs", "grounding", "format_validity",
           "step_relevance", "first_symptom", "summary_coverage", "summary_foreign", "summary_repeats")
KNN_KS = (5, 10, 20, 50, 100, 200)
MAX_PRESCRIPTION = 20


@dataclass
class Prediction:
    ranking: list[str]  # every herb the model can rank, best first (at least 20)
    prescription: list[str]  # the herbs the model would actually prescribe
    response: Response | None = None  # the parsed response, for models that write one


Predictor = Callable[[Sequence[Record]], list[Prediction]]


def cleaned(prediction: Prediction) -> Prediction:
    """A prediction named as the cleaned lists name herbs: its ranking by each drug's one name (its best place
    kept), its prescription cleaned (rxapp.vocab.Vocab.clean_herbs)."""
    v = vocab()
    return Prediction(list(dict.fromkeys(map(v.identity, prediction.ranking))), v.clean_herbs(prediction.prescription),
                      prediction.response)


def evaluate(predict: Predictor, records: Sequence[Record], lists: str = "raw") -> dict[str, float]:
    """Ranking metrics of the predictions' rankings and set metrics of their prescriptions, against `records`
    holding `lists` herb lists."""
    return score(predict(records), records, lists)


def score(predictions: Sequence[Prediction], records: Sequence[Record], lists: str = "raw") -> dict[str, float]:
    """`evaluate` for predictions already made; on clean lists they are scored cleaned, except `two_names`, which
    counts the prescriptions as written (cleaning would make it 0)."""
    short = [i for i, p in enumerate(predictions) if len(p.ranking) < max(20, len(p.prescription))]
    if short:
        raise ValueError(f"{len(short)} rankings hold fewer than 20 herbs (first: {records[short[0]].id})")
    written = predictions
    if lists == "clean":
        predictions = [cleaned(p) for p in predictions]
    truths = [set(r.herbs) for r in records]
    metrics = {
        **ranking_metrics([p.ranking for p in predictions], truths),
        **prescription_metrics([p.prescription for p in predictions], truths),
        "cases": case_scores([p.ranking for p in predictions], [p.prescription for p in predictions], truths),
    }
    if lists == "clean":
        metrics["two_names"] = sum(names_a_drug_twice(p.prescription) for p in written) / len(written)
    responses = [p.response for p in predictions if p.response is not None]
    if responses:
        metrics |= explanation_metrics(predictions, records)
        metrics["format_validity"] = sum(r.well_formed for r in responses) / len(responses)
        metrics |= summary_metrics([r.summary for r in responses], [r.herbs for r in responses])
    return metrics


def explanation_metrics(predictions: Sequence[Prediction], records: Sequence[Record]) -> dict[str, float]:
    """Of the steps' explanations: grounding, the share of claims that check out (claim_is_grounded);
    step_relevance, the share of steps whose reason is relevant (step_is_relevant); first_symptom, for patients with
    two or more symptoms, the share of steps citing a symptom that cite the first one (a teacher that always cites
    the first symptom shows 1)."""
    stats = training_stats()
    steps = [(step, r) for p, r in zip(predictions, records, strict=True) if p.response is not None
             for step in p.response.steps if step.valid and step.action == "add"]
    claims = [claim_is_grounded(claim, step.herb, r.symptoms, stats)
              for step, r in steps for claim in explanation_claims(step.explanation)]
    relevant = [step_is_relevant(step.herb, step.explanation, r.symptoms) for step, r in steps]
    cited = [claims_of[0].value == r.symptoms[0] for step, r in steps if len(r.symptoms) >= 2
             if (claims_of := [c for c in explanation_claims(step.explanation) if c.kind != "effect"])]
    return {"grounding": share(claims), "step_relevance": share(relevant), "first_symptom": share(cited)}


def share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def baseline_predictor(name: str, train: Sequence[Record], size: int, k: int | None = None) -> Predictor:
    """A fitted baseline whose prescription is its top `size` herbs."""
    model = (KNN(k) if name == "knn" else BASELINES[name]()).fit(train)

    def predict(records: Sequence[Record]) -> list[Prediction]:
        rankings = rank(model.scores([r.symptoms for r in records]))
        return [Prediction(r, r[:size]) for r in rankings]

    return predict


def tune_baseline(name: str, lists: str = "raw") -> dict[str, int]:
    """Settings chosen on the validation split (fit on train without it): kNN's k by F1@10, then the prescription
    size by Jaccard."""
    train, validation = load_split("train", lists), load_split("validation", lists)
    truths = [set(r.herbs) for r in validation]
    settings: dict[str, int] = {}
    if name == "knn":
        by_k = KNN().fit(train).scores_by_k([r.symptoms for r in validation], KNN_KS)
        f1_at_10 = {k: ranking_metrics(rank(scores), truths, ks=(10,))["F1@10"] for k, scores in by_k.items()}
        settings["k"] = max(KNN_KS, key=f1_at_10.get)
        rankings = rank(by_k[settings["k"]])
    else:
        rankings = [p.ranking for p in baseline_predictor(name, train, 1)(validation)]

    def mean_jaccard(size: int) -> float:
        return sum(jaccard(set(r[:size]), t) for r, t in zip(rankings, truths, strict=True)) / len(truths)
    settings["size"] = max(range(1, MAX_PRESCRIPTION + 1), key=mean_jaccard)
    return settings


def evaluate_baseline(name: str, split: str, limit: int | None = None, lists: str = "raw") -> dict:
    """Tune on validation, fit on the published train file (train without validation when scoring validation
    itself), and evaluate on `split` (its first `limit` records, if given), all with `lists` herb lists."""
    settings = tune_baseline(name, lists)
    train = load_split("train" if split == "validation" else "train_full", lists)
    records = load_split(split, lists)[:limit]
    metrics = evaluate(baseline_predictor(name, train, settings["size"], settings.get("k")), records, lists)
    return {"model": name, "split": split, "lists": lists, "n": len(records), **metrics, "settings": settings}


def model_predictor(path: Path, batch_size: int = 64) -> Predictor:
    """A trained model folder: greedy responses (stopping by the model's own rule), ranked by the shared rule
    (every herb by its first-step score)."""
    from pipeline.model.generation import generate_responses
    from pipeline.model.llm import load_trained
    from pipeline.model.scoring import first_herb_logprobs

    model, tokenizer = load_trained(path)
    stop = saved_stop_thresholds(path)

    def predict(records: Sequence[Record]) -> list[Prediction]:
        symptom_sets = [r.symptoms for r in records]
        texts = generate_responses(model, tokenizer, symptom_sets, stop, batch_size)
        scores = first_herb_logprobs(model, tokenizer, symptom_sets)
        parsed = [parse_response(t) for t in texts]
        return [Prediction(rank_herbs(s), p.herbs, p) for p, s in zip(parsed, scores, strict=True)]

    return predict


def small_predictor(path: Path) -> Predictor:
    """The small BART (`pipeline small`): its greedy herb list, ranked by the shared rule."""
    from pipeline.model.bart import load_small, rankings

    model, tokenizer = load_small(path)

    def predict(records: Sequence[Record]) -> list[Prediction]:
        lists, ranked = rankings(model, tokenizer, [r.symptoms for r in records])
        return [Prediction(r, herbs) for herbs, r in zip(lists, ranked, strict=True)]

    return predict


def stepper_predictor(model: Backend, name: str, screen_weight: float = 0.0) -> Predictor:
    """A model the app has loaded, run through the app's own stepper (greedy, safety screen `screen_weight`): what
    a practitioner would see, for comparing exports and precisions."""
    from rxapp.stepper import Recommendation, StepperConfig, recommend

    cfg = StepperConfig(screen_weight=screen_weight, forbid_severe=screen_weight > 0)

    def predict(records: Sequence[Record]) -> list[Prediction]:
        out = []
        for r in tqdm(records, desc=f"stepper {name}", unit="case", disable=None):
            final = next(e for e in recommend(model, r.symptoms, Patient(), cfg) if isinstance(e, Recommendation))
            out.append(Prediction(final.ranking, final.herbs, parse_response(final.text)))
        return out

    return predict


def evaluate_model(path: Path, split: str, limit: int | None = None, stepper: str | None = None,
                   screen_weight: float = 0.0, lists: Sequence[str] = HERB_LISTS) -> list[dict]:
    """A trained model on `split`, one row per herb-list view in `lists` from one set of predictions: batched
    generation for a training folder, or the app's stepper on the `stepper` backend ("llama" or "hf"; a .gguf file
    always takes this path)."""
    from pipeline.model.bart import is_small_model
    from rxapp.backends import load_backend

    records = load_split(split)[:limit]
    if path.suffix == ".gguf":
        stepper = stepper or "llama"
    if is_small_model(path):
        predictions = small_predictor(path)(records)
    elif stepper:
        with load_backend(path, stepper) as backend:
            predictions = stepper_predictor(backend, path.name, screen_weight)(records)
    else:
        predictions = model_predictor(path)(records)
    decoding = {"decoding": f"stepper:{stepper}", "screen_weight": screen_weight} if stepper else {}
    return [{"model": str(path), "split": split, "lists": view, "n": len(records),
             **score(predictions, load_split(split, view)[:limit], view), **decoding} for view in lists]


def difference(row: dict, base: dict) -> dict:
    """row − base on every metric both have, with a paired bootstrap interval (`M CI`: [low, high]) for each
    COMPARED metric when both rows kept their per-case scores."""
    out = {"model": f"Δ {row['model']} − {base['model']}", "split": row["split"], "lists": row["lists"],
           **{k: v - base[k] for k, v in row.items() if isinstance(v, float) and isinstance(base.get(k), float)}}
    if "cases" in row and "cases" in base:
        out |= {f"{m} CI": list(paired_interval(row["cases"], base["cases"], m)) for m in COMPARED}
    return out


def with_differences(rows: list[dict], baselines: Sequence[dict] = (), compared: str | None = None) -> list[dict]:
    """Models' rows grouped by herb lists, each group followed by each later model's metrics minus the first's on
    the same lists (e.g. DPO against the SFT model it started from), then the `compared` model's (default: the
    first) minus each baseline's on those lists. "Beats" means an interval that excludes zero."""
    out = []
    for view in dict.fromkeys(r["lists"] for r in rows):
        first, *later = same = [r for r in rows if r["lists"] == view]
        chosen = next(r for r in same if r["model"] == compared) if compared else first
        out += same + [difference(r, first) for r in later]
        out += [difference(chosen, b) for b in baselines if b["lists"] == view]
    return out


def without_cases(rows: Sequence[dict]) -> list[dict]:
    """The rows as written to JSON: the per-case scores stay in memory."""
    return [{k: v for k, v in r.items() if k != "cases"} for r in rows]


def reference_row(split: str, limit: int | None = None, lists: str = "raw") -> dict:
    """The doctors' own prescriptions: the incompatibility rate and size that real practice shows."""
    records = load_split(split, lists)[:limit]
    truths = [set(r.herbs) for r in records]
    return {"model": "doctors (ground truth)", "split": split, "lists": lists, "n": len(records),
            **prescription_metrics([list(r.herbs) for r in records], truths)}


def format_table(rows: Sequence[dict], split: str, lists: str = "raw") -> str:
    """A plain-text table of the rows on `lists` herb lists, with the published results on the raw test split; each
    difference row is followed by its intervals."""
    shown = [r for r in rows if r.get("lists", "raw") == lists]
    if split == "test" and lists == "raw":
        shown += [{"model": f"{name} (published)", **m} for name, m in PUBLISHED.items()]
    width = max(len(r["model"]) for r in shown) + 2
    header = "model".ljust(width) + "".join(c.replace("_", " ")[:10].rjust(11) for c in COLUMNS)
    lines = [f"{split} split, {lists} herb lists", header, "-" * len(header)]
    for r in shown:
        cells = "".join((f"{r[c]:.4f}" if c in r else "—").rjust(11) for c in COLUMNS)
        lines.append(r["model"].ljust(width) + cells)
        if f"{COMPARED[0]} CI" in r:
            lines.append(" " * width + "  95 % intervals: " + ", ".join(
                f"{m} [{r[f'{m} CI'][0]:+.4f}, {r[f'{m} CI'][1]:+.4f}]" for m in COMPARED))
    return "\n".join(lines)


def format_tables(rows: Sequence[dict], split: str, views: Sequence[str] = HERB_LISTS) -> str:
    """format_table for each herb-list view, one after the other."""
    return "\n\n".join(format_table(rows, split, view) for view in views)


REVISION_CHANGES = (2, 2)  # each test draft: 2 of the doctors' herbs dropped, 2 wrong herbs added
REVISION_SEED = 0


@dataclass
class RevisionCase:
    record: Record  # on clean herb lists: the revision writes one name per drug
    corruption: Corruption


def revision_cases(split: str, limit: int | None = None, wrong: str = "plausible") -> list[RevisionCase]:
    """The split's records, each with its seeded corrupted draft (REVISION_CHANGES), the wrong herbs drawn as
    `wrong` says (pipeline.data.revision.WRONG_HERBS)."""
    records = load_split(split, "clean")[:limit]
    rng = random.Random(REVISION_SEED)
    if wrong == "plausible":
        candidates = plausible(training_stats(), [r.symptoms for r in records])
    else:  # the lists of two other records, never the case's own (the second where the first has too few herbs)
        others = [[(i + rng.randrange(1, len(records))) % len(records) for _ in range(2)] for i in range(len(records))]
        candidates = [[h for j in pair for h in records[j].herbs] for pair in others]
    return [RevisionCase(r, corrupt(r.herbs, c, *REVISION_CHANGES, rng))
            for r, c in zip(records, candidates, strict=True)]


def cooccurrence_scores(cases: Sequence[RevisionCase]) -> np.ndarray:
    return CoOccurrence().fit(load_split("train", "clean")).scores([c.record.symptoms for c in cases])


def lowest_scored_first(draft: Sequence[str], scores: np.ndarray) -> list[str]:
    """The draft's herbs, the one co-occurrence (`scores`, one case's row) scores lowest for the symptoms first."""
    index = vocab().herb_id
    return sorted(draft, key=lambda h: scores[index[h]])


def cooccurrence_revision(cases: Sequence[RevisionCase], scores: np.ndarray, removals: Sequence[int],
                          additions: Sequence[int]) -> list[list[str]]:
    """The statistics' revision, as many steps as the model took in each case: remove the draft's herbs that
    co-occurrence (`scores`, a row per case) scores lowest for the symptoms, then add the best-scoring herbs not in
    the draft."""
    v, out = vocab(), []
    for case, row, ranked, k, m in zip(cases, scores, rank(scores), removals, additions, strict=True):
        draft = case.corruption.draft
        kept = lowest_scored_first(draft, row)[k:]
        out.append(kept + [h for h in ranked if h not in draft and v.identity(h) == h][:m])
    return out


def evaluate_revision(path: Path, split: str, limit: int | None = None, stepper: str | None = None,
                      wrong: str = "plausible") -> dict:
    """A model revising each case's corrupted draft through the app's stepper (greedy, screen off, no safety
    removals: the model's own revision): Jaccard of the draft, of the model's revision and of the co-occurrence
    revision against the doctors' list, with paired intervals; removal precision (removed herbs that were wrong; a
    random removal scores 2/|draft|); and the share of dropped herbs the model restored. Drafts too long for the
    model's context are left out (`too_long`)."""
    from rxapp.backends import load_backend
    from rxapp.draft import Draft, DraftInputError
    from rxapp.stepper import Recommendation, StepperConfig, recommend

    cases, finals, too_long = revision_cases(split, limit, wrong), [], 0
    with load_backend(path, stepper or ("llama" if path.suffix == ".gguf" else "hf")) as backend:
        for case in tqdm(cases, desc=f"revise {path.name}", unit="case", disable=None):
            events = recommend(backend, case.record.symptoms, Patient(),
                               StepperConfig(screen_weight=0.0, remove_severe=False),
                               Draft(case.corruption.draft, ()))
            try:
                finals.append(next(e for e in events if isinstance(e, Recommendation)))
            except DraftInputError:  # a draft whose explained lines outgrow the model's context is left out
                finals.append(None)
                too_long += 1
    cases = [c for c, f in zip(cases, finals, strict=True) if f is not None]
    finals = [f for f in finals if f is not None]
    removed = [[s.herb for s in f.steps if s.action == "remove"] for f in finals]
    added = [[s.herb for s in f.steps if s.action == "add"] for f in finals]
    scores = cooccurrence_scores(cases)
    baseline = cooccurrence_revision(cases, scores, [len(r) for r in removed], [len(a) for a in added])
    lowest = [lowest_scored_first(c.corruption.draft, row)[0] for c, row in zip(cases, scores, strict=True)]
    truths = [set(c.record.herbs) for c in cases]
    lists = {"draft": [c.corruption.draft for c in cases], "model": [f.herbs for f in finals],
             "cooccurrence": baseline}
    jaccards = {name: {"Jaccard": [jaccard(set(h), t) for h, t in zip(herbs, truths, strict=True)]}
                for name, herbs in lists.items()}
    wrong_removed = sum(len(set(r) & set(c.corruption.wrong)) for r, c in zip(removed, cases, strict=True))
    dropped = sum(len(c.corruption.dropped) for c in cases)
    return {
        "model": str(path), "split": split, "n": len(cases), "too_long": too_long,
        "changes": {"dropped": REVISION_CHANGES[0], "added": REVISION_CHANGES[1], "wrong": wrong},
        **{f"Jaccard {name}": sum(s["Jaccard"]) / len(cases) for name, s in jaccards.items()},
        **{f"Jaccard model − {name} CI": list(paired_interval(jaccards["model"], jaccards[name], "Jaccard"))
           for name in ("draft", "cooccurrence")},
        "unrevised": sum(f.unrevised for f in finals) / len(cases),  # drafts the stop rule kept as they were
        "removals": sum(map(len, removed)) / len(cases), "additions": sum(map(len, added)) / len(cases),
        "removal_precision": wrong_removed / max(1, sum(map(len, removed))),
        "random_removal_precision": sum(len(c.corruption.wrong) / len(c.corruption.draft) for c in cases) / len(cases),
        # one removal per draft, of the herb the statistics score lowest for the symptoms
        "cooccurrence_removal_precision": sum(h in c.corruption.wrong for h, c in zip(lowest, cases, strict=True))
        / len(cases),
        "restored": sum(len(set(a) & set(c.corruption.dropped)) for a, c in zip(added, cases, strict=True))
        / max(1, dropped),
    }


def format_revision(row: dict) -> str:
    """The revision table: the three lists' Jaccard, the model's differences with their intervals, its steps."""
    lines = [f"{row['split']} split, {row['n']} drafts ({row['changes']['dropped']} of the doctors' herbs dropped, "
             f"{row['changes']['added']} {row['changes']['wrong']} wrong herbs added; clean herb "
             "lists)",
             f"{'list':<28}{'Jaccard':>9}"]
    for name, label in (("draft", "draft (the start)"), ("cooccurrence", "co-occurrence revision"),
                        ("model", "model revision")):
        lines.append(f"{label:<28}{row[f'Jaccard {name}']:>9.4f}")
    for name in ("draft", "cooccurrence"):
        low, high = row[f"Jaccard model − {name} CI"]
        gap = row["Jaccard model"] - row[f"Jaccard {name}"]
        lines.append(f"model − {name:<20}{gap:>+9.4f}  95 % interval [{low:+.4f}, {high:+.4f}]")
    lines.append(f"no change proposed to {row['unrevised']:.1%} of the drafts; "
                 f"removals {row['removals']:.2f} and additions {row['additions']:.2f} per draft; removal precision "
                 f"{row['removal_precision']:.3f} (a random removal: {row['random_removal_precision']:.3f}; the "
                 f"herb co-occurrence scores lowest: {row['cooccurrence_removal_precision']:.3f}); "
                 f"dropped herbs restored {row['restored']:.3f}")
    return "\n".join(lines)
