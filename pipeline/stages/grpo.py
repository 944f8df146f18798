"""`pipeline grpo`: step-wise GRPO with potential-based reward shaping and a safety penalty α (FLAME, methods.md
§2), the project's own trainer because TRL has no per-step advantages.

A state is (patient, current list L0), written as the response up to 【处方】 plus one teacher-explained 加 line per
herb of L0. States come from the policy's own rollouts (a prefix of the herbs one rollout added) and from
corrupted ground truth (true herbs dropped, plausible wrong ones added, as many as the starting model's measured
errors). From each state the policy samples G continuations without format constraints; each line is an action
(加 herb, 减 herb, or an invalid line) and the stop token 【 (the 方解 header) stops.

    Φ(L)   = Jaccard(L, truth) − α · safety_cost(L)
    r_t    = Φ(L_t) − Φ(L_{t−1}) − β · [line t invalid]
    A_out  = group-normalised Σ_t r_t             (over the G rollouts of a state)
    A_step = group-normalised r_t                 (over every line of those G rollouts)
    A(tok) = A_out + λ · A_step(the token's line)  (tokens after the last line, such as the stop, get A_out)
    loss   = −min(ρA, clip(ρ, 1 ± ε)A) + κ · KL_k3(π ‖ π_ref), a mean over each rollout's tokens, then rollouts

Jaccard is the accuracy term, as in FLAME. The safety cost is rx's one definition (rxapp.safety.safety_cost: each
十八反/十九畏 pair and, for a pregnant patient, each pregnancy-rule herb, weighted by severity), the same the app's
decoding screen charges. It is a sum, not FLAME's pairwise rate: one pair among 12 herbs is a rate of 1/66, less than
one right herb earns in Jaccard, so the rate could not teach the policy to avoid pairs. Under torchrun each process
draws its own states and the gradients are averaged before each step.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.config import GrpoConfig, PipelineConfig
from pipeline.data.baselines import CoOccurrence, rank
from pipeline.data.records import Record, load_split
from pipeline.data.teacher import TrainStats, explain
from pipeline.metrics import jaccard
from pipeline.model.llm import load_trained, lora_adapters, pad_rows
from pipeline.model.training import save_model, seed_everything, setup_distributed, tune_stopping
from pipeline.runfolder import RunFolder, read_jsonl, write_json
from rxapp.modelinfo import saved_stop_threshold, write_model_metadata
from rxapp.safety import Patient, incompatible_pairs, safety_cost
from rxapp.stepformat import (
    SUMMARY_HEADER,
    encode_prompt,
    judge_step,
    parse_response,
    render_analysis,
    render_prompt,
    render_step,
    steps_prefix,
)

CURVES = ("reward", "phi", "kl", "invalid_rate", "incompat_rate")


@dataclass(frozen=True)
class State:
    symptoms: tuple[str, ...]
    pregnant: bool
    truth: frozenset[str]
    start: tuple[str, ...]  # L0


def potential(herbs: Sequence[str], state: State, alpha: float) -> float:
    return jaccard(set(herbs), set(state.truth)) - alpha * safety_cost(herbs, Patient(pregnant=state.pregnant))


def line_rewards(state: State, lines: Sequence[str], cfg: GrpoConfig) -> tuple[list[float], list[bool], list[str]]:
    """Each line's shaped reward r_t, whether it was invalid, and the list the lines end with."""
    current, rewards, invalid = list(state.start), [], []
    for line in lines:
        before = potential(current, state, cfg.alpha)
        step = judge_step(line, current)
        if step.valid and step.action == "add":
            current.append(step.herb)
        elif step.valid:
            current.remove(step.herb)
        rewards.append(potential(current, state, cfg.alpha) - before - cfg.invalid_penalty * (not step.valid))
        invalid.append(not step.valid)
    return rewards, invalid, current


def normalise(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean()) / (values.std() + 1e-6) if values.numel() > 1 else values * 0


