"""The stepper: a prescription built one herb at a time by any backend, each step yielded as soon as it is made.

The 症状分析 restates the recognised symptoms, so it is given. Then, for each step, the next herb is drawn from the
vocabulary herbs not yet prescribed, after the safety engine has screened every candidate against the current list
and the patient: each 十八反/十九畏 pair, pregnancy rule or interaction with the patient's Western drugs that an
addition would break costs its logit the screen weight (twice when severe), and a severe one (a major interaction
among them) forbids it outright unless `forbid_severe` is off. One drug
has one name: the probabilities of a drug's other names (麦门冬, 杏) go to its one name (麦冬, 杏仁), and a herb
that would name a drug of the list again (附子 beside 白附子) is never added. The model then writes the step's
explanation (its 主治/用于 claims can only name this patient's symptoms) and decides whether to add another herb or
stop. The 方解 is composed from the steps' claims (rxapp.stepformat.compose_summary), not decoded: it names every
herb once and no other, on every backend. The classical formula the prescription resembles, if any, is named
beside it (rxapp.formulas), with the herbs added and removed against it.

Revising a draft (rxapp.draft: a practitioner's herbs or a classical formula): the draft's herbs are written as the
first 加 steps, each explained by the model as it explains its own, and checked at once (the `Draft` event comes
first). A severe conflict the draft holds (a 十八反 pair, a herb forbidden in pregnancy, an aristolochic-acid herb,
a major interaction with the patient's drugs) is then proposed for removal (减, `safety_removals`), as the screen
never adds one. Then at each step boundary the model adds (加) a herb not in the list, removes (减) one of the list,
or stops; a removed herb is never added again. Only models trained on drafts revise them (REVISION_FORMAT).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from rxapp.backends import Backend
from rxapp.decoding import ClaimRule, claim_rule, greedy_stop, open_chance, stop_probability
from rxapp.draft import Draft, DraftInputError
from rxapp.formulas import Resemblance, resembled
from rxapp.knowledge import HerbFacts, associated, knowledge
from rxapp.modelinfo import ModelMismatchError
from rxapp.ranking import rank_herbs
from rxapp.safety import Patient, SafetyWarning, check_safety_weight, removal_reason, rules, warnings_cost
from rxapp.stepformat import (
    ADD,
    DRAFT,
    EXPLANATION_MARK,
    REMOVE,
    REVISION_FORMAT,
    SUMMARY_HEADER,
    compose_summary,
    render_analysis,
    render_prompt,
    revised,
    steps_prefix,
)
from rxapp.vocab import vocab


@dataclass
class StepperConfig:
    screen_weight: float = 4.0  # logit cost per broken rule (severe: twice); 0 leaves the model's choice untouched
    forbid_severe: bool = True  # severe additions are never made, whatever the screen weight
    remove_severe: bool = True  # revising: the draft's severe conflicts are proposed for removal (safety_removals)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    max_herbs: int = 30
    max_explanation_tokens: int = 48

    def __post_init__(self) -> None:
        check_safety_weight(self.screen_weight, "screen_weight")


STEP_WORDS = {"draft": DRAFT, "add": ADD, "remove": REMOVE}  # how each kind of step is named to the practitioner
UNREVISED = "模型未对初稿提出加减 The model proposes no change to the draft."  # a revision that stopped at once
UNREVISED_AFTER_SAFETY = "模型未再提出加减 The model proposes no change beyond the safety check's."
SAFETY_NOTE = "（安全核查提出）"  # how a removal the safety check proposed is marked, beside its 减


def unrevised_note(safety_removed: bool) -> str:
    """What the page and the CLI say of a revision in which the model made no move of its own."""
    return UNREVISED_AFTER_SAFETY if safety_removed else UNREVISED


@dataclass
class Step:
    index: int  # 1-based
    action: str  # "draft" (a herb of the draft, explained), "add" or "remove"
    herb: str  # the vocabulary herb (what the model wrote, what feedback and training keep)
    name: str  # how it is shown: its drug's one name, an inferred identity marked as such (Vocab.display_name)
    explanation: str
    facts: HerbFacts | None
    warnings: list[SafetyWarning]  # adding: what it brings to the list before (all rules); removing: what it ends
    probability: float  # the model's probability of this herb here (after the safety penalties when it adds)
    elapsed_s: float  # since the recommendation started
    still_open: float | None = None  # when the greedy stop rule went on here, its open_chance; else None
    safety: bool = False  # a removal the safety check proposed (a severe conflict of the draft), not the model's move


@dataclass
class DraftCheck:
    """The draft a revision starts from, checked before the model's first step."""

    draft: Draft
    warnings: list[SafetyWarning]  # the draft's own, with its names that are no vocabulary herb, most severe first


