"""`pipeline grpo`: step-wise GRPO with potential-based reward shaping and a safety penalty α (FLAME, methods.md
§2), on the decisions the app's stepper makes (pipeline.model.policy), the project's own trainer because TRL has no
per-step advantages.

A state is (patient, current list L0), written as the response up to 【处方】 plus one teacher-explained 加 line per
herb of L0. States come from the policy's own rollouts (a prefix of the herbs one rollout added), from corrupted
ground truth (true herbs dropped, plausible wrong ones added, as many as the starting model's measured errors), and
from drafts to revise (grpo.revision_share): a doctors' list corrupted as SFT's revision examples are, named in the
prompt (初稿) as the app names a practitioner's draft. From each state the policy makes G rollouts; each decision is
an action: add a herb (drawn as the stepper draws it: other names folded, the list's drugs masked), remove one of
the draft's herbs (revising), or stop (at the stop probability the app reads).

    Φ(L)   = Jaccard(L, truth) − α · safety_cost(L)
    r_t    = Φ(L_t) − Φ(L_{t−1})                    (0 for the stop; a removal's r_t is FLAME's 减 reward)
    A_out  = group-normalised Σ_t r_t                (over the G rollouts of a state)
    A_step = group-normalised r_t                    (over every decision of those G rollouts)
    A_t    = A_out + λ · A_step(t)
    loss   = −min(ρ_t A_t, clip(ρ_t, 1 ± ε) A_t) + κ · KL(π_t ‖ π_ref,t), a mean over each rollout's decisions, then
             rollouts; ρ_t = π(a_t)/π_old(a_t), and the KL is exact over each decision's whole distribution (stop,
             add or remove, and every herb), so that the first step's ranking of every herb is held to the start's,
             not only the herbs the rollouts sampled
           + κ_rank · KL(π_first ‖ π_ref,first), a mean over the update's patients: the first step's herb
             distribution from an empty list, the ranking the app returns, held apart from the decisions that
             write the list (grpo.ranking_kl; 0 by default, since at 1 it did not hold the ranking).

Jaccard is the accuracy term, as in FLAME. The safety cost is rx's one definition (rxapp.safety.safety_cost: each
十八反/十九畏 pair and, for a pregnant patient, each pregnancy-rule herb, weighted by severity), the same the app's
decoding screen charges. It is a sum, not FLAME's pairwise rate: one pair among 12 herbs is a rate of 1/66, less than
one right herb earns in Jaccard, so the rate could not teach the policy to avoid pairs. Rollouts are not screened by
default (grpo.screen_weight 0): a screened rollout never meets a pair, so the model could not learn to avoid one.
Only a draft's herbs may be removed, as in the app: from corrupted ground truth written as the policy's own lines
it learns what to add and when to stop; from a draft, also what to take out. Under torchrun each process draws its own
states and the gradients are averaged before each step.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.config import GrpoConfig, PipelineConfig
from pipeline.data.baselines import CoOccurrence, rank
from pipeline.data.records import Record, load_split
from pipeline.data.revision import corrupt, draw_changes, removal_reason
from pipeline.data.teacher import TrainStats, explain
from pipeline.metrics import jaccard
from pipeline.model.llm import load_trained, lora_adapters
from pipeline.model.policy import Rollout, StepPolicy
from pipeline.model.stopping import tune_stopping
from pipeline.model.training import save_model, seed_everything, setup_distributed
from pipeline.runfolder import RunFolder, read_jsonl, write_json
from rxapp.modelinfo import StopThresholds, saved_stop_thresholds
from rxapp.safety import Patient, incompatible_pairs, safety_cost
from rxapp.stepformat import encode_prompt, parse_response, render_analysis, render_prompt, render_step, steps_prefix
from rxapp.stepper import StepperConfig
from rxapp.vocab import vocab

CURVES = ("reward", "phi", "kl", "first_step_kl", "herbs", "stop_rate", "incompat_rate", "removals",
          "wrong_herbs_removed")


@dataclass(frozen=True)
class State:
    symptoms: tuple[str, ...]
    pregnant: bool
    truth: frozenset[str]
    start: tuple[str, ...]  # L0
    revising: bool = False  # L0 is a draft named in the prompt, whose herbs the policy may remove


def potential(herbs: Sequence[str], state: State, alpha: float) -> float:
    return jaccard(set(herbs), set(state.truth)) - alpha * safety_cost(herbs, Patient(pregnant=state.pregnant))


def action_rewards(state: State, rollout: Rollout, alpha: float) -> list[float]:
    """Each decision's shaped reward r_t: the change in potential its herb's addition or removal brings, 0 for the
    stop."""
    current, rewards = list(state.start), []
    for decision in rollout.decisions:
        before = potential(current, state, alpha)
        if decision.action == "add":
            current.append(vocab().herbs[decision.herb])
        elif decision.action == "remove":
            current.remove(vocab().herbs[decision.herb])
        rewards.append(potential(current, state, alpha) - before)
    return rewards


def normalise(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean()) / (values.std() + 1e-6) if values.numel() > 1 else values * 0


def action_advantages(group_rewards: list[list[float]], step_weight: float) -> list[torch.Tensor]:
    """A_t for each decision of each rollout of one group: the outcome advantage plus λ × the step advantage."""
    outcome = normalise(torch.tensor([sum(r) for r in group_rewards], dtype=torch.float32))
    steps = normalise(torch.tensor([x for r in group_rewards for x in r] or [0.0], dtype=torch.float32))
    out, at = [], 0
    for k, rewards in enumerate(group_rewards):
        out.append(outcome[k] + step_weight * steps[at : at + len(rewards)])
        at += len(rewards)
    return out


def categorical_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of each row's distribution, over what is allowed (finite): the same for both, since the stepper's
    masks do not depend on the model."""
    allowed = torch.isfinite(logp)
    own, ref = logp.masked_fill(~allowed, 0.0), ref_logp.masked_fill(~allowed, 0.0)  # no −∞ − −∞ (NaN)
    return (allowed * own.exp() * (own - ref)).sum(-1)


