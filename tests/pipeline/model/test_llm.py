"""Loading the model SFT trains: fresh weights, or a trained domain model to continue from."""

import torch

from pipeline.config import ModelConfig
from pipeline.model.llm import load_model, load_trained


def test_a_model_to_continue_starts_from_its_weights_and_tokenizer_in_training_mode(micro_run):
    best = micro_run / "sft" / "best"
    continued, tokenizer = load_model(ModelConfig(init=str(best), hidden_size=32), "cpu")
    trained, trained_tokenizer = load_trained(best)
    assert continued.training and continued.config.hidden_size == trained.config.hidden_size  # the folder's size
    assert tokenizer.get_vocab() == trained_tokenizer.get_vocab()
    weights = trained.state_dict()
    assert all(torch.equal(w, weights[name]) for name, w in continued.state_dict().items())
    fresh, _ = load_model(ModelConfig(hidden_size=trained.config.hidden_size, intermediate_size=256, layers=2,
                                      heads=2, kv_heads=1), "cpu")
    assert not torch.equal(fresh.state_dict()["model.embed_tokens.weight"], weights["model.embed_tokens.weight"])