def token_advantages(group_rewards: list[list[float]], line_of_token: list[torch.Tensor], step_weight: float
                     ) -> list[torch.Tensor]:
    """A(tok) for each rollout of one group: the outcome advantage plus λ × the step advantage of the token's
    line."""
    outcome = normalise(torch.tensor([sum(r) for r in group_rewards], dtype=torch.float32))
    steps = normalise(torch.tensor([x for r in group_rewards for x in r] or [0.0], dtype=torch.float32))
    out, at = [], 0
    for k, rewards in enumerate(group_rewards):
        own = torch.cat([steps[at : at + len(rewards)], torch.zeros(1)])  # index len(rewards): after the last line
        at += len(rewards)
        out.append(outcome[k] + step_weight * own[line_of_token[k].clamp(max=len(rewards))])
    return out


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, cfg: GrpoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate plus κ·KL (k3 estimator) over [rollouts × tokens]; returns (loss, mean KL)."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages)
    log_ratio = (ref_logp - logp).clamp(-10.0, 10.0)  # one token the policy has all but dropped must not explode
    kl = torch.exp(log_ratio) - log_ratio - 1
    per_token = (-surrogate + cfg.kl * kl) * mask
    per_rollout = per_token.sum(1) / mask.sum(1).clamp(min=1)
    return per_rollout.mean(), (kl * mask).sum() / mask.sum()


def corrupted_truth(truth: Sequence[str], candidates: Sequence[str], missing: Sequence[int], extra: Sequence[int],
                    rng: random.Random) -> tuple[str, ...]:
    """The truth with herbs dropped and plausible wrong herbs (the best-ranked `candidates` outside the truth)
    added, the counts drawn from the starting model's measured errors."""
    kept = list(truth)
    rng.shuffle(kept)
    kept = kept[: max(0, len(kept) - rng.choice(missing))]
    wrong = [h for h in candidates if h not in truth][: 3 * max(extra)]
    return tuple(kept + rng.sample(wrong, min(len(wrong), rng.choice(extra))))


def state_prefix(state: State, stats: TrainStats) -> tuple[str, str]:
    """(prompt, response so far): the analysis, then one teacher-explained 加 line per herb of L0."""
    steps = "".join(render_step(h, explain(h, state.symptoms, stats)) for h in state.start)
    return render_prompt(state.symptoms, state.pregnant), steps_prefix(render_analysis(state.symptoms)) + steps


def prefix_ids(tokenizer, state: State, stats: TrainStats) -> list[int]:
    prompt, prefix = state_prefix(state, stats)
    return encode_prompt(tokenizer, prompt) + tokenizer.encode(prefix, add_special_tokens=False)


@torch.no_grad()
def rollouts(model, tokenizer, prompts: list[list[int]], count: int, cfg: GrpoConfig) -> list[list[int]]:
    """`count` sampled continuations (token ids) of each prompt, each ending at the stop token 【, the end token,
    or after `max_lines` lines' worth of tokens."""
    stop = tokenizer.encode(SUMMARY_HEADER, add_special_tokens=False)[0]
    ends = (stop, tokenizer.eos_token_id)
    ids, mask = pad_rows([p for p in prompts for _ in range(count)], tokenizer.pad_token_id, left=True)
    width = ids.shape[1]
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, top_k=0,
                         temperature=cfg.temperature, max_new_tokens=14 * cfg.max_lines, eos_token_id=list(ends),
                         pad_token_id=tokenizer.pad_token_id)
    completions = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
        completions.append(row[:cut])
    return completions


def completion_lines(tokenizer, completion: list[int]) -> tuple[list[str], torch.Tensor]:
    """The completed lines of a completion and, per token, the index of its line (a line owns its newline; the
    tokens after the last newline, such as the stop token, get index len(lines))."""
    line_of_token, line = [], 0
    for piece in tokenizer.batch_decode([[t] for t in completion]):
        line_of_token.append(line)
        line += piece.count("\n")
    lines = tokenizer.decode(completion).split("\n")[:line]
    return lines, torch.tensor(line_of_token)


