"""The app's stepper as a policy over actions, for a Hugging Face model: rollouts sampled in batches with a KV cache,
and the log-probability of each of their decisions recomputed with gradients, both exactly as the stepper decides.

At each step boundary the policy stops, with the probability the app reads (rxapp.decoding.stop_probability:
σ(ℓ【 − log Σ e^ℓ over the moves allowed) at the newline that ends a line), or makes a move: it adds a herb (加), drawn
among the vocabulary herbs with each drug's other names folded into its one name and every drug of the list masked
(rxapp.stepper.addition_costs), less the safety screen when one is set, at temperature T; or, revising a draft, it
removes (减) one of the draft's herbs still held, drawn among those at T. 加 and 减 are chosen by the model's own
probabilities of the two markers, of which the app's greedy decoding takes the likelier. Sampling the stop at the
model's own probability samples the model's length distribution, of which the app's greedy rule (stop once
Π(1 − p) falls to the model's threshold) decodes one quantile: the trainer and the app share one stop rule. Before
the first herb only 加 may follow, as in the app, so that boundary holds no stop decision; a removed herb is never
added again (rxapp.decoding.FormatTokens.allowed). Between decisions each step line's explanation is the knowledge
teacher's, the text SFT taught the model to write, so rollouts decode no free text and no reward reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
import torch

from pipeline.model.llm import pad_rows
from rxapp.decoding import FormatTokens
from rxapp.safety import Patient
from rxapp.stepformat import render_step
from rxapp.stepper import StepperConfig, addition_costs, other_names, pool_names
from rxapp.vocab import vocab

MOVES = ("add", "remove", "stop")  # the actions at a step boundary, in the order of `Decision.allowed`


@dataclass
class Decision:
    marker: int  # index in Rollout.ids of the newline whose next-token logits decide 加, 减 or 【
    allowed: tuple[bool, bool, bool]  # which of MOVES the format allows there (no 【 before the first herb)
    action: str  # one of MOVES
    herb: int | None  # vocabulary index of the herb added or removed (its marker is at marker + 1); None: stopped
    cost: np.ndarray  # per vocabulary herb, what the stepper subtracts from this action's herb logits (∞: not allowed)
    logp: float  # log π(this action) when it was sampled


@dataclass
class Rollout:
    ids: list[int]  # the state's prompt and response so far, then one line per move, without padding
    start: tuple[str, ...]  # the list the rollout began from
    patient: Patient
    decisions: list[Decision] = field(default_factory=list)
    draft: tuple[str, ...] = ()  # the draft under revision, whose herbs may be removed (): building from nothing
    pending: Decision | None = None  # a 减 chosen, its herb not yet: the next logits are those after the 减

    def moved(self, action: str) -> list[str]:
        return [vocab().herbs[d.herb] for d in self.decisions if d.action == action]

    @property
    def added(self) -> list[str]:
        return self.moved("add")

    @property
    def removed(self) -> list[str]:
        return self.moved("remove")

    @property
    def herbs(self) -> list[str]:
        gone = set(self.removed)
        return [h for h in [*self.start, *self.added] if h not in gone]

    @property
    def removable(self) -> list[str]:
        return [h for h in self.herbs if h in self.draft]

    @property
    def stopped(self) -> bool:  # by the policy's own decision, not by the step limit
        return bool(self.decisions) and self.decisions[-1].action == "stop"


@cache
def _folds() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each drug's one name that has other names, the indices of all its names (padded with one past the last
    herb), and a mask of the other names: rxapp.stepper.other_names in the shape fold_names needs."""
    names, one_name = other_names()
    groups: dict[int, list[int]] = {}
    for name, one in zip(names.tolist(), one_name.tolist(), strict=True):
        groups.setdefault(one, [one]).append(name)
    width, count = max(map(len, groups.values())), len(vocab().herbs)
    index = torch.tensor([g + [count] * (width - len(g)) for g in groups.values()])
    others = torch.zeros(count, dtype=torch.bool)
    others[torch.as_tensor(names)] = True
    return torch.tensor(list(groups)), index, others


def fold_names(herb_logits: torch.Tensor) -> torch.Tensor:
    """rxapp.stepper.pool_names for a batch of torch logits [N × herbs], differentiable (no in-place update)."""
    ones, index, others = (t.to(herb_logits.device) for t in _folds())
    padded = torch.cat([herb_logits, herb_logits.new_full((len(herb_logits), 1), -torch.inf)], dim=1)
    pooled = herb_logits.scatter(1, ones.expand(len(herb_logits), -1), padded[:, index].logsumexp(-1))
    return pooled.masked_fill(others, -torch.inf)


def log_softmax(values: np.ndarray) -> np.ndarray:
    return values - np.logaddexp.reduce(values)


