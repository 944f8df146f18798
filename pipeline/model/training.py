"""What every training stage shares: process setup (seeds, torchrun), the label that carries no loss, saving a
trained model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

IGNORE = -100  # the label of a position without loss (prompt tokens, padding), as torch's cross-entropy expects


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_distributed() -> tuple[int, int, str]:
    """(rank, world size, device) under torchrun, or (0, 1, device) for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = default_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, device


def save_model(model, tokenizer, folder: Path) -> Path:
    """A trained model's weights and tokenizer, as a Hugging Face folder."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