@dataclass
class Recommendation:
    symptoms: list[str]
    patient: Patient  # pregnancy and the Western drugs the screen and the warnings took into account
    analysis: str
    draft: Draft | None = None  # the list the revision started from; None when built from nothing
    draft_warnings: list[SafetyWarning] = field(default_factory=list)  # the draft's own check (DraftCheck)
    steps: list[Step] = field(default_factory=list)
    summary: str = ""
    formula: Resemblance | None = None  # the classical formula the prescription resembles (rxapp.formulas)
    warnings: list[SafetyWarning] = field(default_factory=list)  # the whole prescription, most severe first
    ranking: list[str] = field(default_factory=list)  # every herb, best first (rxapp.ranking)
    text: str = ""  # the whole response: the steps as the model wrote them, then the composed 方解
    prompt_ids: list[int] = field(default_factory=list)  # the prompt and the given 症状分析
    response_ids: list[int] = field(default_factory=list)  # every token after them

    @property
    def tokens(self) -> int:
        return len(self.response_ids)

    @property
    def unrevised(self) -> bool:
        """A revision whose stop rule kept the draft as it was: no 加 and no 减 of the model's own (the safety check's
        removals aside)."""
        return self.draft is not None and all(s.action == "draft" or s.safety for s in self.steps)

    @property
    def herbs(self) -> list[str]:
        """The prescription the steps leave, in the order added."""
        return [h for h, _ in self.kept()]

    def kept(self) -> list[tuple[str, str]]:
        """(herb, explanation) of each herb the steps leave."""
        return revised([("remove" if s.action == "remove" else "add", s.herb, s.explanation) for s in self.steps])


def warm_up() -> None:
    """Load what the first recommendation would otherwise load: vocabulary, knowledge and the action–symptom
    associations of the claim rule, the safety screens."""
    knowledge()
    associated(vocab().herbs[0])
    rules().addition_risks(vocab().herbs[:1], Patient(pregnant=True))


def choose(logits: np.ndarray, allowed: Sequence[int] | None, cfg: StepperConfig, rng: np.random.Generator,
           cost: np.ndarray | None = None) -> tuple[int, float]:
    """One token among `allowed` (None: any token), after subtracting `cost`, greedy or by temperature and top-p;
    and its probability among them."""
    z = logits if allowed is None else logits[np.asarray(allowed)]
    if cost is not None:
        z = z - cost
    if cfg.temperature <= 0:
        pick = int(z.argmax())
        probability = 1.0 / np.exp(z - z[pick], dtype=np.float64).sum()
    else:
        p = np.exp((z - z.max()) / cfg.temperature, dtype=np.float64)
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), cfg.top_p) + 1)]
        pick = int(rng.choice(keep, p=p[keep] / p[keep].sum()))
        probability = p[pick]
    return (pick if allowed is None else allowed[pick]), float(probability)


@cache
def other_names() -> tuple[np.ndarray, np.ndarray]:
    """Vocabulary indices of each drug's other names, and of the one name each folds into."""
    v = vocab()
    return (np.array([v.herb_id[n] for n in v.canonical], dtype=int),
            np.array([v.herb_id[c] for c in v.canonical.values()], dtype=int))


