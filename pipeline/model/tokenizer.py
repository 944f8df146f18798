"""The domain tokenizer of the default model: byte-level BPE whose merges are constructed so that every vocabulary
herb and symptom, every 功效 phrase the teacher writes, and every word of the format is one token; any other text
still encodes, byte by byte.

It uses the pre-tokenizer of llama.cpp's `qwen2` tokenizer type and no normalizer (text is NFKC-cleaned before it
reaches the model), so a GGUF file can carry the same tokenizer and tokenize identically.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from itertools import pairwise

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rxapp.knowledge import herb_actions
from rxapp.stepformat import FORMAT_WORDS, render_explanation, render_prompt, render_response
from rxapp.vocab import vocab

END_OF_TEXT = "<|endoftext|>"  # end of a response, and padding
PRE_TOKENIZER_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                         r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_alphabet() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the others
    are mapped in order onto code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def domain_words() -> list[str]:
    """Everything that must be one token: herbs, symptoms, the teacher's 功效 phrases, the format's words."""
    v = vocab()
    actions = {a for herb in v.herbs for a in herb_actions(herb)}
    return sorted({*v.herbs, *v.symptoms, *actions, *FORMAT_WORDS})


def format_characters() -> set[str]:
    """Characters the format writes around the words (punctuation, newlines, the 方解's 共治), plus printable
    ASCII."""
    steps = [("甘草", render_explanation(["补脾益气"], "咳嗽")), ("桔梗", render_explanation(["祛痰"], "咳嗽")),
             ("麻黄", "（）")]
    sample = render_prompt(["咳嗽", "恶寒"], True) + render_response("主症：咳嗽。", steps)
    return set(sample) | set(string.printable) | set("（）【】：、，；。")


def _apply_merges(units: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(units) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairwise(units))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        units[i : i + 2] = [units[i] + units[i + 1]]
    return units


def build_tokenizer(words: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Build the tokenizer: bytes, then each character's bytes merged into one token, then each word's characters
    merged, shortest words first, each from the pieces that the merges so far make of it."""
    words = sorted(set(domain_words() if words is None else words), key=lambda w: (len(w), w))
    alphabet = byte_alphabet()
    vocab_ids: dict[str, int] = {END_OF_TEXT: 0}
    for b in range(256):
        vocab_ids[alphabet[b]] = len(vocab_ids)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add_merge(left: str, right: str) -> None:
        if (left, right) not in ranks:
            ranks[(left, right)] = len(merges)
            merges.append((left, right))
            vocab_ids.setdefault(left + right, len(vocab_ids))

    def encode_char(c: str) -> str:
        return "".join(alphabet[b] for b in c.encode("utf-8"))

    characters = sorted({c for w in words for c in w} | format_characters())
    for c in characters:
        pieces = [alphabet[b] for b in c.encode("utf-8")]
        for i in range(1, len(pieces)):
            add_merge("".join(pieces[:i]), pieces[i])
    for word in words:
        if len(word) < 2 or not word.isalpha():  # the pre-tokenizer would split it anyway
            continue
        pieces = _apply_merges([encode_char(c) for c in word], ranks)
        for i in range(1, len(pieces)):
            add_merge("".join(pieces[:i]), pieces[i])

    tokenizer = Tokenizer(models.BPE(vocab=vocab_ids, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                   clean_up_tokenization_spaces=False)
