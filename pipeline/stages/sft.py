"""`pipeline sft`: supervised fine-tuning on the distilled examples, with validation, early stopping, checkpoints,
and data parallelism (torchrun: gloo on CPU, NCCL on GPU).

Loss is on the response only; with `herb_targets: set` each herb step is trained order-free (see `sft_loss`), and
`first_step_passes` adds cheap first-step-only copies of the records (see `first_step_examples`). After the main
epochs, `ranking_passes` train on first-step copies alone under a second, lower cosine schedule (`lr_factor`): the
ranking phase. Model selection uses the validation F1@10 of the first-step herb ranking, the metric the model is
for; validation loss is logged beside it. Each main epoch also trains on `revision_share` of the training records'
revision examples (pipeline.data.revision), drawn afresh: the draft's lines are given, not trained.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config import PipelineConfig
from pipeline.data.baselines import CoOccurrence, rank
from pipeline.data.records import load_split
from pipeline.metrics import ranking_metrics
from pipeline.model.llm import load_model, pad_rows
from pipeline.model.scoring import first_herb_logprobs, first_step_ids, herb_token_ids
from pipeline.model.stopping import tune_stopping
from pipeline.model.training import IGNORE, save_model, seed_everything, setup_distributed
from pipeline.runfolder import RunFolder, read_jsonl, write_json
from rxapp.modelinfo import write_model_metadata
from rxapp.stepformat import ADD, encode_prompt, parse_response, render_response
from rxapp.vocab import vocab


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    # herb steps trained order-free: (position of the herb token, the herb tokens still to prescribe there)
    herb_steps: list[tuple[int, list[int]]] = field(default_factory=list)
    # the co-occurrence teacher's distribution over the vocabulary herbs (vocabulary order) for this prompt
    teacher: np.ndarray | None = None


@dataclass
class Training:
    """What the training loop and its evaluations share."""

    cfg: PipelineConfig
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    validation: list[dict]
    val_examples: list[Example]
    herb_ids: torch.Tensor  # the token of each vocabulary herb, in vocabulary order
    out_dir: Path
    device: str
    main: bool
    state: dict


def shuffled_response(example: dict, rng: random.Random) -> str:
    """The same response with its herb steps in a random order (permutation augmentation)."""
    parsed = parse_response(example["response"])
    steps = [(s.herb, s.explanation) for s in parsed.steps]
    rng.shuffle(steps)
    return render_response(parsed.analysis, steps)


def encode(tokenizer, prompt: str, response: str, max_length: int, herb_ids: set[int] | None = None,
           teacher: np.ndarray | None = None, given: str = "") -> Example:
    """Token ids and labels (loss on the response only, after its `given` beginning: a revision's draft). With
    `herb_ids`, each herb step also records the herbs of the prescription not yet added there, the order-free target
    of that step."""
    prompt_ids = encode_prompt(tokenizer, prompt) + tokenizer.encode(given, add_special_tokens=False)
    response_ids = [*tokenizer.encode(response.removeprefix(given), add_special_tokens=False), tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    example = Example(ids, ([IGNORE] * len(prompt_ids) + response_ids)[:max_length], teacher=teacher)
    if herb_ids:
        add = tokenizer.encode(ADD, add_special_tokens=False)[0]
        positions = [i for i in range(len(prompt_ids) + 1, len(ids)) if ids[i - 1] == add and ids[i] in herb_ids]
        herbs = [ids[i] for i in positions]
        example.herb_steps = [(p, herbs[k:]) for k, p in enumerate(positions)]
    return example


def revision_examples(tokenizer, revisions: list[dict], count: int, cfg: PipelineConfig, order_free: set[int] | None,
                       rng: random.Random) -> list[Example]:
    """`count` revision examples drawn from `revisions`, encoded with their drafts given. They have no teacher
    distribution: it would spread a herb step's target over the draft's herbs, already in the list."""
    return [encode(tokenizer, e["prompt"], e["response"], cfg.model.max_length, order_free, None, e["given"])
            for e in rng.sample(revisions, min(count, len(revisions)))]


def teacher_priors(teacher: CoOccurrence | None, examples: list[dict]) -> list[np.ndarray | None]:
    """The co-occurrence teacher's distribution over the vocabulary herbs for each example (None without one)."""
    if teacher is None:
        return [None] * len(examples)
    scores = teacher.scores([e["symptoms"] for e in examples]).astype(np.float32)
    return list(scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12))


