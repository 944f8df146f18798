"""Batched, format-constrained greedy generation with a Hugging Face model (evaluation and preference sampling).

The 症状分析 of the default format follows from the prompt, so it is given, not generated; from 【处方】 on, a
logits processor keeps decoding inside the step format exactly as the app's stepper does (rxapp.decoding): after
a step only 加 (another step) or 【 (stop; 【方解】 is then given) may follow, after 加 only a vocabulary herb not
already prescribed, and an explanation's 主治/用于 claims may only name the patient's symptoms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from rxapp.decoding import FormatTokens, claim_targets
from rxapp.stepformat import SUMMARY_HEADER, encode_prompt, render_analysis, render_prompt, steps_prefix
from rxapp.vocab import vocab


class StepConstraints(LogitsProcessor):
    """The token-level step format (rxapp.decoding) as a transformers logits processor: format markers, herbs, and
    the symptoms an explanation's claims may name, as in the app's stepper."""

    def __init__(self, tokenizer, start: int, symptom_sets: Sequence[Sequence[str]]) -> None:
        self.tokenize = lambda text: tokenizer.encode(text, add_special_tokens=False)
        self.format = FormatTokens.of(self.tokenize)
        self.start = start  # generated tokens begin here (the width of the left-padded input)
        self.symptom_sets = symptom_sets
        self.herb_names = dict(zip(self.format.herbs, vocab().herbs, strict=True))
        self.header = self.tokenize(SUMMARY_HEADER + "\n")  # begins with the stop token 【
        self.claims: dict[tuple[int, int], dict[int, list[int]]] = {}  # (row, herb token) -> claim_targets

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.start :].tolist()
            allowed = self.format.allowed(generated)
            if self.format.stop in generated:
                given = len(generated) - generated.index(self.format.stop)
                allowed = [self.header[given]] if given < len(self.header) else None
            chosen = self.format.chosen(generated)
            if allowed is None and chosen and self.format.stop not in generated:  # inside a step's explanation
                key = (row, chosen[-1])
                if key not in self.claims:
                    self.claims[key] = claim_targets(self.tokenize, self.herb_names[key[1]], self.symptom_sets[row])
                allowed = self.claims[key].get(generated[-1])
                if allowed is None:
                    scores[row, self.format.stop] = float("-inf")
            if allowed is not None:
                mask = torch.full_like(scores[row], float("-inf"))
                mask[allowed] = 0.0
                scores[row] = scores[row] + mask
        return scores


@torch.no_grad()
def generate_responses(model, tokenizer, symptom_sets: Sequence[Sequence[str]], batch_size: int = 64,
                       max_new_tokens: int = 320, desc: str = "generate") -> list[str]:
    """One greedy response per symptom set."""
    device = next(model.parameters()).device
    model.eval()
    responses = []
    for start in tqdm(range(0, len(symptom_sets), batch_size), desc=desc, unit="batch", disable=None):
        prefixes = [steps_prefix(render_analysis(s)) for s in symptom_sets[start : start + batch_size]]
        inputs = [encode_prompt(tokenizer, render_prompt(s)) + tokenizer.encode(p, add_special_tokens=False)
                  for s, p in zip(symptom_sets[start : start + batch_size], prefixes, strict=True)]
        width = max(map(len, inputs))
        ids = torch.full((len(inputs), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             logits_processor=LogitsProcessorList([StepConstraints(
                                 tokenizer, width, symptom_sets[start : start + batch_size])]))
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        responses += [p + t for p, t in zip(prefixes, texts, strict=True)]
    return responses