def log_share(scores: np.ndarray, index: int) -> float:
    """The log-probability of entry `index` when `scores` are logits over the choices."""
    return float(scores[index] - np.logaddexp.reduce(scores))


def pool_names(herb_logits: np.ndarray) -> np.ndarray:
    """Herb logits (vocabulary order) with each drug's other names folded into its one name (log-sum-exp of their
    probabilities); the other names become impossible."""
    names, one_name = other_names()
    pooled = herb_logits.astype(np.float64, copy=True)
    np.logaddexp.at(pooled, one_name, herb_logits[names])
    pooled[names] = -np.inf
    return pooled


def screen_costs(current: list[str], patient: Patient, cfg: StepperConfig) -> np.ndarray:
    """The decoding screen: the logit cost of adding each vocabulary herb (vocabulary order), the safety cost it would
    bring (rxapp.safety.safety_cost) × the screen weight, ∞ for a forbidden one: one that would break a severe rule,
    while `forbid_severe` is on."""
    cost = np.zeros(len(vocab().herbs))
    index = vocab().herb_id
    for herb, warnings in rules().addition_risks(current, patient).items():
        if cfg.forbid_severe and any(w.severity == "severe" for w in warnings):
            cost[index[herb]] = math.inf
        else:
            cost[index[herb]] = cfg.screen_weight * warnings_cost(warnings)
    if cfg.forbid_severe:  # a herb severe in itself (马兜铃酸), which the cost does not price
        cost[[index[h] for h in rules().severe_herbs()]] = math.inf
    return cost


def addition_costs(current: list[str], patient: Patient, cfg: StepperConfig) -> np.ndarray:
    """What adding each vocabulary herb to `current` costs its pooled logit: the decoding screen, and ∞ for a drug
    the list already holds under any of its names (each drug once, under one name)."""
    cost = screen_costs(current, patient, cfg)
    cost[[vocab().herb_id[h] for h in [*current, *vocab().second_names(current)]]] = math.inf
    return cost


def severe_count(herbs: list[str], patient: Patient) -> int:
    """The severe warnings of a list, each herb's interaction with the patient's drugs counted on its own (the
    prescription's check groups all herbs of one concern, which two major herbs would keep severe without either)."""
    return sum(w.severity == "severe" for i, herb in enumerate(herbs)
               for w in rules().check_addition(herbs[:i], herb, patient))


def safety_removals(herbs: Sequence[str], patient: Patient, fit: Callable[[str], float]) -> list[str]:
    """The herbs of a draft to propose for removal, in order, so that no severe warning is left that removing one
    of them ends: each time the herb whose removal ends the most, of those the one the model finds least likely
    beside the rest of the draft (`fit`, asked only to break a tie)."""
    held, out = list(herbs), []
    while now := severe_count(held, patient):
        ended = {h: now - severe_count([x for x in held if x != h], patient) for h in held}
        most = max(ended.values())
        if most <= 0:
            break
        herb = min((h for h in held if ended[h] == most), key=fit)
        held.remove(herb)
        out.append(herb)
    return out


def draft_fit(backend: Backend, symptoms: Sequence[str], pregnant: bool, lines: dict[str, Sequence[int]],
              herb: str) -> float:
    """The model's log-probability of adding `herb` of a draft where the rest of the draft stands: named as the
    draft (初稿) and written as its lines (`lines`: each draft herb's step tokens, in the draft's order)."""
    rest = [h for h in lines if h != herb]
    context = backend.prompt_ids(render_prompt(symptoms, pregnant, rest)) + backend.tokenize(
        steps_prefix(render_analysis(symptoms)))
    context += [int(t) for h in rest for t in lines[h]]
    scores = pool_names(backend.logits([*context, backend.format.add])[list(backend.format.herbs)])
    return log_share(scores, vocab().herb_id[herb])


