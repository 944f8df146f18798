"""Models: the domain model (a small Qwen2-shaped decoder trained from scratch with the domain tokenizer), or any
local Hugging Face causal-LM folder fine-tuned with LoRA (optionally QLoRA, 4-bit, on a GPU)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from pipeline.config import ModelConfig
from pipeline.model.tokenizer import build_tokenizer
from rxapp.stepformat import ADD, REMOVE
from rxapp.vocab import vocab


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded with `value` to the longest: on the right, or on the left for
    generation, so that every row's last token is in the last column."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), value)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def new_domain_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_length, attention_dropout=cfg.dropout, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def add_residual_dropout(model: Qwen2ForCausalLM, p: float) -> None:
    """Dropout on each attention and MLP output before it joins the residual stream (Qwen2 itself has attention
    dropout only): regularisation for a small model that would otherwise overfit. Training-time only: hooks are
    not saved with the weights."""
    def drop(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(output, p, module.training)

    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(drop)
        layer.mlp.down_proj.register_forward_hook(drop)


def add_herb_tokens(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Make every vocabulary herb and step action one token of a pretrained tokenizer, as they are in the domain
    tokenizer, so that herb scores and the stepper's herb constraints work the same for every model. A new token's
    embedding starts as the mean of the pieces it replaces. Returns the new token ids."""
    words = [w for w in (*vocab().herbs, ADD, REMOVE) if len(tokenizer.encode(w, add_special_tokens=False)) != 1]
    if not words:
        return []
    pieces = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    tokenizer.add_tokens(words)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(words)
    matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    with torch.no_grad():
        for weight in matrices.values():
            for token, old in zip(new_ids, pieces, strict=True):
                weight[token] = weight[old].mean(dim=0)
    return new_ids


def load_model(cfg: ModelConfig, device: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A new domain model (or a trained one to continue: `cfg.init`), or a pretrained base wrapped with LoRA
    adapters."""
    if cfg.base is None:
        if cfg.init:
            model, tokenizer = load_trained(Path(cfg.init))
            model.train()
        else:
            tokenizer = build_tokenizer()
            model = new_domain_model(cfg, tokenizer)
        if cfg.dropout:
            add_residual_dropout(model, cfg.dropout)
        return model.to(device), tokenizer
    from peft import get_peft_model

    base = Path(cfg.base)
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"{base} is not a Hugging Face model folder (no config.json); give a local folder")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32}
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    new_ids = add_herb_tokens(model, tokenizer)
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    # new tokens' embedding rows are trained beside the adapters (both ends when the output layer is not tied)
    trainable = None
    if new_ids:
        tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        trainable = {"embed_tokens": new_ids} if tied else {"embed_tokens": new_ids, "lm_head": new_ids}
    model = get_peft_model(model, lora_adapters(cfg, trainable))
    return (model if cfg.load_in_4bit else model.to(device)), tokenizer


def lora_adapters(cfg: ModelConfig, trainable_tokens: dict[str, list[int]] | None = None):
    """The LoRA adapters a pretrained base trains (every linear layer), and the token rows trained beside them."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM", trainable_token_indices=trainable_tokens)


def load_trained(path: Path, dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A trained model folder (full weights, or LoRA adapters over their base) and its tokenizer, for inference;
    in `dtype` when given, else as saved."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if (path / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path, **kwargs)
        # room for the herb tokens, whose trained rows the adapter folder carries; transformers' default mean
        # resizing would first fit a Gaussian to the whole vocabulary (minutes on a CPU for a 7B base's 152k rows)
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return PeftModel.from_pretrained(base, path).eval(), tokenizer
    if (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        raise FileNotFoundError(f"{path} is not a model folder (no config.json or adapter_config.json)")
    return model.eval(), AutoTokenizer.from_pretrained(path)
