"""`pipeline prefs`: preference data for `pipeline dpo`, from two sources.

Implicit preferences (the paper's stage 2). For each training case, the current LLM writes `samples` sampled
responses and the small BART writes one herb list; each list is scored against the doctor's prescription by
Jaccard. The rule:
- rejected: the LLM's worst-scoring sample, as it wrote it;
- chosen herbs: BART's list when it scores above every sample ("BART wins"), else the LLM's best sample's list;
- the pair is kept only when chosen beats rejected by at least `margin`;
- the chosen response is rewritten by the knowledge teacher for the chosen herbs, in the full three-part format.

Clinician feedback (the app's SQLite file, or its JSONL export):
- pair: the clinician's final prescription (chosen, teacher-written) against the response the app showed
  (rejected), when the two herb lists differ and the model built it from nothing (a revision's response holds the
  practitioner's draft, which the model did not choose);
- unpaired (KTO): each accepted step (desirable) or rejected step (undesirable), an addition or a removal, as the
  shown response up to that step; a rating of 4–5 or 1–2 marks the whole shown response desirable or undesirable.

Every record keeps its provenance (the training case, or the session and feedback ids); duplicates are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import PipelineConfig
from pipeline.data.records import Record, load_split
from pipeline.data.teacher import TrainStats, teach
from pipeline.metrics import jaccard
from pipeline.runfolder import RunFolder, read_jsonl, write_json, write_jsonl
from rxapp.stepformat import parse_response, render_prompt


@dataclass
class ImplicitStats:
    cases: int = 0
    pairs: int = 0
    bart_wins: int = 0  # pairs whose chosen list is BART's
    too_close: int = 0  # cases skipped: chosen not better than rejected by the margin
    chosen_jaccard: float = 0.0  # means over the pairs kept
    rejected_jaccard: float = 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "bart_win_share": self.bart_wins / max(self.pairs, 1)}


def chosen_response(symptoms: Sequence[str], herbs: Sequence[str], stats: TrainStats, pregnant: bool = False
                    ) -> tuple[str, str]:
    """(prompt, response) that the knowledge teacher writes for these herbs."""
    example = teach(Record("chosen", tuple(symptoms), tuple(herbs)), stats)
    return render_prompt(symptoms, pregnant), example["response"]


def implicit_pairs(cases: Sequence[Record], samples: Sequence[Sequence[str]], bart_lists: Sequence[Sequence[str]],
                   stats: TrainStats, margin: float) -> tuple[list[dict], ImplicitStats]:
    """Pairs by the rule above; `samples[i]` holds the LLM's sampled response texts for `cases[i]`."""
    pairs, summary = [], ImplicitStats()
    for case, texts, bart in zip(cases, samples, bart_lists, strict=True):
        summary.cases += 1
        truth = set(case.herbs)
        scored = sorted(((jaccard(set(parse_response(t).herbs), truth), t) for t in texts), key=lambda s: s[0])
        (worst, rejected), (best, best_text) = scored[0], scored[-1]
        bart_score = jaccard(set(bart), truth)
        bart_won = bart_score > best
        chosen_herbs, chosen_score = (list(bart), bart_score) if bart_won else (parse_response(best_text).herbs, best)
        if not chosen_herbs or chosen_score - worst < margin:
            summary.too_close += 1
            continue
        prompt, chosen = chosen_response(case.symptoms, chosen_herbs, stats)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "implicit",
                      "case": case.id, "bart_wins": bart_won, "chosen_jaccard": chosen_score,
                      "rejected_jaccard": worst})
        summary.pairs += 1
        summary.bart_wins += bart_won
        summary.chosen_jaccard += chosen_score
        summary.rejected_jaccard += worst
    summary.chosen_jaccard /= max(summary.pairs, 1)
    summary.rejected_jaccard /= max(summary.pairs, 1)
    return pairs, summary


def read_feedback(path: Path) -> list[dict]:
    """Preference records from the app's database (`FeedbackStore.preference_records`) or its JSONL export."""
    if not path.exists():
        raise FileNotFoundError(f"no feedback file at {path}")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    from rxapp.feedback import FeedbackStore

    return list(FeedbackStore(path).preference_records())


