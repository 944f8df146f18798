"""`pipeline export`: a trained model folder becomes a merged Hugging Face folder, a GGUF f16 file written here
with the `gguf` library (the Qwen2 architecture: the domain model and Qwen2.5 bases), and GGUF quantisations made
by llama.cpp's own quantizer. The GGUF carries the tokenizer and the step-format metadata, so that the file alone is
a usable model."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.model.llm import load_trained
from pipeline.model.training import save_model
from rxapp.modelinfo import model_metadata, saved_stop_thresholds, write_model_metadata

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2"}
QUANTISATIONS = ("q8_0", "q4_k_m")
SHIPPED = "q4_k_m"  # the quantisation the app ships, so the one that evaluation scores
# llama.cpp's pre-tokenizer whose split pattern is the domain tokenizer's (pipeline.model.tokenizer) and Qwen2.5's
PRE_TOKENIZER = "qwen2"


def merge(model_dir: Path, out_dir: Path) -> Path:
    """LoRA adapters merged into their base (or a full model copied), saved as fp32 safetensors with the tokenizer
    and the trained folder's metadata."""
    model, tokenizer = load_trained(model_dir, torch.float32)
    if hasattr(model, "merge_and_unload"):  # LoRA adapters
        model = model.merge_and_unload()
    save_model(model, tokenizer, out_dir)
    write_model_metadata(out_dir, saved_stop_thresholds(model_dir))
    return out_dir


def tokenizer_vocabulary(tokenizer, rows: int) -> tuple[list[str], list[int], list[str]]:
    """GGUF tokens, token types and merges of a byte-level BPE tokenizer, padded to the embedding's rows."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "BPE":
        raise ValueError(f"only byte-level BPE tokenizers can be exported, not {state['model']['type']}")
    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [gguf.TokenType.UNUSED] * rows
    for text, i in tokenizer.get_vocab().items():
        if i < rows:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        if i < rows:  # added tokens are matched as plain text, before byte-level BPE
            tokens[i] = added.content
            types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return tokens, types, merges


def write_gguf(hf_dir: Path, path: Path) -> Path:
    """GGUF f16 (norms and biases f32) of a Qwen2 folder, with its tokenizer and the rx metadata."""
    import gguf

    model, tokenizer = load_trained(hf_dir, torch.float32)
    config = model.config
    arch = ARCHITECTURES.get(config.architectures[0] if config.architectures else type(model).__name__)
    if arch is None:
        raise ValueError(f"{hf_dir}: architecture {config.architectures} is not exportable; "
                         f"supported: {sorted(ARCHITECTURES)}")
    state = model.state_dict()
    tmp = path.with_suffix(".gguf.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(hf_dir.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    tokens, types, merges = tokenizer_vocabulary(tokenizer, state["model.embed_tokens.weight"].shape[0])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for key, value in model_metadata(saved_stop_thresholds(hf_dir)).items():
        writer.add_string(key, value)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses the token embedding
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{hf_dir}: no GGUF name for tensor {name}")
        data = tensor.numpy()
        writer.add_tensor(gguf_name, data.astype(np.float16 if data.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def quantize(source: Path, path: Path, kind: str) -> Path:
    """A GGUF quantisation (q8_0 or q4_k_m) by llama.cpp's own quantizer."""
    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    if kind not in ftypes:
        raise ValueError(f"unknown quantisation {kind!r}; choose from {sorted(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    tmp = path.with_suffix(".gguf.tmp")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {kind}")
    tmp.replace(path)
    return path


def export(model_dir: Path, out_dir: Path, quantisations: tuple[str, ...] = QUANTISATIONS) -> dict[str, Path]:
    """Every export of one trained model: `hf/`, `model-f16.gguf` and `model-<quant>.gguf`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = ["hf", "f16", *quantisations]
    paths: dict[str, Path] = {}
    with tqdm(total=len(steps), desc="export", unit="file", disable=None) as bar:
        paths["hf"] = merge(model_dir, out_dir / "hf")
        bar.update()
        paths["f16"] = write_gguf(paths["hf"], out_dir / "model-f16.gguf")
        bar.update()
        for kind in quantisations:
            paths[kind] = quantize(paths["f16"], out_dir / f"model-{kind}.gguf", kind)
            bar.update()
    return paths


def gguf_fields(reader) -> dict:
    """A GGUF's key/value metadata as plain Python values (`reader`: a gguf.GGUFReader)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def shipped_gguf(model_dir: Path, out_dir: Path) -> Path:
    """A trained model exported as the app ships it (the GGUF that evaluation scores)."""
    return export(model_dir, out_dir, (SHIPPED,))[SHIPPED]
