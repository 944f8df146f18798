"""Export of the micro model: the GGUF files load in llama.cpp, carry the rx metadata, tokenize every test prompt as
the Hugging Face tokenizer does, and decode greedily as the fp32 model does; `pipeline unpack` gives the weights
back as a trainable folder."""

import json

import llama_cpp
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.data.records import load_split
from pipeline.model.llm import load_trained
from rxapp.modelinfo import FORMAT_KEY, HF_METADATA, REVISION_STOP_KEY, STOP_KEY, VOCABULARY_KEY, check_metadata
from rxapp.stepformat import encode_prompt, render_prompt

NEAR_TIE = 1e-3  # a greedy choice this close to a tie may go either way under f16 weights
Q4_NEAR_TIE = 0.05  # llama.cpp's Q4_K kernels also round the activations to 8 bits: ties are wider


@pytest.fixture(scope="module")
def hf(micro_export):
    return (AutoModelForCausalLM.from_pretrained(micro_export / "hf").eval(),
            AutoTokenizer.from_pretrained(micro_export / "hf"))


def load(path, **kwargs) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False, **kwargs)


def test_export_writes_every_format(micro_export):
    names = {p.name for p in micro_export.iterdir()}
    assert {"hf", "model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"} <= names
    sizes = [(micro_export / f"model-{q}.gguf").stat().st_size for q in ("f16", "q8_0", "q4_k_m")]
    assert sizes == sorted(sizes, reverse=True)  # each quantisation is smaller


@pytest.mark.parametrize("quant", ["f16", "q4_k_m"])
def test_gguf_carries_the_rx_metadata(micro_export, quant):
    llm = load(micro_export / f"model-{quant}.gguf", vocab_only=True)
    try:
        check_metadata(llm.metadata, "model")  # raises on a mismatch
        assert {FORMAT_KEY, VOCABULARY_KEY} <= llm.metadata.keys()
        tuned = json.loads((micro_export.parent / "sft" / "best" / HF_METADATA).read_text())
        for key in (STOP_KEY, REVISION_STOP_KEY):  # the stop thresholds tuned after training travel along
            assert llm.metadata[key] == tuned[key]
    finally:
        llm.close()


def test_gguf_tokenizer_matches_on_every_test_prompt(micro_export, hf):
    _, tokenizer = hf
    llm = load(micro_export / "model-f16.gguf", vocab_only=True)
    try:
        records = load_split("test")
        mismatched = [r.id for r in records if encode_prompt(tokenizer, render_prompt(r.symptoms))
                      != llm.tokenize(render_prompt(r.symptoms).encode(), add_bos=False, special=True)]
    finally:
        llm.close()
    assert len(records) == 3443 and mismatched == []


def greedy_hf(model, ids: list[int], n: int, eos: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos)[0, len(ids):].tolist()
    return out[:-1] if out and out[-1] == eos else out


def greedy_gguf(llm: llama_cpp.Llama, ids: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        if token == llm.token_eos() or len(out) == n:
            break
        out.append(token)
    return out


@torch.no_grad()
def test_f16_gguf_decodes_greedily_as_the_fp32_model(micro_export, hf):
    model, tokenizer = hf
    llm = load(micro_export / "model-f16.gguf")
    identical, ties = 0, 0
    try:
        for record in load_split("test")[:50]:
            ids = encode_prompt(tokenizer, render_prompt(record.symptoms))
            ours, theirs = greedy_hf(model, ids, 160, tokenizer.eos_token_id), greedy_gguf(llm, ids, 160)
            if ours == theirs:
                identical += 1
                continue
            first = next(i for i, (a, b) in enumerate(zip([*ours, -1], [*theirs, -1], strict=False)) if a != b)
            top2 = model(torch.tensor([ids + ours[:first]])).logits[0, -1].log_softmax(-1).topk(2).values
            assert float(top2[0] - top2[1]) < NEAR_TIE, f"{record.id}: outputs part at token {first} without a tie"
            ties += 1
    finally:
        llm.close()
    assert identical >= 45, f"only {identical} of 50 identical ({ties} parted at near-ties)"


def test_unpack_gives_back_the_f16_weights_exactly(micro_export, hf, tmp_path, cli):
    out = tmp_path / "unpacked"
    result = cli("-m", "pipeline", "unpack", "--gguf", str(micro_export / "model-f16.gguf"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    model, tokenizer = hf
    unpacked, unpacked_tokenizer = load_trained(out)
    assert unpacked_tokenizer.get_vocab() == tokenizer.get_vocab()
    for (name, ours), theirs in zip(model.state_dict().items(), unpacked.state_dict().values(), strict=True):
        assert torch.equal(ours.half().float() if ours.ndim == 2 else ours, theirs), name  # f16 matrices, f32 norms
    assert json.loads((out / HF_METADATA).read_text()) == json.loads((micro_export / "hf" / HF_METADATA).read_text())
    again = cli("-m", "pipeline", "unpack", "--gguf", str(micro_export / "model-f16.gguf"), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr


@torch.no_grad()
def test_unpacked_q4_k_m_decodes_greedily_as_llama_cpp_does(micro_export, tmp_path, cli):
    out = tmp_path / "unpacked-q4"
    result = cli("-m", "pipeline", "unpack", "--gguf", str(micro_export / "model-q4_k_m.gguf"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    model, tokenizer = load_trained(out)
    llm = load(micro_export / "model-q4_k_m.gguf")
    margins = []
    try:
        for record in load_split("test")[:20]:
            ids = encode_prompt(tokenizer, render_prompt(record.symptoms))
            ours, theirs = greedy_hf(model, ids, 160, tokenizer.eos_token_id), greedy_gguf(llm, ids, 160)
            if ours != theirs:
                first = next(i for i, (a, b) in enumerate(zip([*ours, -1], [*theirs, -1], strict=False)) if a != b)
                top2 = model(torch.tensor([ids + ours[:first]])).logits[0, -1].log_softmax(-1).topk(2).values
                margins.append(float(top2[0] - top2[1]))
    finally:
        llm.close()
    assert len(margins) <= 10 and all(m < Q4_NEAR_TIE for m in margins), margins