def completion_logprobs(model, prompt: list[int], completions: list[list[int]], pad: int, temperature: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """log π of every completion token after the shared prompt, at the sampling temperature (the policy that made
    the rollouts), [G × T] and right-padded, with its mask."""
    device = next(model.parameters()).device
    ids, attention = pad_rows([prompt + c for c in completions], pad)
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, len(prompt) - 1 : -1]
    logp = (logits.float() / temperature).log_softmax(-1).gather(-1, ids[:, len(prompt):, None].to(device))[..., 0]
    return logp, attention[:, len(prompt):].float().to(device)


def average_gradients(model, world: int) -> None:
    if world == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


def grpo_update(model, reference, tokenizer, optimizer, states: list[State], stats: TrainStats, cfg: GrpoConfig,
                world: int = 1) -> dict:
    """One update: G rollouts per state, shaped rewards, token advantages, `iterations` gradient steps. Returns
    this update's values of the curves."""
    prompts = [prefix_ids(tokenizer, s, stats) for s in states]
    model.eval()  # and it stays so: with dropout the ratio and the KL would measure dropout noise, not the update
    completions = rollouts(model, tokenizer, prompts, cfg.group, cfg)
    groups, totals = [], dict.fromkeys(("reward", "phi", "invalid_rate", "incompat_rate", "lines"), 0.0)
    for s, state in enumerate(states):
        group = completions[s * cfg.group : (s + 1) * cfg.group]
        parsed = [completion_lines(tokenizer, c) for c in group]
        judged = [line_rewards(state, lines, cfg) for lines, _ in parsed]
        advantages = token_advantages([r for r, _, _ in judged], [index for _, index in parsed], cfg.step_weight)
        padded = torch.nn.utils.rnn.pad_sequence(advantages, batch_first=True)
        with torch.no_grad():
            old, mask = completion_logprobs(model, prompts[s], group, tokenizer.pad_token_id, cfg.temperature)
            ref = reference_logprobs(model, reference, prompts[s], group, tokenizer.pad_token_id, cfg.temperature)
        groups.append((prompts[s], group, padded.to(old.device), old, ref, mask))
        for rewards, invalid, final in judged:
            totals["reward"] += sum(rewards)
            totals["phi"] += potential(final, state, cfg.alpha)
            totals["invalid_rate"] += sum(invalid)
            totals["lines"] += len(invalid)
            totals["incompat_rate"] += incompatible_pairs(final) > 0
    for _ in range(cfg.iterations):
        kl_sum = 0.0
        for prompt, group, advantage, old, ref, mask in groups:
            logp, _ = completion_logprobs(model, prompt, group, tokenizer.pad_token_id, cfg.temperature)
            loss, kl = grpo_loss(logp, old, ref, advantage, mask, cfg)
            (loss / len(groups)).backward()
            kl_sum += kl.item()
        average_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    values = {k: totals[k] / len(completions) for k in ("reward", "phi", "incompat_rate")}
    return values | {"kl": kl_sum / len(groups),  # at the last iteration
                     "invalid_rate": totals["invalid_rate"] / max(totals["lines"], 1.0)}


def reference_logprobs(model, reference, prompt: list[int], completions: list[list[int]], pad: int,
                       temperature: float) -> torch.Tensor:
    """log π_ref of the completion tokens: the frozen starting model, or (LoRA) the model with its adapters off."""
    if reference is not None:
        return completion_logprobs(reference, prompt, completions, pad, temperature)[0]
    with model.disable_adapter():
        return completion_logprobs(model, prompt, completions, pad, temperature)[0]


