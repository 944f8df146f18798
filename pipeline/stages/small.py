"""`pipeline small`: train the small BART (symptoms → herb list; `pipeline.model.bart`) from scratch with the
domain tokenizer, keeping the epoch with the best validation F1@10."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from pipeline.config import PipelineConfig
from pipeline.metrics import ranking_metrics
from pipeline.model.bart import encoder_ids, new_small_model, rankings
from pipeline.model.llm import pad_rows
from pipeline.model.scoring import herb_token_ids
from pipeline.model.tokenizer import build_tokenizer
from pipeline.model.training import IGNORE, save_model
from pipeline.runfolder import RunFolder, read_jsonl, write_json
from rxapp.vocab import vocab


def train_small(cfg: PipelineConfig, run_folder: RunFolder) -> Path:
    """Train, keep the checkpoint with the best validation F1@10 in RUN/small/best, and return that folder."""
    small = cfg.small
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = new_small_model(small, tokenizer)
    train = read_jsonl(run_folder.examples("train"))[: small.max_train]
    validation = read_jsonl(run_folder.examples("validation"))[: small.max_validation]
    out_dir = run_folder.stage("small")
    herb_token = dict(zip(vocab().herbs, herb_token_ids(tokenizer), strict=True))
    pairs = [(encoder_ids(tokenizer, e["symptoms"]), [herb_token[h] for h in e["herbs"]] + [tokenizer.eos_token_id])
             for e in train]
    optimizer = torch.optim.AdamW(model.parameters(), lr=small.lr, weight_decay=small.weight_decay)
    steps = math.ceil(len(pairs) / small.batch_size) * small.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.05 * steps), steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    log, best, bad, start = [], -1.0, 0, time.time()
    for epoch in range(small.epochs):
        model.train()
        random.shuffle(pairs)
        bar = tqdm(range(0, len(pairs), small.batch_size), desc=f"small epoch {epoch + 1}/{small.epochs}",
                   unit="batch", disable=None)
        for first in bar:
            batch = pairs[first : first + small.batch_size]
            ids, mask = pad_rows([p[0] for p in batch], tokenizer.eos_token_id)
            labels, _ = pad_rows([p[1] for p in batch], IGNORE)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        _, ranked = rankings(model, tokenizer, [e["symptoms"] for e in validation])
        metrics = ranking_metrics(ranked, [set(e["herbs"]) for e in validation])
        entry = {"epoch": epoch + 1, "train_loss": loss.item(), "val_P@5": metrics["P@5"],
                 "val_F1@10": metrics["F1@10"], "elapsed_s": round(time.time() - start, 1)}
        log.append(entry)
        tqdm.write(json.dumps(entry))
        bad = 0 if metrics["F1@10"] > best else bad + 1
        if not bad:
            best = metrics["F1@10"]
            save_model(model, tokenizer, out_dir / "best")
        write_json(log, out_dir / "log.json")
        if bad >= small.patience:
            break
    return out_dir / "best"