def encode_all(tokenizer, examples: list[dict], responses: list[str], cfg: PipelineConfig,
               order_free: set[int] | None, priors: list[np.ndarray | None]) -> list[Example]:
    """`encode` each distilled example with the given response text, and with its teacher distribution."""
    return [encode(tokenizer, e["prompt"], r, cfg.model.max_length, order_free, p)
            for e, r, p in zip(examples, responses, priors, strict=True)]


def first_step_examples(tokenizer, examples: list[dict], priors: list[np.ndarray | None], passes: int,
                        herb_token: dict[str, int], rng: random.Random) -> list[Example]:
    """`passes` copies of each example cut right after the first step's 加, with the symptoms in a random order,
    trained only on that step's order-free target (every herb of the prescription, mixed with the teacher's
    distribution). The first-step distribution is what ranks herbs; these copies train it at about a third of a
    full example's tokens."""
    out = []
    for _ in range(passes):
        for example, prior in zip(examples, priors, strict=True):
            ids = first_step_ids(tokenizer, rng.sample(example["symptoms"], len(example["symptoms"])))
            herbs = [herb_token[h] for h in example["herbs"]]
            out.append(Example(ids + herbs[:1], [IGNORE] * (len(ids) + 1), [(len(ids), herbs)], prior))
    return out


def target_count(examples: list[Example]) -> int:
    """The positions `sft_loss` trains: every labelled token after the first, and every herb step (labelled or not)."""
    return sum(len({i for i, label in enumerate(e.labels) if i and label != IGNORE} | {p for p, _ in e.herb_steps})
               for e in examples)


def sft_loss(model, batch: dict[str, torch.Tensor], examples: list[Example], herb_ids: torch.Tensor | None = None,
             teacher_weight: float = 0.0, per: int | None = None, set_loss: str = "mean") -> torch.Tensor:
    """Next-token loss over response tokens, summed and divided by `per` (default: these examples' `target_count`,
    giving their mean; a whole batch's count when these are one micro-batch of it). At an order-free herb step the
    target is a distribution instead of the one herb the teacher's order put there: uniform over the herbs still to
    prescribe, mixed with weight `teacher_weight` with the co-occurrence teacher's distribution over the herbs not
    yet added.

    `set_loss: sum` weighs that step by the number of herbs still to prescribe, i.e. −Σ log p(h) over them. Its
    optimum p(h) is proportional to P(h still to prescribe | prefix), the order that P@K rewards; the mean's
    optimum, E[1{h to prescribe} / |herbs to prescribe|], demotes the herbs of long prescriptions."""
    if set_loss not in ("mean", "sum"):
        raise ValueError(f"set_loss must be 'mean' or 'sum', got {set_loss!r}")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:].clone()
    logp = logits.float().log_softmax(dim=-1)
    rows, cols, soft = [], [], torch.zeros((sum(len(e.herb_steps) for e in examples), logits.shape[-1]))
    for row, example in enumerate(examples):
        prior = None
        if teacher_weight and example.teacher is not None:
            prior = torch.zeros(logits.shape[-1])
            prior[herb_ids] = torch.from_numpy(example.teacher)
        for k, (position, remaining) in enumerate(example.herb_steps):
            soft[len(rows), remaining] = 1.0 / len(remaining)
            if prior is not None:
                if k:
                    prior[example.herb_steps[k - 1][1][0]] = 0.0  # the herb added at the previous step
                if prior.sum() > 0:  # symptoms never seen in training give the teacher nothing to say
                    soft[len(rows)] = (1 - teacher_weight) * soft[len(rows)] + teacher_weight * prior / prior.sum()
            if set_loss == "sum":
                soft[len(rows)] *= len(remaining)
            rows.append(row)
            cols.append(position - 1)  # the logits one position earlier predict the herb
    if rows:
        targets[rows, cols] = IGNORE
    hard = targets != IGNORE
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[hard].sum()
    if rows:
        nll = nll - (logp[rows, cols] * soft.to(logp.device)).sum()
    return nll / (per or target_count(examples))


