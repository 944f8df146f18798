"""Batched, format-constrained greedy generation with a Hugging Face model (evaluation and preference sampling).

The 症状分析 of the default format follows from the prompt, so it is given, not generated; from 【处方】 on, a
logits processor keeps decoding inside the step format: after a step only 加 (another step) or 【 (stop, on to
【方解】) may follow, and after 加 only a vocabulary herb not already prescribed.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from pipeline.scoring import herb_token_ids
from rxapp.stepformat import ADD, encode_prompt, render_analysis, render_prompt, steps_prefix

MAX_HERBS = 50  # the longest training prescription has 43 herbs


class StepConstraints(LogitsProcessor):
    def __init__(self, tokenizer, start: int, max_herbs: int = MAX_HERBS) -> None:
        self.add = tokenizer.encode(ADD, add_special_tokens=False)[0]
        self.stop = tokenizer.encode("【", add_special_tokens=False)[0]
        self.newline = tokenizer.encode("\n", add_special_tokens=False)[0]
        self.herbs = herb_token_ids(tokenizer)
        self.start = start  # generated tokens begin here (the width of the left-padded input)
        self.max_herbs = max_herbs

    def allowed(self, generated: list[int]) -> list[int] | None:
        """Token ids allowed next, or None where the format leaves the model free (explanations, 方解)."""
        if self.stop in generated:
            return None
        last = generated[-1] if generated else self.newline  # the input ends with 【处方】 and a newline
        chosen = {t for prev, t in pairwise(generated) if prev == self.add}
        if last == self.add:
            return [h for h in self.herbs if h not in chosen]
        if last == self.newline:
            if not chosen:
                return [self.add]
            return [self.stop] if len(chosen) >= self.max_herbs else [self.add, self.stop]
        return None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            allowed = self.allowed(input_ids[row, self.start :].tolist())
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
                             logits_processor=LogitsProcessorList([StepConstraints(tokenizer, width)]))
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        responses += [p + t for p, t in zip(prefixes, texts, strict=True)]
    return responses