def measured_errors(model, tokenizer, validation: list[dict], threshold: float) -> tuple[list[int], list[int]]:
    """Per validation case, how many true herbs the starting model misses and how many wrong ones it adds."""
    from pipeline.model.generation import generate_responses

    texts = generate_responses(model, tokenizer, [e["symptoms"] for e in validation], threshold)
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

    def draw(self, model, tokenizer, stats: TrainStats) -> list[State]:
        records = self.rng.sample(self.train, self.cfg.states)
        patients = [State(r.symptoms, self.rng.random() < self.cfg.pregnant_share, frozenset(r.herbs), ())
                    for r in records]
        from_policy = [self.rng.random() < self.cfg.policy_share for _ in patients]
        drawn = [p for p, own in zip(patients, from_policy, strict=True) if own]
        starts = iter(self.policy_prefixes(model, tokenizer, drawn, stats))
        ranked = rank(self.candidates.scores([p.symptoms for p in patients]))
        return [State(p.symptoms, p.pregnant, p.truth,
                      next(starts) if own else corrupted_truth(sorted(p.truth), ranked[i], *self.errors, self.rng))
                for i, (p, own) in enumerate(zip(patients, from_policy, strict=True))]

    def policy_prefixes(self, model, tokenizer, patients: list[State], stats: TrainStats) -> list[tuple[str, ...]]:
        """A random-length prefix of the herbs that one rollout of the policy adds, per patient."""
        if not patients:
            return []
        completions = rollouts(model, tokenizer, [prefix_ids(tokenizer, p, stats) for p in patients], 1, self.cfg)
        prefixes = []
        for completion in completions:
            added = []
            for line in completion_lines(tokenizer, completion)[0]:
                step = judge_step(line, added)
                if step.valid and step.action == "add":
                    added.append(step.herb)
            prefixes.append(tuple(added[: self.rng.randint(0, len(added))]))
        return prefixes


def plot_curves(log: list[dict], path: Path) -> None:
    """Reward, Φ, KL, invalid rate and incompatibility rate against the update, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for ax, key in zip(axes, CURVES, strict=True):
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


def train_grpo(cfg: PipelineConfig, run_folder: RunFolder, start: Path) -> Path:
    """GRPO from the model in `start`; the result in RUN/grpo-a{α}/best, with log.json and curves.png."""
    settings = cfg.grpo
    rank_, world, device = setup_distributed()
    seed_everything(cfg.seed)
    out = run_folder.stage("grpo", settings.alpha)
    model, reference, tokenizer = policy_and_reference(cfg, start, device)
    validation = read_jsonl(run_folder.examples("validation"))
    errors = measured_errors(model, tokenizer, validation[: settings.error_cases], saved_stop_threshold(start))
    train = load_split("train", cfg.herb_lists)
    stats = TrainStats.from_records(train)
    source = StateSource(train, errors, CoOccurrence().fit(train), settings, random.Random(cfg.seed + rank_))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.0)
    torch.manual_seed(cfg.seed + rank_)  # each process samples its own rollouts
    log, began = [], time.time()
    bar = tqdm(range(settings.updates), desc=f"grpo α={settings.alpha:g}", unit="update", disable=rank_ != 0 or None)
    for update in bar:
        states = source.draw(model, tokenizer, stats)
        values = grpo_update(model, reference, tokenizer, optimizer, states, stats, settings, world)
        if world > 1:
            summed = torch.tensor([values[k] for k in CURVES])
            dist.all_reduce(summed)
            values = dict(zip(CURVES, (summed / world).tolist(), strict=True))
        log.append({"update": update + 1, **values, "elapsed_s": round(time.time() - began, 1)})
        bar.set_postfix(reward=f"{values['reward']:.3f}", kl=f"{values['kl']:.4f}")
        if rank_ == 0:  # after every update, so that a long run can be watched
            write_json({"settings": settings.__dict__, "start": str(start), "processes": world, "updates": log},
                       out / "log.json")
    best = out / "best"
    if rank_ == 0:
        save_model(model.merge_and_unload() if reference is None else model, tokenizer, best)
        plot_curves(log, out / "curves.png")
        if settings.retune_stop:
            tune_stopping(best, validation[: cfg.sft.max_validation], device)
        else:
            write_model_metadata(best, saved_stop_threshold(start))
    if world > 1:
        dist.barrier()
    return best
