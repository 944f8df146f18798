"""The small BART (symptoms → herb list), trained from scratch with the domain tokenizer by `pipeline small`. It is
the small model of the preference stage (`pipeline prefs` compares the LLM's prescriptions with its output) and a row
of the evaluation table.

The encoder reads the LLM's own prompt; the decoder writes herb tokens in the distilled step order, then the end
token. Decoding is greedy over vocabulary herbs only, without repeats; the first decoder step's distribution ranks
the herbs, as for the LLM (`rxapp.ranking`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

from pipeline.config import SmallConfig
from pipeline.model.llm import pad_rows
from pipeline.model.scoring import herb_token_ids
from rxapp.ranking import rank_herbs
from rxapp.stepformat import encode_prompt, render_prompt
from rxapp.vocab import vocab

BART_MAX_HERBS = 20  # the BART's greedy lists stop here; the doctors' lists average 7 herbs


def new_small_model(cfg: SmallConfig, tokenizer) -> BartForConditionalGeneration:
    end = tokenizer.eos_token_id
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=cfg.d_model, encoder_layers=cfg.layers, decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, dropout=cfg.dropout, max_position_embeddings=128,
        pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=end, forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(config)


def encoder_ids(tokenizer, symptoms: Sequence[str]) -> list[int]:
    return encode_prompt(tokenizer, render_prompt(symptoms))


@torch.no_grad()
def predict(model, tokenizer, symptom_sets: Sequence[Sequence[str]], batch_size: int = 256
            ) -> tuple[list[list[str]], np.ndarray]:
    """Greedy herb lists (vocabulary herbs only, no repeats, 1 to BART_MAX_HERBS) and the first step's log-probability
    of every vocabulary herb (records × herbs)."""
    model.eval()
    herb_ids = torch.tensor(herb_token_ids(tokenizer))
    end = tokenizer.eos_token_id
    allowed = torch.full((len(tokenizer),), float("-inf"))
    allowed[herb_ids] = 0.0
    allowed[end] = 0.0
    name = dict(zip(herb_ids.tolist(), vocab().herbs, strict=True))
    lists, firsts = [], []
    for start in range(0, len(symptom_sets), batch_size):
        ids, mask = pad_rows([encoder_ids(tokenizer, s) for s in symptom_sets[start : start + batch_size]], end)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        written = torch.full((len(ids), 1), model.config.decoder_start_token_id)
        blocked = torch.zeros((len(ids), len(tokenizer)))
        done = torch.zeros(len(ids), dtype=torch.bool)
        for step in range(BART_MAX_HERBS + 1):
            logits = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=written).logits[:, -1]
            logits = logits + allowed + blocked
            if step == 0:  # every prescription holds at least one herb
                firsts.append(logits[:, herb_ids].log_softmax(dim=-1).numpy())
                logits[:, end] = float("-inf")
            chosen = logits.argmax(dim=-1) if step < BART_MAX_HERBS else torch.full((len(ids),), end)
            chosen[done] = end
            done |= chosen == end
            blocked[torch.arange(len(ids)), chosen] = float("-inf")
            written = torch.cat([written, chosen[:, None]], dim=1)
            if done.all():
                break
        lists += [[name[t] for t in row.tolist() if t != end] for row in written[:, 1:]]
    return lists, np.concatenate(firsts)


def rankings(model, tokenizer, symptom_sets: Sequence[Sequence[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """(herb lists, rankings by the shared rule)."""
    lists, scores = predict(model, tokenizer, symptom_sets)
    return lists, [rank_herbs(s) for s in scores]


def load_small(path: Path) -> tuple[BartForConditionalGeneration, object]:
    return BartForConditionalGeneration.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def is_small_model(path: Path) -> bool:
    config = path / "config.json"
    return config.exists() and json.loads(config.read_text()).get("model_type") == "bart"
