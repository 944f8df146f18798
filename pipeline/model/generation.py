"""Batched, format-constrained generation with a Hugging Face model: greedy (evaluation) or sampled (preferences).

The 症状分析 of the default format follows from the prompt, so it is given, not generated; from 【处方】 on, a
logits processor keeps decoding inside the step format exactly as the app's stepper does (rxapp.decoding): after
a step only 加 (another step) or 【 (stop; 【方解】 is then given) may follow, chosen by the greedy stop rule
(`greedy_stop` and the herb limit); after 加 only a vocabulary herb not already prescribed; and an explanation
cites what the app's claim rule allows (rxapp.decoding.claim_rule: the herb's actions, tied to the patient's symptoms).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from pipeline.model.llm import pad_rows
from rxapp.decoding import MAX_DECODED_HERBS, ClaimRule, FormatTokens, claim_rule, greedy_stop, stop_probability
from rxapp.modelinfo import StopThresholds
from rxapp.stepformat import SUMMARY_HEADER, encode_prompt, render_analysis, render_prompt, steps_prefix
from rxapp.vocab import vocab


class StepConstraints(LogitsProcessor):
    """The token-level step format (rxapp.decoding) as a transformers logits processor: format markers, herbs, and
    the symptoms an explanation's claims may name, as in the app's stepper."""

    def __init__(self, tokenizer, start: int, symptom_sets: Sequence[Sequence[str]], stop: StopThresholds) -> None:
        # memoised: the claim rules encode the same actions and symptoms again for every row and herb
        self.tokenize = cache(lambda text: tuple(tokenizer.encode(text, add_special_tokens=False)))
        self.format = FormatTokens.of(self.tokenize)
        self.start = start  # generated tokens begin here (the width of the left-padded input)
        self.symptom_sets = symptom_sets
        self.stop_threshold = stop.scratch
        self.max_herbs = stop.most_herbs(False, MAX_DECODED_HERBS)
        self.herb_names = dict(zip(self.format.herbs, vocab().herbs, strict=True))
        self.header = self.tokenize(SUMMARY_HEADER + "\n")  # begins with the stop token 【
        self.claims: dict[tuple[int, int], ClaimRule] = {}  # (row, herb token) -> its explanation's claim rule
        self.stop_probabilities: dict[int, list[float]] = {}  # row -> at each step boundary so far

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.start :].tolist()
            allowed = self.format.allowed(generated, self.max_herbs)
            if self.format.stop in generated:
                given = len(generated) - generated.index(self.format.stop)
                allowed = [self.header[given]] if given < len(self.header) else None
            chosen = self.format.chosen(generated)
            if allowed is None and chosen and self.format.stop not in generated:  # inside a step's explanation
                key = (row, chosen[-1])
                if key not in self.claims:
                    self.claims[key] = claim_rule(self.tokenize, self.herb_names[key[1]], self.symptom_sets[row])
                allowed = self.claims[key].allowed(self.format.explanation(generated))
                if allowed is None:  # free text, which never holds a step's marker (rxapp.stepper.free_text)
                    scores[row, [self.format.stop, self.format.remove]] = float("-inf")
            if allowed == [self.format.add, self.format.stop]:  # a step boundary: the greedy stop rule decides
                seen = self.stop_probabilities.setdefault(row, [])
                if len(seen) < len(chosen):
                    seen.append(stop_probability(scores[row, self.format.add].item(),
                                                 scores[row, self.format.stop].item()))
                allowed = [self.format.stop] if greedy_stop(seen, self.stop_threshold) else [self.format.add]
            if allowed is not None:
                mask = torch.full_like(scores[row], float("-inf"))
                mask[allowed] = 0.0
                scores[row] = scores[row] + mask
        return scores


@torch.no_grad()
def decode(model, tokenizer, symptom_sets: Sequence[Sequence[str]], stop: StopThresholds, batch_size: int = 64,
           max_new_tokens: int = 320, desc: str = "generate", temperature: float = 0.0, steps_only: bool = False
           ) -> list[tuple[str, list[float]]]:
    """One response per symptom set built from nothing, greedy (or sampled at `temperature` > 0; the stop rule
    stays `stop`, the model's own), with the model's stop probability at each of its step boundaries. With
    `steps_only`, a response ends at its stop marker 【, before the 方解, for a caller that reads the steps alone."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in tqdm(range(0, len(symptom_sets), batch_size), desc=desc, unit="batch", disable=None):
        chunk = symptom_sets[start : start + batch_size]
        prefixes = [steps_prefix(render_analysis(s)) for s in chunk]
        inputs = [encode_prompt(tokenizer, render_prompt(s)) + tokenizer.encode(p, add_special_tokens=False)
                  for s, p in zip(chunk, prefixes, strict=True)]
        ids, mask = pad_rows(inputs, tokenizer.pad_token_id, left=True)
        width = ids.shape[1]
        constraints = StepConstraints(tokenizer, width, chunk, stop)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {
            "do_sample": False}
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **sampling,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=[tokenizer.eos_token_id, constraints.format.stop] if steps_only
                                   else tokenizer.eos_token_id,
                                   logits_processor=LogitsProcessorList([constraints]))
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        out += [(p + t, constraints.stop_probabilities.get(row, []))
                for row, (p, t) in enumerate(zip(prefixes, texts, strict=True))]
    return out


def generate_responses(model, tokenizer, symptom_sets: Sequence[Sequence[str]], stop: StopThresholds,
                       batch_size: int = 64) -> list[str]:
    """One greedy response per symptom set, stopping by the model's from-nothing stop rule."""
    return [text for text, _ in decode(model, tokenizer, symptom_sets, stop, batch_size)]
