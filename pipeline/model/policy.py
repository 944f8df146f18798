"""The app's stepper as a policy over actions, for a Hugging Face model: rollouts sampled in batches with a KV cache,
and the log-probability of each of their decisions recomputed with gradients, both exactly as the stepper decides.

At each step boundary the policy stops, with the probability the app reads (rxapp.decoding.stop_probability:
σ(ℓ【 − ℓ加) at the newline that ends a line), or adds a herb, drawn among the vocabulary herbs with each drug's
other names folded into its one name and every drug of the list masked (rxapp.stepper.addition_costs), less the
safety screen when one is set, at temperature T. Sampling the stop at the model's own probability samples the
model's length distribution, of which the app's greedy rule (stop once Π(1 − p) falls to the model's threshold)
decodes one quantile: the trainer and the app share one stop rule. Before the first herb only 加 may follow, as in
the app, so that boundary holds no stop decision. Between decisions each step line's explanation is the knowledge
teacher's, the text SFT taught the model to write, so rollouts decode no free text and no reward reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from pipeline.model.llm import pad_rows
from rxapp.decoding import FormatTokens, stop_probability
from rxapp.safety import Patient
from rxapp.stepformat import render_step
from rxapp.stepper import StepperConfig, addition_costs, other_names, pool_names
from rxapp.vocab import vocab


@dataclass
class Decision:
    marker: int  # index in Rollout.ids of the newline whose next-token logits decide 加 or 【
    forced: bool  # only 加 could follow (no herb in the list yet): no stop decision here
    herb: int | None  # vocabulary index of the herb added (its 加 is at marker + 1); None: stopped
    cost: np.ndarray  # per vocabulary herb, what the stepper subtracts from its pooled logit (∞: not allowed)
    logp: float  # log π(this action) when it was sampled


@dataclass
class Rollout:
    ids: list[int]  # the state's prompt and response so far, then one line per herb added, without padding
    start: tuple[str, ...]  # the list the rollout began from
    patient: Patient
    decisions: list[Decision] = field(default_factory=list)

    @property
    def added(self) -> list[str]:
        return [vocab().herbs[d.herb] for d in self.decisions if d.herb is not None]

    @property
    def herbs(self) -> list[str]:
        return [*self.start, *self.added]

    @property
    def stopped(self) -> bool:  # by the policy's own decision, not by the step limit
        return bool(self.decisions) and self.decisions[-1].herb is None


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


class StepPolicy:
    """A model and its tokenizer, deciding as the stepper does."""

    def __init__(self, model, tokenizer, temperature: float, screen: StepperConfig, max_herbs: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.format = FormatTokens.of(lambda text: tokenizer.encode(text, add_special_tokens=False))
        self.herb_tokens = torch.tensor(self.format.herbs)
        self.temperature, self.screen, self.max_herbs = temperature, screen, max_herbs

    def line_tokens(self, herb: str, explanation: str) -> list[int]:
        """The tokens of a 加 line after its 加: the herb, its explanation, the newline."""
        ids = self.tokenizer.encode(render_step(herb, explanation), add_special_tokens=False)
        if ids[:2] != [self.format.add, self.format.herbs[vocab().herb_id[herb]]] or ids[-1] != self.format.newline:
            raise ValueError(f"the step line of {herb} does not tokenise as 加, the herb, …, a newline")
        return ids[1:]

    @torch.no_grad()
    def sample(self, prefixes: Sequence[list[int]], starts: Sequence[tuple[str, ...]], patients: Sequence[Patient],
               explain: Callable[[int, str], str], rng: np.random.Generator) -> list[Rollout]:
        """One rollout per prefix (the prompt and the response up to a step boundary, its list `starts[i]`);
        `explain(i, herb)` writes row i's explanation of a herb."""
        device = next(self.model.parameters()).device
        rollouts = [Rollout(list(p), tuple(s), patient) for p, s, patient in zip(prefixes, starts, patients,
                                                                                  strict=True)]
        chunks = [[self.format.add] for _ in rollouts]  # each row's tokens not yet in the cache
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
                chunks[row] = self.decide(rollouts[row], logits[row, 0], logits[row, 1], explain, row, rng)
                if chunks[row] is None:
                    open_rows.remove(row)
            width = max((len(c) for c in chunks if c), default=0)
            if not width:
                break
            new = torch.full((len(rollouts), width), self.tokenizer.pad_token_id)
            new_mask = torch.zeros((len(rollouts), width), dtype=torch.long)
            for row in open_rows:  # left-padded chunks: every row's 加 lands in the last column
                new[row, width - len(chunks[row]):] = torch.tensor(chunks[row])
                new_mask[row, width - len(chunks[row]):] = 1
            ids, mask = new, torch.cat([mask, new_mask], dim=1)
        return rollouts

    def decide(self, rollout: Rollout, marker_logits: torch.Tensor, herb_logits: torch.Tensor,
               explain: Callable[[int, str], str], row: int, rng: np.random.Generator) -> list[int] | None:
        """One decision of one rollout; the tokens it appends after its 加 (its line, then the next 加), or None when
        the rollout ends."""
        herbs = rollout.herbs
        if len(herbs) >= self.max_herbs:
            return None
        marker = len(rollout.ids) - 1
        forced = not herbs
        p_stop = stop_probability(marker_logits[self.format.add].item(), marker_logits[self.format.stop].item())
        cost = addition_costs(herbs, rollout.patient, self.screen)
        z = pool_names(herb_logits[self.herb_tokens].numpy()) - cost
        if not np.isfinite(z).any():
            return None  # nothing may be added: the stepper stops here too
        if not forced and rng.random() < p_stop:
            rollout.decisions.append(Decision(marker, False, None, cost, math.log(p_stop)))
            return None
        p = np.exp((z - z.max()) / self.temperature)
        p /= p.sum()
        herb = int(rng.choice(len(p), p=p))
        continued = 0.0 if forced else math.log1p(-p_stop)
        rollout.decisions.append(Decision(marker, forced, herb, cost, continued + math.log(p[herb])))
        line = self.line_tokens(vocab().herbs[herb], explain(row, vocab().herbs[herb]))
        rollout.ids += [self.format.add, *line]
        return [*line, self.format.add]

    def log_probs(self, model, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every decision of the rollouts, in order: log π(action), the stop logit σ⁻¹(p_stop), and the log
        distribution over the vocabulary herbs (−∞ where not allowed). `model`: the policy or its reference."""
        device = next(model.parameters()).device
        ids, mask = pad_rows([r.ids for r in rollouts], self.tokenizer.pad_token_id)
        rows = torch.tensor([i for i, r in enumerate(rollouts) for _ in r.decisions])
        markers = torch.tensor([d.marker for r in rollouts for d in r.decisions])
        hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        head = model.get_output_embeddings()
        at_marker = head(hidden[rows, markers]).float()
        at_herb = head(hidden[rows, (markers + 1).clamp(max=ids.shape[1] - 1)]).float()
        stop_logit = at_marker[:, self.format.stop] - at_marker[:, self.format.add]
        cost = torch.tensor(np.stack([d.cost for r in rollouts for d in r.decisions]), device=device,
                            dtype=torch.float32)
        herb_logp = ((fold_names(at_herb[:, self.herb_tokens.to(device)]) - cost) / self.temperature).log_softmax(-1)
        chosen = torch.tensor([-1 if d.herb is None else d.herb for r in rollouts for d in r.decisions],
                              device=device)
        forced = torch.tensor([d.forced for r in rollouts for d in r.decisions], device=device)
        added = chosen >= 0
        logp = torch.where(added, herb_logp.gather(1, chosen.clamp(min=0)[:, None])[:, 0]
                           + torch.where(forced, 0.0, torch.nn.functional.logsigmoid(-stop_logit)),
                           torch.nn.functional.logsigmoid(stop_logit))
        return logp, stop_logit, herb_logp
