"""`pipeline unpack`: a domain-model GGUF written by `pipeline export` (the shipped default, say) back into a
trainable Hugging Face folder, its weights dequantised to fp32, so that later stages (GRPO, DPO, an α sweep) can
start from a model whose training folder is gone. The tokenizer is the project's own, checked token by token
against the GGUF's; the rx metadata (format, vocabulary, stop threshold) travels into rx.json. A GGUF carries no
dropout settings, so the folder has none."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipeline.model.tokenizer import build_tokenizer
from pipeline.model.training import save_model
from pipeline.release.export import gguf_fields
from rxapp.modelinfo import check_metadata, stop_thresholds, write_model_metadata


def qwen2_config(fields: dict, rows: int, tied: bool) -> Qwen2Config:
    def key(name: str):
        return fields[f"qwen2.{name}"]

    return Qwen2Config(
        vocab_size=rows, hidden_size=key("embedding_length"), intermediate_size=key("feed_forward_length"),
        num_hidden_layers=key("block_count"), num_attention_heads=key("attention.head_count"),
        num_key_value_heads=key("attention.head_count_kv"), max_position_embeddings=key("context_length"),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon"), rope_theta=key("rope.freq_base"),
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=fields["tokenizer.ggml.eos_token_id"],
        pad_token_id=fields.get("tokenizer.ggml.padding_token_id"),
    )


def unpack(gguf_path: Path, out_dir: Path) -> Path:
    """Write `out_dir` (config, fp32 safetensors, tokenizer, rx.json) from a Qwen2 domain-model GGUF."""
    import gguf

    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; unpack writes a new folder")
    reader = gguf.GGUFReader(str(gguf_path))
    fields = gguf_fields(reader)
    if fields.get("general.architecture") != "qwen2":
        raise ValueError(f"{gguf_path}: only Qwen2 GGUFs can be unpacked, not {fields.get('general.architecture')}")
    check_metadata(fields, str(gguf_path))
    tokenizer = build_tokenizer()
    tokens = fields["tokenizer.ggml.tokens"]
    ours = [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    if tokens[:len(ours)] != ours:
        raise ValueError(f"{gguf_path}: its tokenizer is not the domain tokenizer (a pretrained base's export "
                         "cannot be unpacked; keep its training folder)")
    tensors = {t.name: t for t in reader.tensors}
    model = Qwen2ForCausalLM(qwen2_config(fields, len(tokens), tied="output.weight" not in tensors))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, model.config.num_hidden_layers)
    state = {}
    tied = model.config.tie_word_embeddings
    for name, like in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # the token embedding, as in llama.cpp
        tensor = tensors[names.get_name(name, try_suffixes=(".weight", ".bias"))]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        state[name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(like.shape)
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write_model_metadata(save_model(model, tokenizer, staging), stop_thresholds(fields))
    staging.rename(out_dir)
    return out_dir