def exact_kl(move_logp: torch.Tensor, herb_logp: torch.Tensor, ref_move_logp: torch.Tensor,
             ref_herb_logp: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) of each decision's whole distribution: the move (stop, add or remove, where the format allows
    more than one) and, for a herb added or removed, the herb."""
    return categorical_kl(move_logp, ref_move_logp) + torch.where(moved, categorical_kl(herb_logp, ref_herb_logp), 0.0)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, kl: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, cfg: GrpoConfig) -> torch.Tensor:
    """Clipped surrogate plus κ·KL over [rollouts × decisions], a mean over each rollout's decisions, then
    rollouts."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages)
    per_decision = (-surrogate + cfg.kl * kl) * mask
    return (per_decision.sum(1) / mask.sum(1).clamp(min=1)).mean()


def first_step_rollouts(policy: StepPolicy, states: Sequence[State], stats: TrainStats) -> list[Rollout]:
    """The first step of each state's patient from an empty list (pipeline.model.policy.StepPolicy.first_steps)."""
    empty = [State(s.symptoms, s.pregnant, s.truth, ()) for s in states]
    return policy.first_steps([prefix_ids(policy.tokenizer, s, stats) for s in empty],
                              [Patient(pregnant=s.pregnant) for s in empty])


def by_rollout(values: torch.Tensor, rollouts: Sequence[Rollout]) -> torch.Tensor:
    """Per-decision values (flat, in order) as [rollouts × decisions], zero-padded."""
    return torch.nn.utils.rnn.pad_sequence(values.split([len(r.decisions) for r in rollouts]), batch_first=True)


def corrupted_truth(truth: Sequence[str], candidates: Sequence[str], missing: Sequence[int], extra: Sequence[int],
                    rng: random.Random) -> tuple[str, ...]:
    """The truth with herbs dropped and plausible wrong herbs added (pipeline.data.revision.corrupt), the counts
    drawn from the starting model's measured errors."""
    return corrupt(truth, candidates, rng.choice(missing), rng.choice(extra), rng).draft


def state_prefix(state: State, stats: TrainStats) -> tuple[str, str]:
    """(prompt, response so far): the analysis, then one teacher-explained 加 line per herb of L0."""
    steps = "".join(render_step(h, explain(h, state.symptoms, stats)) for h in state.start)
    draft = state.start if state.revising else ()
    return (render_prompt(state.symptoms, state.pregnant, draft),
            steps_prefix(render_analysis(state.symptoms)) + steps)