def batches(examples: list[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """Batches of similar length (less padding), in random order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = size * 50
    out = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(examples[i].ids))
        out += [[examples[i] for i in chunk[j : j + size]] for j in range(0, len(chunk), size)]
    rng.shuffle(out)
    return out


def collate(batch: list[Example], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    ids, mask = pad_rows([e.ids for e in batch], pad_id)
    labels, _ = pad_rows([e.labels for e in batch], IGNORE)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def validation_loss(model, examples: list[Example], pad_id: int, device: str, size: int, herb_ids: torch.Tensor,
                    teacher_weight: float, set_loss: str = "mean") -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        total += sft_loss(model, collate(chunk, pad_id, device), chunk, herb_ids, teacher_weight, per=1,
                         set_loss=set_loss).item()
    model.train()
    return total / max(target_count(examples), 1)


def first_step_metrics(model, tokenizer, validation: list[dict]) -> dict[str, float]:
    scores = first_herb_logprobs(model, tokenizer, [e["symptoms"] for e in validation])
    return ranking_metrics(rank(scores), [set(e["herbs"]) for e in validation])


def train_sft(cfg: PipelineConfig, run_folder: RunFolder, resume: bool = False) -> Path:
    """Train, keep the best checkpoint by validation F1@10, and return its folder (RUN/sft/best)."""
    rank_, world, device = setup_distributed()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    sft = cfg.sft
    model, tokenizer = load_model(cfg.model, device)
    train = read_jsonl(run_folder.examples("train"))[: sft.max_train]
    revisions = read_jsonl(run_folder.revisions())[: sft.max_train] if sft.revision_share else []
    revision_count = round(sft.revision_share * len(revisions))
    validation = read_jsonl(run_folder.examples("validation"))[: sft.max_validation]
    out_dir = run_folder.stage("sft")
    wrapped = DistributedDataParallel(model) if world > 1 else model
    herb_ids = torch.tensor(herb_token_ids(tokenizer))
    order_free = set(herb_ids.tolist()) if sft.herb_targets == "set" else None
    teacher = CoOccurrence().fit(load_split("train", cfg.herb_lists)) if sft.teacher_weight else None
    train_priors = teacher_priors(teacher, train)
    if (sft.first_step_passes or sft.ranking_passes) and order_free is None:
        raise ValueError("sft.first_step_passes and sft.ranking_passes need herb_targets: set")
    herb_token = dict(zip(vocab().herbs, herb_ids.tolist(), strict=True))

    main_steps = math.ceil((len(train) * (1 + sft.first_step_passes) + revision_count) / (sft.batch_size * world))
    ranking_steps = math.ceil(len(train) / (sft.batch_size * world))
    epoch_steps = [main_steps] * sft.epochs + [ranking_steps] * sft.ranking_passes
    epoch_starts = [sum(epoch_steps[:e]) for e in range(len(epoch_steps))]
    schedule = (int(sft.warmup * main_steps * sft.epochs), main_steps * sft.epochs,
                ranking_steps * sft.ranking_passes, sft.ranking_lr / sft.lr)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": sft.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=sft.lr)
    loss_cases = validation[: sft.validation_loss_cases]  # the validation loss is only logged
    run = Training(cfg, model, tokenizer, optimizer,
              torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, *schedule)), validation,
              encode_all(tokenizer, loss_cases, [e["response"] for e in loss_cases], cfg, order_free,
                         teacher_priors(teacher, loss_cases)),
              herb_ids, out_dir, device, rank_ == 0,
              {"epoch": 0, "step": 0, "best": -1.0, "bad_evals": 0, "stopped": False, "log": []})
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume and (out_dir / "checkpoint.pt").exists():
        saved = torch.load(out_dir / "checkpoint.pt", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.state = saved["state"]

    bf16 = bf16_forward(sft.precision, device)
    if run.main:
        tqdm.write(f"sft: forward passes in {'bfloat16 autocast' if bf16 else 'float32'}")
    start_time = time.time()
    for epoch in range(run.state["epoch"], 0 if run.state["stopped"] else len(epoch_steps)):
        run.state["epoch"] = epoch
        rng = random.Random(cfg.seed * 1000 + epoch)  # the same batches on resume
        if epoch < sft.epochs:
            responses = [shuffled_response(e, rng) if sft.order == "shuffle" else e["response"] for e in train]
            examples = encode_all(tokenizer, train, responses, cfg, order_free, train_priors)
            examples += first_step_examples(tokenizer, train, train_priors, sft.first_step_passes, herb_token, rng)
            examples += revision_examples(tokenizer, revisions, revision_count, cfg, order_free, rng)
            desc = f"sft epoch {epoch + 1}/{sft.epochs}"
        else:
            examples = first_step_examples(tokenizer, train, train_priors, 1, herb_token, rng)
            desc = f"sft ranking pass {epoch - sft.epochs + 1}/{sft.ranking_passes}"
        epoch_batches = batches(examples, sft.batch_size, rng)[rank_::world][: epoch_steps[epoch]]
        eval_every = math.ceil(epoch_steps[epoch] / sft.evals_per_epoch)
        bar = tqdm(epoch_batches[run.state["step"] - epoch_starts[epoch]:], desc=desc, disable=not run.main,
                   unit="batch")
        for batch in bar:
            loss, per, rows = 0.0, target_count(batch), sft.micro_batch_size or len(batch)
            for start in range(0, len(batch), rows):  # gradients of the micro-batches add up to the batch's
                part = batch[start : start + rows]
                with torch.autocast(device, torch.bfloat16, enabled=bf16):
                    part_loss = sft_loss(wrapped, collate(part, tokenizer.pad_token_id, device), part, run.herb_ids,
                                         sft.teacher_weight, per, sft.set_loss)
                part_loss.backward()
                loss += part_loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            lr = run.scheduler.get_last_lr()[0]  # this step's; the scheduler then moves on to the next's
            optimizer.step()
            run.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.state["step"] += 1
            bar.set_postfix(loss=f"{loss:.3f}")
            in_epoch = run.state["step"] - epoch_starts[epoch]
            if (in_epoch % eval_every == 0 or in_epoch == epoch_steps[epoch]) and evaluate_and_checkpoint(
                    run, loss, lr, time.time() - start_time):
                return finish(run, world)
    return finish(run, world)


def bf16_forward(precision: str, device: str) -> bool:
    """Whether the training steps' forward passes run under bfloat16 autocast (SFTConfig.precision); "auto" asks
    whether the hardware multiplies bfloat16 matrices natively: a CUDA device that supports it, or a CPU whose AMX
    tiles oneDNN can use. With AVX512-BF16 alone, autocast made the default model's training slower than float32
    (docs/lab/2026-12-08-bf16-without-amx.md)."""
    if precision != "auto":
        return precision == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported() and torch._C._cpu._init_amx()


def lr_factor(step: int, warmup: int, main: int, ranking: int, ranking_scale: float) -> float:
    """The learning rate at an optimizer step, as a multiple of sft.lr: a linear warmup and a cosine decay over the
    `main` steps of the main epochs, then a second cosine decay from `ranking_scale` over the `ranking` steps of the
    ranking passes."""
    if step < warmup:
        return step / max(1, warmup)
    if step < main:
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, main - warmup)))
    return ranking_scale * 0.5 * (1 + math.cos(math.pi * (step - main) / max(1, ranking)))


def finish(run: Training, world: int) -> Path:
    if run.main:
        tune_stopping(run.out_dir / "best", run.validation, run.device, run.cfg.stopping, revision=False)
    if world > 1:
        dist.barrier()
    return run.out_dir / "best"


def evaluate_and_checkpoint(run: Training, train_loss: float, lr: float, elapsed: float) -> bool:
    """Log validation metrics, keep the best model, write a resumable checkpoint; True when patience runs out.
    Every rank computes the same validation numbers, so every rank takes the same decision."""
    state, size = run.state, run.cfg.sft.micro_batch_size or run.cfg.sft.batch_size * 2
    val_loss = validation_loss(run.model, run.val_examples, run.tokenizer.pad_token_id, run.device, size,
                               run.herb_ids, run.cfg.sft.teacher_weight, run.cfg.sft.set_loss)
    metrics = first_step_metrics(run.model, run.tokenizer, run.validation)
    entry = {"step": state["step"], "epoch": state["epoch"] + 1,
             "phase": "main" if state["epoch"] < run.cfg.sft.epochs else "ranking", "train_loss": train_loss,
             "val_loss": val_loss, "lr": lr,
             "val_P@5": metrics["P@5"], "val_F1@10": metrics["F1@10"], "elapsed_s": round(elapsed, 1)}
    state["log"].append(entry)
    improved = metrics["F1@10"] > state["best"]
    state["best"] = max(state["best"], metrics["F1@10"])
    state["bad_evals"] = 0 if improved else state["bad_evals"] + 1
    state["stopped"] = state["bad_evals"] >= run.cfg.sft.patience
    if run.main:
        tqdm.write(json.dumps(entry))
        if improved:
            write_model_metadata(save_model(run.model, run.tokenizer, run.out_dir / "best"))
        tmp = run.out_dir / "checkpoint.pt.tmp"
        torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "state": state}, tmp)
        tmp.replace(run.out_dir / "checkpoint.pt")
        write_json(state["log"], run.out_dir / "log.json")
    return state["stopped"]