def free_text(backend: Backend, ids: list[int], stop: set[int], limit: int, cfg: StepperConfig,
              rng: np.random.Generator, rule: ClaimRule | None = None, banned: Sequence[int] = ()) -> list[int]:
    """Tokens decoded until one of `stop` (included) or `limit` tokens, never a `banned` one; where `rule` allows
    only some tokens after the text so far, one of those."""
    out: list[int] = []
    while len(out) < limit:
        logits = backend.logits(ids + out)
        for token in banned:
            logits[token] = -np.inf
        allowed = rule.allowed(out) if rule else None
        if allowed is None and cfg.temperature <= 0:
            token = int(logits.argmax())  # choose()'s greedy pick, without the probability nobody reads here
        else:
            token, _ = choose(logits, allowed, cfg, rng)
        out.append(token)
        if token in stop:
            break
    return out


def recommend(backend: Backend, symptoms: Sequence[str], patient: Patient | None = None,
              cfg: StepperConfig | None = None, draft: Draft | None = None
              ) -> Iterator[DraftCheck | Step | Recommendation]:
    """Yield the checked draft (when revising one), each Step as it is made, then the whole Recommendation. The
    model reads the symptoms and pregnancy; the patient's Western drugs act through the safety screen and the
    warnings."""
    cfg, patient = cfg or StepperConfig(), patient or Patient()
    if draft is not None and backend.format_version < REVISION_FORMAT:
        raise ModelMismatchError(f"this model was trained on step format v{backend.format_version}, which builds "
                                 f"prescriptions from nothing; revising a draft or a formula needs a model of format "
                                 f"v{REVISION_FORMAT} (retrain with `python -m pipeline run`)")
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    fmt = backend.format
    herb_tokens = list(fmt.herbs)
    analysis = render_analysis(symptoms)
    head = steps_prefix(analysis)
    prompt = render_prompt(symptoms, patient.pregnant, draft.herbs if draft else ())
    ids = backend.prompt_ids(prompt) + backend.tokenize(head)
    start = len(ids)
    result = Recommendation(list(symptoms), patient, analysis, draft)
    first_scores, stop_probabilities = None, []
    stop_threshold = backend.stop_thresholds.of(revising=draft is not None)  # the model's own for revising a draft
    max_herbs = backend.stop_thresholds.most_herbs(draft is not None, cfg.max_herbs)
    tokenize = cache(backend.tokenize)  # the claim words and the symptoms, asked again at every step

    def room() -> bool:
        """Whether the model's context has room for another step: its marker, its herb and its explanation."""
        return len(ids) + 2 + cfg.max_explanation_tokens <= backend.n_ctx

    def draft_room() -> None:
        if not room():
            raise DraftInputError(f"the draft is too long for this model's context ({backend.n_ctx} tokens)")

    def step(action: str, herb: str, probability: float, still_open: float | None = None, safety: bool = False
             ) -> Step:
        """Write the step's marker and herb, let the model explain it (a safety removal: the severe warnings it
        ends explain it), and keep it."""
        before = result.herbs
        ids.extend([fmt.remove if action == "remove" else fmt.add, fmt.herbs[vocab().herb_id[herb]]])
        warnings = ([w for w in rules().check_prescription(before, patient) if herb in w.herbs]
                    if action == "remove" else rules().check_addition(before, herb, patient))
        if safety:
            reason = removal_reason(herb, [w for w in warnings if w.severity == "severe"])
            explanation = [*tokenize(EXPLANATION_MARK + reason), fmt.newline]
        else:
            explanation = free_text(backend, ids, {fmt.newline, backend.eos}, cfg.max_explanation_tokens, cfg, rng,
                                    claim_rule(tokenize, herb, symptoms, tie=action != "remove"),
                                    banned=[fmt.stop, fmt.remove])  # a step's marker, never text
        if explanation[-1] != fmt.newline:  # cut short: the step line still ends here
            explanation = [t for t in explanation if t != backend.eos] + [fmt.newline]
        ids.extend(explanation)
        text = backend.detokenize(explanation).strip().lstrip("：:").strip()
        made = Step(len(result.steps) + 1, action, herb, vocab().display_name(herb), text, knowledge().get(herb),
                    warnings, probability, time.perf_counter() - started, still_open, safety)
        result.steps.append(made)
        return made

    if draft is not None:
        result.draft_warnings = rules().check_prescription([*draft.herbs, *draft.unknown], patient)
        yield DraftCheck(draft, result.draft_warnings)
        for herb in draft.herbs:
            draft_room()
            scores = pool_names(backend.logits([*ids, fmt.add])[herb_tokens])
            yield step("draft", herb, math.exp(log_share(scores, vocab().herb_id[herb])))
        if cfg.remove_severe:
            written = np.asarray(ids[start:])  # the draft's lines, each ending with its newline
            lines = dict(zip(draft.herbs, np.split(written, np.flatnonzero(written == fmt.newline)[:-1] + 1),
                             strict=True))
            fit = cache(lambda herb: draft_fit(backend, symptoms, patient.pregnant, lines, herb))
            for herb in safety_removals(draft.herbs, patient, fit):
                draft_room()
                held = [vocab().herb_id[h] for h in result.herbs]
                logits = backend.logits([*ids, fmt.remove])[herb_tokens][held]
                yield step("remove", herb, math.exp(log_share(logits, held.index(vocab().herb_id[herb]))), safety=True)
    while True:  # ids end with a newline: another step, or stop
        allowed = fmt.allowed(ids[start:], max_herbs, len(draft.herbs) if draft else 0)
        if result.steps and not room():
            allowed = [fmt.stop]
        pooled = None  # the pooled herb logits after 加 here, once asked for
        if first_scores is None and fmt.add in allowed:  # the ranking: every herb, at the first decision
            pooled = pool_names(backend.logits([*ids, fmt.add])[herb_tokens])
            first_scores = pooled - np.logaddexp.reduce(pooled)
        moves, still_open = [m for m in allowed if m != fmt.stop], None
        if len(allowed) == 1:
            marker = allowed[0]
        elif cfg.temperature > 0:
            marker = choose(backend.logits(ids), allowed, cfg, rng)[0]
        else:  # stop by the model's threshold rule; else its likelier move
            logits = backend.logits(ids)
            stop_probabilities.append(stop_probability(np.logaddexp.reduce(logits[moves]), logits[fmt.stop]))
            still_open = open_chance(stop_probabilities)
            marker = fmt.stop if greedy_stop(stop_probabilities, stop_threshold) else max(
                moves, key=lambda m: logits[m])
        if marker == fmt.stop:
            break
        held = result.herbs
        if marker == fmt.remove:  # a herb of the draft still held (FormatTokens.allowed)
            cost = np.full(len(herb_tokens), math.inf)
            cost[[vocab().herb_id[h] for h in held if h in draft.herbs]] = 0.0
            pick, p = choose(backend.logits([*ids, fmt.remove])[herb_tokens], None, cfg, rng, cost)
            yield step("remove", vocab().herbs[pick], p, still_open)
            continue
        herb_logits = pooled if pooled is not None else pool_names(backend.logits([*ids, fmt.add])[herb_tokens])
        cost = addition_costs(held, patient, cfg)
        cost[[vocab().herb_id[s.herb] for s in result.steps if s.action == "remove"]] = math.inf
        if not np.isfinite(cost - herb_logits).any():
            break  # every remaining herb is forbidden: stop here
        pick, p = choose(herb_logits, None, cfg, rng, cost)
        yield step("add", vocab().herbs[pick], p, still_open)
    result.summary = compose_summary(result.kept())
    result.formula = resembled(result.herbs)
    result.text = head + backend.detokenize(ids[start:]) + f"{SUMMARY_HEADER}\n{result.summary}\n"
    result.prompt_ids, result.response_ids = ids[:start], ids[start:]
    result.warnings = rules().check_prescription([*result.herbs, *(draft.unknown if draft else ())], patient)
    result.ranking = rank_herbs(first_scores if first_scores is not None else np.zeros(len(fmt.herbs)))
    yield result