def prefix_ids(tokenizer, state: State, stats: TrainStats) -> list[int]:
    prompt, prefix = state_prefix(state, stats)
    return encode_prompt(tokenizer, prompt) + tokenizer.encode(prefix, add_special_tokens=False)


def sample_rollouts(policy: StepPolicy, states: Sequence[State], count: int, stats: TrainStats,
                    rng: np.random.Generator) -> list[Rollout]:
    """`count` rollouts from each state, grouped by state."""
    rows = [s for s in states for _ in range(count)]

    def explained(row: int, herb: str, action: str) -> str:
        return explain(herb, rows[row].symptoms, stats) if action == "add" else removal_reason(herb)

    return policy.sample([prefix_ids(policy.tokenizer, s, stats) for s in rows], [s.start for s in rows],
                         [Patient(pregnant=s.pregnant) for s in rows], explained, rng,
                         [s.start if s.revising else () for s in rows])


def average_gradients(model, world: int) -> None:
    if world == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


def grpo_update(policy: StepPolicy, reference, optimizer, states: list[State], stats: TrainStats, cfg: GrpoConfig,
                rng: np.random.Generator, world: int = 1) -> dict:
    """One update: G rollouts per state, shaped rewards, advantages, `iterations` gradient steps. Returns this
    update's values of the curves."""
    model = policy.model
    model.eval()  # and it stays so: with dropout the ratio and the KL would measure dropout noise, not the update
    rollouts = sample_rollouts(policy, states, cfg.group, stats, rng)
    rewards = [action_rewards(states[i // cfg.group], r, cfg.alpha) for i, r in enumerate(rollouts)]
    groups = []
    for s in range(len(states)):
        kept = [i for i in range(s * cfg.group, (s + 1) * cfg.group) if rollouts[i].decisions]
        if not kept:
            continue
        group = [rollouts[i] for i in kept]
        advantages = action_advantages([rewards[i] for i in kept], cfg.step_weight)
        with torch.no_grad():
            old, _, _ = policy.log_probs(model, group)
            ref = reference_log_probs(policy, reference, group)
        moved = torch.tensor([d.herb is not None for r in group for d in r.decisions])
        padded = torch.nn.utils.rnn.pad_sequence(advantages, batch_first=True)
        groups.append((group, padded, by_rollout(old, group), ref[1:], moved))
    first = first_step_rollouts(policy, states, stats)
    with torch.no_grad():
        ref_first = reference_log_probs(policy, reference, first)[2]
    kl_sum = first_kl = 0.0
    for _ in range(cfg.iterations):
        kl_sum = 0.0
        # measured at every update (the ranking's drift is a curve), trained on where κ_rank > 0
        with torch.set_grad_enabled(cfg.ranking_kl > 0):
            ranking = categorical_kl(policy.log_probs(model, first)[2], ref_first).mean()
        if cfg.ranking_kl > 0:
            (cfg.ranking_kl * ranking).backward()
        first_kl = ranking.item()
        for group, advantage, old, (ref_move, ref_herb), moved in groups:
            logp, move_logp, herb_logp = policy.log_probs(model, group)
            kl = exact_kl(move_logp, herb_logp, ref_move, ref_herb, moved.to(logp.device))
            mask = by_rollout(torch.ones_like(logp), group)
            loss = grpo_loss(by_rollout(logp, group), old, by_rollout(kl, group), advantage.to(logp.device), mask, cfg)
            (loss / len(groups)).backward()
            kl_sum += (kl.sum() / len(kl)).item()
        average_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    start = [potential(s.start, s, cfg.alpha) for s in states]  # Φ(L_0); Φ(L_T) = Φ(L_0) + Σ_t r_t
    return {"reward": float(np.mean([sum(rw) for rw in rewards])),
            "phi": float(np.mean([start[i // cfg.group] + sum(rw) for i, rw in enumerate(rewards)])),
            "kl": kl_sum / max(len(groups), 1),  # at the last iteration
            "first_step_kl": first_kl,  # at the last iteration, before its step
            "herbs": float(np.mean([len(r.herbs) for r in rollouts])),
            "stop_rate": float(np.mean([r.stopped for r in rollouts])),
            "incompat_rate": float(np.mean([incompatible_pairs(r.herbs) > 0 for r in rollouts])),
            "removals": float(np.mean([len(r.removed) for r in rollouts])),
            "wrong_herbs_removed": float(np.mean([len(set(r.removed) - states[i // cfg.group].truth)
                                             for i, r in enumerate(rollouts)]))}


def reference_log_probs(policy: StepPolicy, reference, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, ...]:
    """The reference's log-probabilities (StepPolicy.log_probs): of the frozen copy, or where `reference` is None
    (LoRA), of the model with its adapters off."""
    if reference is not None:
        return policy.log_probs(reference, rollouts)
    with policy.model.disable_adapter():
        return policy.log_probs(policy.model, rollouts)


def measured_errors(model, tokenizer, validation: list[dict], stop: StopThresholds) -> tuple[list[int], list[int]]:
    """Per validation case, how many true herbs the starting model misses and how many wrong ones it adds."""
    from pipeline.model.generation import generate_responses

    texts = generate_responses(model, tokenizer, [e["symptoms"] for e in validation], stop)
    missing, extra = [], []
    for text, case in zip(texts, validation, strict=True):
        predicted, truth = set(parse_response(text).herbs), set(case["herbs"])
        missing.append(len(truth - predicted))
        extra.append(len(predicted - truth))
    return missing, extra


@dataclass
class StateSource:
    """Draws each update's states from the training records."""

    train: list[Record]
    errors: tuple[list[int], list[int]]  # (missing, extra) counts of the starting model
    candidates: CoOccurrence  # ranks the plausible wrong herbs
    cfg: GrpoConfig
    rng: random.Random

    def draw(self, policy: StepPolicy, stats: TrainStats, rng: np.random.Generator) -> list[State]:
        records = self.rng.sample(self.train, self.cfg.states)
        patients = [State(r.symptoms, self.rng.random() < self.cfg.pregnant_share, frozenset(r.herbs), ())
                    for r in records]
        share = self.cfg.revision_share  # no draw at 0, so that such runs draw as before drafts existed
        revising = [share > 0 and self.rng.random() < share for _ in patients]
        from_policy = [not draft and self.rng.random() < self.cfg.policy_share for draft in revising]
        drawn = [p for p, own in zip(patients, from_policy, strict=True) if own]
        starts = iter(self.policy_prefixes(policy, drawn, stats, rng))
        ranked = rank(self.candidates.scores([p.symptoms for p in patients]))

        def start(i: int, truth: list[str], draft: bool, own: bool) -> tuple[str, ...]:
            if draft:  # corrupted as the revision examples are
                return corrupt(truth, ranked[i], *draw_changes(self.rng), self.rng).draft
            return next(starts) if own else corrupted_truth(truth, ranked[i], *self.errors, self.rng)

        return [State(p.symptoms, p.pregnant, p.truth, start(i, sorted(p.truth), draft, own), draft)
                for i, (p, draft, own) in enumerate(zip(patients, revising, from_policy, strict=True))]

    def policy_prefixes(self, policy: StepPolicy, patients: list[State], stats: TrainStats,
                        rng: np.random.Generator) -> list[tuple[str, ...]]:
        """A random-length prefix of the herbs that one rollout of the policy adds, per patient."""
        added = [r.added for r in sample_rollouts(policy, patients, 1, stats, rng)] if patients else []
        return [tuple(a[: self.rng.randint(0, len(a))]) for a in added]


def plot_curves(log: list[dict], path: Path) -> None:
    """Each of CURVES against the update, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(CURVES) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows))
    for ax, key in zip(axes.flat, CURVES, strict=True):  # CURVES fill the grid
        ax.plot([e["update"] for e in log], [e[key] for e in log])
        ax.set_title(key)
        ax.set_xlabel("update")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def policy_and_reference(cfg: PipelineConfig, start: Path, device: str):
    """The policy to train and its frozen reference; for a pretrained base, the merged starting model with new
    LoRA adapters, whose adapter-disabled self is the reference (None is returned for it)."""
    model, tokenizer = load_trained(start)
    if cfg.model.base is None:
        return model.to(device), copy.deepcopy(model).to(device).eval().requires_grad_(False), tokenizer
    from peft import get_peft_model

    return get_peft_model(model.merge_and_unload(), lora_adapters(cfg.model)).to(device), None, tokenizer


def save_checkpoint(path: Path, model, optimizer, log: list[dict], identity: dict, rngs: dict, main: bool) -> None:
    """What resuming needs after `len(log)` updates: the trainable weights and the optimizer (written by the first
    process), and each process's random states."""
    if main:
        trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "log": log, **identity},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    own = path.with_name(f"{path.stem}-rng{rngs['rank']}.pt")
    torch.save({"updates": len(log), **rngs}, own.with_suffix(".tmp"))
    own.with_suffix(".tmp").replace(own)


def load_checkpoint(path: Path, model, optimizer, identity: dict, rank: int) -> tuple[list[dict], dict | None]:
    """The log and this process's random states of a checkpoint made by the same settings from the same start,
    its weights and optimizer loaded; ([], None) when there is none to resume."""
    own = path.with_name(f"{path.stem}-rng{rank}.pt")
    if not (path.exists() and own.exists()):
        return [], None
    saved, rngs = torch.load(path, weights_only=False), torch.load(own, weights_only=False)
    if any(saved.get(k) != v for k, v in identity.items()) or rngs["updates"] != len(saved["log"]):
        return [], None
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    return saved["log"], rngs


def train_grpo(cfg: PipelineConfig, run_folder: RunFolder, start: Path, resume: bool = False) -> Path:
    """GRPO from the model in `start`; the result in RUN/grpo-a{α}/best, with log.json and curves.png. With
    `resume`, an interrupted run goes on from its last checkpoint (every grpo.checkpoint_every updates)."""
    settings = cfg.grpo
    rank_, world, device = setup_distributed()
    seed_everything(cfg.seed)
    out = run_folder.stage("grpo", settings.alpha)
    model, reference, tokenizer = policy_and_reference(cfg, start, device)
    validation = read_jsonl(run_folder.examples("validation"))
    errors = ([0], [0])  # the starting model's errors: only corrupted ground truth reads them
    if settings.policy_share < 1:
        errors = measured_errors(model, tokenizer, validation[: settings.error_cases],
                                 saved_stop_thresholds(start))
    train = load_split("train", cfg.herb_lists)
    stats = TrainStats.from_records(train)
    source = StateSource(train, errors, CoOccurrence().fit(train), settings, random.Random(cfg.seed + rank_))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + rank_)  # each process samples its own rollouts
    policy = StepPolicy(model, tokenizer, settings.temperature,
                        StepperConfig(screen_weight=settings.screen_weight, forbid_severe=False), settings.max_herbs)
    checkpoint, identity = out / "checkpoint.pt", {"settings": asdict(settings), "start": str(start), "world": world}
    log, rngs = load_checkpoint(checkpoint, model, optimizer, identity, rank_) if resume else ([], None)
    if rngs:
        source.rng.setstate(rngs["source"])
        rng.bit_generator.state = rngs["numpy"]
    began = time.time() - (log[-1]["elapsed_s"] if log else 0.0)
    bar = tqdm(range(len(log), settings.updates), desc=f"grpo α={settings.alpha:g}", unit="update",
               initial=len(log), total=settings.updates, disable=rank_ != 0 or None)
    for update in bar:
        states = source.draw(policy, stats, rng)
        values = grpo_update(policy, reference, optimizer, states, stats, settings, rng, world)
        if world > 1:
            summed = torch.tensor([values[k] for k in CURVES])
            dist.all_reduce(summed)
            values = dict(zip(CURVES, (summed / world).tolist(), strict=True))
        log.append({"update": update + 1, **values, "elapsed_s": round(time.time() - began, 1)})
        bar.set_postfix(reward=f"{values['reward']:.3f}", kl=f"{values['kl']:.4f}")
        if rank_ == 0:  # after every update, so that a long run can be watched
            write_json({"settings": settings.__dict__, "start": str(start), "processes": world, "updates": log},
                       out / "log.json")
        if (update + 1) % settings.checkpoint_every == 0 and update + 1 < settings.updates:
            save_checkpoint(checkpoint, model, optimizer, log, identity,
                            {"rank": rank_, "source": source.rng.getstate(), "numpy": rng.bit_generator.state},
                            rank_ == 0)
    best = out / "best"
    if rank_ == 0:
        save_model(model.merge_and_unload() if reference is None else model, tokenizer, best)
        plot_curves(log, out / "curves.png")
        kept = None if settings.retune_stop else saved_stop_thresholds(start)
        tune_stopping(best, validation[: cfg.sft.max_validation], device, cfg.stopping, kept=kept, revision=False)
    if world > 1:
        dist.barrier()
    return best