def response_through_step(response: str, herb: str, action: str = "add") -> str:
    """The shown response cut after the step that added (or removed) `herb`."""
    end = 0
    for step in parse_response(response).steps:
        end = response.index(step.line, end) + len(step.line) + 1
        if step.herb == herb and step.action == action:
            return response[:end]
    raise ValueError(f"no step of this response {'adds' if action == 'add' else 'removes'} {herb}")


def feedback_preferences(records: Iterable[dict], stats: TrainStats) -> tuple[list[dict], list[dict]]:
    """(pairs, unpaired KTO examples) from clinician feedback, deduplicated, each with its session and feedback id."""
    pairs, unpaired, seen = [], [], set()

    def keep(item: dict, into: list[dict], key: tuple) -> None:
        if key not in seen:
            seen.add(key)
            into.append(item)

    for r in records:
        origin = {"source": "feedback", "session_id": r["session_id"], "feedback_id": r["feedback_id"]}
        prompt = render_prompt(r["symptoms"], r["pregnant"])
        shown = r["response"]
        final = list(dict.fromkeys(h for h in r["final_herbs"] if h))
        if final and final != r["model_herbs"] and not r.get("draft"):
            _, chosen = chosen_response(r["symptoms"], final, stats, r["pregnant"])
            keep({"prompt": prompt, "chosen": chosen, "rejected": shown, **origin}, pairs, (prompt, chosen, shown))
        judged = ((r["accepted"], "add", True), (r["rejected"], "add", False),
                  (r.get("accepted_removals", []), "remove", True), (r.get("rejected_removals", []), "remove", False))
        for herbs, action, label in judged:
            for herb in herbs:
                completion = response_through_step(shown, herb, action)
                keep({"prompt": prompt, "completion": completion, "label": label, "step_herb": herb,
                      "step_action": action, **origin}, unpaired, (prompt, completion, label))
        if r["rating"] in (1, 2, 4, 5):
            label = r["rating"] >= 4
            keep({"prompt": prompt, "completion": shown, "label": label, "rating": r["rating"], **origin}, unpaired,
                 (prompt, shown, label))
    return pairs, unpaired


def build_preferences(cfg: PipelineConfig, run_folder: RunFolder, model_dir: Path, small_dir: Path,
                      feedback: Path | None = None) -> dict:
    """Write RUN/prefs/pairs.jsonl (implicit pairs, then feedback pairs), unpaired.jsonl and stats.json; return
    the statistics."""
    from pipeline.model.bart import load_small, predict
    from pipeline.model.generation import decode
    from pipeline.model.llm import load_trained
    from rxapp.modelinfo import saved_stop_thresholds

    settings = cfg.prefs
    train = load_split("train", cfg.herb_lists)
    stats = TrainStats.from_records(train)
    cases = train[: settings.cases]
    model, tokenizer = load_trained(model_dir)
    torch.manual_seed(cfg.seed)
    repeated = [c.symptoms for c in cases for _ in range(settings.samples)]
    texts = [t for t, _ in decode(model, tokenizer, repeated, saved_stop_thresholds(model_dir),
                                  temperature=settings.temperature, desc="sample responses")]
    samples = [texts[i * settings.samples : (i + 1) * settings.samples] for i in range(len(cases))]
    small, small_tokenizer = load_small(small_dir)
    bart_lists, _ = predict(small, small_tokenizer, [c.symptoms for c in cases])
    pairs, implicit = implicit_pairs(cases, samples, bart_lists, stats, settings.margin)
    summary = {"implicit": implicit.as_dict(), "settings": settings.__dict__}
    unpaired: list[dict] = []
    if feedback is not None:
        records = read_feedback(feedback)
        feedback_pairs, unpaired = feedback_preferences(records, stats)
        pairs += feedback_pairs
        summary["feedback"] = {"file": str(feedback), "records": len(records), "pairs": len(feedback_pairs),
                               "unpaired": len(unpaired)}
    write_jsonl(pairs, run_folder.prefs / "pairs.jsonl")
    write_jsonl(unpaired, run_folder.prefs / "unpaired.jsonl")
    write_json(summary, run_folder.prefs / "stats.json")
    return summary