def sample(logp: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(len(logp), p=np.exp(logp)))


class StepPolicy:
    """A model and its tokenizer, deciding as the stepper does."""

    def __init__(self, model, tokenizer, temperature: float, screen: StepperConfig, max_herbs: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.format = FormatTokens.of(lambda text: tokenizer.encode(text, add_special_tokens=False))
        self.herb_tokens = torch.tensor(self.format.herbs)
        self.markers = torch.tensor([self.format.add, self.format.remove, self.format.stop])  # in MOVES' order
        self.temperature, self.screen, self.max_herbs = temperature, screen, max_herbs

    def line_tokens(self, herb: str, explanation: str, action: str) -> list[int]:
        """The tokens of a step line after its marker: the herb, its explanation, the newline."""
        ids = self.tokenizer.encode(render_step(herb, explanation, action), add_special_tokens=False)
        marker = self.format.add if action == "add" else self.format.remove
        if ids[:2] != [marker, self.format.herbs[vocab().herb_id[herb]]] or ids[-1] != self.format.newline:
            raise ValueError(f"the step line of {herb} does not tokenise as its marker, the herb, …, a newline")
        return ids[1:]

    @torch.no_grad()
    def sample(self, prefixes: Sequence[list[int]], starts: Sequence[tuple[str, ...]], patients: Sequence[Patient],
               explain: Callable[[int, str, str], str], rng: np.random.Generator,
               drafts: Sequence[tuple[str, ...]] | None = None) -> list[Rollout]:
        """One rollout per prefix (the prompt and the response up to a step boundary, its list `starts[i]`);
        `explain(i, herb, action)` writes row i's explanation of adding or removing a herb; `drafts[i]`: the draft
        row i revises (its prompt names it), () or None where it builds from nothing."""
        device = next(self.model.parameters()).device
        rollouts = [Rollout(list(p), tuple(s), patient, draft=tuple(d)) for p, s, patient, d in
                    zip(prefixes, starts, patients, drafts or [()] * len(prefixes), strict=True)]
        # each row's tokens not yet in the cache; 加 goes in ahead of the decision, so that one pass gives both the
        # decision's logits and, for an addition, the herb's
        chunks = [[self.format.add] for _ in rollouts]
        open_rows, cache = list(range(len(rollouts))), None
        ids, mask = pad_rows([r.ids + c for r, c in zip(rollouts, chunks, strict=True)], self.tokenizer.pad_token_id,
                             left=True)
        while open_rows:
            # positions count real tokens only, so that padding (on the left, then inside each row) changes nothing
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
            out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                             position_ids=positions.to(device), past_key_values=cache, use_cache=True, logits_to_keep=2)
            cache, logits = out.past_key_values, out.logits.float().cpu()
            for row in list(open_rows):
                chunks[row] = self.decide(rollouts[row], logits[row, 0], logits[row, -1], explain, row, rng)
                if chunks[row] is None:
                    open_rows.remove(row)
                elif chunks[row][0] == self.format.remove:
                    mask[row, -1] = 0  # the 加 put in ahead is not this row's: hidden, as if never written
            width = max((len(c) for c in chunks if c), default=0)
            if not width:
                break
            new = torch.full((len(rollouts), width), self.tokenizer.pad_token_id)
            new_mask = torch.zeros((len(rollouts), width), dtype=torch.long)
            for row in open_rows:  # left-padded chunks: every row's last token lands in the last column
                new[row, width - len(chunks[row]):] = torch.tensor(chunks[row])
                new_mask[row, width - len(chunks[row]):] = 1
            ids, mask = new, torch.cat([mask, new_mask], dim=1)
        return rollouts

    def first_steps(self, prefixes: Sequence[list[int]], patients: Sequence[Patient]) -> list[Rollout]:
        """For each prompt with its response up to the first step boundary, a rollout of the first 加 alone, whose
        herb distribution (`log_probs`' third value) is the first step's: the ranking of every herb the app returns.
        Its herb is a placeholder, the first one allowed; nothing reads its probability."""
        rollouts = []
        for prefix, patient in zip(prefixes, patients, strict=True):
            cost = addition_costs([], patient, self.screen)
            first = Decision(len(prefix) - 1, (True, False, False), "add", int(np.flatnonzero(np.isfinite(cost))[0]),
                             cost, 0.0)
            rollouts.append(Rollout([*prefix, self.format.add], (), patient, [first]))
        return rollouts

    def decide(self, rollout: Rollout, marker_logits: torch.Tensor, herb_logits: torch.Tensor,
               explain: Callable[[int, str, str], str], row: int, rng: np.random.Generator) -> list[int] | None:
        """One decision of one rollout; the tokens it feeds next (its line, then the 加 put in ahead; or 减 alone,
        whose herb the next pass chooses), or None when the rollout ends. `herb_logits`: after the last token fed."""
        if rollout.pending is not None:
            return self.remove(rollout, herb_logits, explain, row, rng)
        herbs = rollout.herbs
        if len(herbs) >= self.max_herbs:
            return None
        cost = addition_costs(herbs, rollout.patient, self.screen)
        cost[[vocab().herb_id[h] for h in rollout.removed]] = math.inf  # a herb removed is never added again
        z = pool_names(herb_logits[self.herb_tokens].numpy()) - cost
        if not np.isfinite(z).any():
            return None  # nothing may be added: the stepper stops here too
        allowed = (True, bool(rollout.removable), bool(herbs))
        moves = log_softmax(np.where(allowed, marker_logits[self.markers].numpy(), -np.inf))
        # the stop first, at the app's stop probability, then 加 or 减 given a move
        action = "stop" if allowed[2] and rng.random() < math.exp(moves[2]) else "add"
        if action == "add" and allowed[1]:
            action = MOVES[sample(log_softmax(moves[:2]), rng)]
        marker = len(rollout.ids) - 1
        if action == "stop":
            rollout.decisions.append(Decision(marker, allowed, "stop", None, cost, float(moves[2])))
            return None
        if action == "remove":
            removal = np.full(len(z), math.inf)
            removal[[vocab().herb_id[h] for h in rollout.removable]] = 0.0
            rollout.pending = Decision(marker, allowed, "remove", None, removal, float(moves[1]))
            rollout.ids.append(self.format.remove)
            return [self.format.remove]
        p = log_softmax((z - z.max()) / self.temperature)
        herb = sample(p, rng)
        rollout.decisions.append(Decision(marker, allowed, "add", herb, cost, float(moves[0] + p[herb])))
        line = self.line_tokens(vocab().herbs[herb], explain(row, vocab().herbs[herb], "add"), "add")
        rollout.ids += [self.format.add, *line]
        return [*line, self.format.add]

    def remove(self, rollout: Rollout, herb_logits: torch.Tensor, explain: Callable[[int, str, str], str], row: int,
               rng: np.random.Generator) -> list[int]:
        """The herb of a pending 减, drawn among the draft's herbs still held, as the stepper draws it (no folding:
        the list holds each drug under one name)."""
        pending, rollout.pending = rollout.pending, None
        z = herb_logits[self.herb_tokens].numpy() - pending.cost
        p = log_softmax((z - z.max()) / self.temperature)
        herb = sample(p, rng)
        rollout.decisions.append(replace(pending, herb=herb, logp=pending.logp + float(p[herb])))
        line = self.line_tokens(vocab().herbs[herb], explain(row, vocab().herbs[herb], "remove"), "remove")
        rollout.ids += line
        return [*line, self.format.add]

    def log_probs(self, model, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every decision of the rollouts, in order: log π(action), the log distribution over MOVES and over the
        vocabulary herbs of its move (−∞ where not allowed). `model`: the policy or its reference."""
        device = next(model.parameters()).device
        decisions = [d for r in rollouts for d in r.decisions]
        ids, mask = pad_rows([r.ids for r in rollouts], self.tokenizer.pad_token_id)
        rows = torch.tensor([i for i, r in enumerate(rollouts) for _ in r.decisions])
        markers = torch.tensor([d.marker for d in decisions])
        hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        head = model.get_output_embeddings()
        allowed = torch.tensor([d.allowed for d in decisions], device=device)
        at_marker = head(hidden[rows, markers]).float()[:, self.markers.to(device)]
        move_logp = at_marker.masked_fill(~allowed, -torch.inf).log_softmax(-1)
        at_herb = head(hidden[rows, (markers + 1).clamp(max=ids.shape[1] - 1)]).float()
        at_herb = at_herb[:, self.herb_tokens.to(device)]
        removing = torch.tensor([d.action == "remove" for d in decisions], device=device)
        cost = torch.tensor(np.stack([d.cost for d in decisions]), device=device, dtype=torch.float32)
        herb_logp = ((torch.where(removing[:, None], at_herb, fold_names(at_herb)) - cost)
                     / self.temperature).log_softmax(-1)
        action = torch.tensor([MOVES.index(d.action) for d in decisions], device=device)
        chosen = torch.tensor([-1 if d.herb is None else d.herb for d in decisions], device=device)
        logp = move_logp.gather(1, action[:, None])[:, 0] + torch.where(
            chosen >= 0, herb_logp.gather(1, chosen.clamp(min=0)[:, None])[:, 0], 0.0)
        return logp, move_logp, herb_logp
