"""Inference backends behind one interface: next-token logits for a token sequence, reusing the computed prefix.
`LlamaBackend` runs a GGUF file with llama.cpp (layers on the GPU with `n_gpu_layers`); `HFBackend` runs a Hugging
Face folder with transformers (CUDA when present, else CPU; optional bitsandbytes 4/8-bit). Both check that the
model was made for this app's step format and herb vocabulary."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import numpy as np

from rxapp.decoding import FormatTokens
from rxapp.modelinfo import (
    HF_METADATA,
    ModelMismatchError,
    StopThresholds,
    check_metadata,
    format_version,
    stop_thresholds,
)
from rxapp.stepformat import encode_prompt

GGUF_MAGIC = b"GGUF"
QUANTIZATIONS = ("none", "4bit", "8bit")  # how an HF folder's weights are loaded (bitsandbytes), for a GPU


class ModelLoadError(RuntimeError):
    """The model file or folder is missing, truncated or not a model this app can run."""


class Backend:
    """Next-token logits over the model's vocabulary, with tokenization."""

    name = "base"
    eos: int
    format: FormatTokens  # the step format's tokens, checked at load: every herb one token
    n_ctx: int  # the longest token sequence the model takes
    stop_thresholds: StopThresholds = StopThresholds()  # the model's own, from its metadata
    format_version: int  # the step format it was trained on (rxapp.stepformat.READABLE_FORMATS)
    load_s: float = 0.0

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenize(prompt)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for the token after `ids`; the longest prefix shared with the previous call is not recomputed."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shared_prefix(a: list[int], b: list[int]) -> int:
    if len(b) >= len(a) and b[: len(a)] == a:  # the usual case, decoding on: one comparison in C
        return len(a)
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaBackend(Backend):
    name = "llama"  # n_ctx 0: the model's own context length

    def __init__(self, path: Path, n_gpu_layers: int = 0, n_threads: int | None = None, n_ctx: int = 0) -> None:
        import llama_cpp

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"{path} is not a GGUF file")
        started = time.perf_counter()
        try:
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, verbose=False,
                                       n_threads=n_threads or max(1, min(4, os.cpu_count() or 1)))
        except (ValueError, RuntimeError) as e:  # llama.cpp reports a truncated or foreign file this way
            raise ModelLoadError(f"llama.cpp could not load {path} (truncated or not a supported model): {e}") from e
        if self.llm.metadata.get("general.architecture") not in {"qwen2"}:
            self.close()
            raise ModelMismatchError(f"{path}: architecture {self.llm.metadata.get('general.architecture')!r} "
                                     "is not an rx model")
        try:
            check_metadata(self.llm.metadata, str(path))
        except ModelMismatchError:
            self.close()
            raise
        self.stop_thresholds = stop_thresholds(self.llm.metadata)
        self.format_version = format_version(self.llm.metadata)
        self.eos = self.llm.token_eos()
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()
        self.ids: list[int] = []
        self.format = FormatTokens.of(self.tokenize, str(path))
        self.load_s = time.perf_counter() - started

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> np.ndarray:
        keep = min(_shared_prefix(self.ids, ids), len(ids) - 1)
        self.llm.n_tokens = keep  # eval() drops the cache beyond it
        self.llm.eval(ids[keep:])
        self.ids = list(ids)
        logits = np.empty(self.n_vocab, dtype=np.float32)
        ctypes.memmove(logits.ctypes.data, self.llm._ctx.get_logits_ith(-1), logits.nbytes)  # a copy, and fast
        return logits

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model, tokenizer, metadata: dict[str, str], source: str) -> None:
        """A loaded transformers model and its tokenizer, with the rx metadata that declares them (`load` reads all
        three from a folder; a trainer passes the model it holds, e.g. LoRA adapters over their base)."""
        import torch

        check_metadata(metadata, source)
        self.stop_thresholds = stop_thresholds(metadata)
        self.format_version = format_version(metadata)
        self.torch, self.model, self.tokenizer = torch, model.eval(), tokenizer
        self.eos = tokenizer.eos_token_id
        self.n_ctx = model.config.max_position_embeddings
        self.ids: list[int] = []
        self.cache = None
        self.format = FormatTokens.of(self.tokenize, source)

    @classmethod
    def load(cls, path: Path, device: str | None = None, quantization: str = "none") -> HFBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
        if not (path / HF_METADATA).is_file():
            raise ModelMismatchError(f"{path} is not an rx model (no {HF_METADATA}); export it with "
                                     "`python -m pipeline export`")
        metadata = json.loads((path / HF_METADATA).read_text())
        check_metadata(metadata, str(path))  # before the weights are read
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs: dict = {}
        if quantization in {"4bit", "8bit"}:
            from transformers import BitsAndBytesConfig

            compute = torch.bfloat16 if device == "cuda" else torch.float32
            kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                bnb_4bit_compute_dtype=compute)
                                             if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
            kwargs["device_map"] = {"": device}  # quantized weights are placed while loading, not moved after
        elif quantization != "none":
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"transformers could not load {path}: {e}") from e
        if quantization == "none":
            model.to(device)
        backend = cls(model, tokenizer, metadata, str(path))
        backend.load_s = time.perf_counter() - started
        return backend

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def prompt_ids(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        keep = _shared_prefix(self.ids, ids)
        if self.cache is None or keep < len(self.ids) or keep == len(ids):
            self.cache, keep = None, 0  # not an extension of what is cached: start again
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids[keep:]], device=self.model.device),
                             past_key_values=self.cache, use_cache=True)
        self.cache, self.ids = out.past_key_values, list(ids)
        return out.logits[0, -1].float().cpu().numpy()


def load_backend(path: Path, backend: str | None = None, n_gpu_layers: int = 0, quantization: str = "none",
                 device: str | None = None) -> Backend:
    """A GGUF file runs on llama.cpp, a folder on transformers, unless `backend` ("llama" or "hf") says otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    kind = backend or ("hf" if path.is_dir() else "llama")
    if kind == "llama":
        if quantization != "none":
            raise ModelLoadError(f"{quantization} loading (bitsandbytes) is for HF folders; a GGUF file is "
                                 "quantized when it is exported (choose model-q4_k_m.gguf or model-q8_0.gguf)")
        if path.is_dir():
            found = sorted(path.glob("*.gguf"))
            if not found:
                raise ModelLoadError(f"no .gguf file in {path}")
            path = found[0]
        return LlamaBackend(path, n_gpu_layers=n_gpu_layers)
    if kind == "hf":
        folder = path / "hf" if (path / "hf" / "config.json").exists() else path
        return HFBackend.load(folder, device=device, quantization=quantization)
    raise ValueError(f"backend must be llama or hf, not {backend!r}")
