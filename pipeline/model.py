"""Models: the domain model (a small Qwen2-shaped decoder trained from scratch with the domain tokenizer), or any
local Hugging Face causal-LM folder fine-tuned with LoRA (optionally QLoRA, 4-bit, on a GPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from pipeline.config import ModelConfig
from pipeline.tokenizer import build_tokenizer


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


def load_model(cfg: ModelConfig, device: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A new domain model, or a pretrained base wrapped with LoRA adapters."""
    if cfg.base is None:
        tokenizer = build_tokenizer()
        model = new_domain_model(cfg, tokenizer)
        if cfg.dropout:
            add_residual_dropout(model, cfg.dropout)
        return model.to(device), tokenizer
    from peft import LoraConfig, get_peft_model

    base = Path(cfg.base)
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"{base} is not a Hugging Face model folder (no config.json); give a local folder")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"torch_dtype": torch.bfloat16 if device == "cuda" else torch.float32}
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    return (model if cfg.load_in_4bit else model.to(device)), tokenizer
