"""Model scores for herbs with a Hugging Face model: the first-step herb distribution, used for model selection
on validation and for ranking the herbs a prescription did not generate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.model.llm import pad_rows
from rxapp.stepformat import ADD, encode_prompt, render_analysis, render_prompt, steps_prefix
from rxapp.vocab import vocab


def herb_token_ids(tokenizer) -> list[int]:
    """The token id of every vocabulary herb, in vocabulary order (each herb must be one token)."""
    ids = [tokenizer.encode(h, add_special_tokens=False) for h in vocab().herbs]
    multi = [h for h, i in zip(vocab().herbs, ids, strict=True) if len(i) != 1]
    if multi:
        raise ValueError(f"{len(multi)} herbs are not single tokens for this tokenizer (e.g. {multi[:3]})")
    return [i[0] for i in ids]


def first_step_ids(tokenizer, symptoms: Sequence[str], pregnant: bool = False) -> list[int]:
    """Prompt and response up to the first herb of the first step (…【处方】\\n加)."""
    prefix = steps_prefix(render_analysis(symptoms)) + ADD
    return encode_prompt(tokenizer, render_prompt(symptoms, pregnant)) + tokenizer.encode(prefix,
                                                                                       add_special_tokens=False)


@torch.no_grad()
def first_herb_logprobs(model, tokenizer, symptom_sets: Sequence[Sequence[str]], batch_size: int = 128
                        ) -> np.ndarray:
    """log P(first herb = h | prompt) for every vocabulary herb: (records × herbs)."""
    herb_ids = torch.tensor(herb_token_ids(tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(symptom_sets), batch_size):
        seqs = [first_step_ids(tokenizer, s) for s in symptom_sets[start : start + batch_size]]
        ids, mask = pad_rows(seqs, tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = logits[torch.arange(len(seqs)), mask.sum(dim=1).to(device) - 1].float().log_softmax(dim=-1)
        out.append(last[:, herb_ids.to(device)].cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)

