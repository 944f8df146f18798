"""The LoRA path for a pretrained base: a local Hugging Face folder (built here: a tiny random Qwen2 with a chat
template and a general tokenizer, in which herbs take several tokens) gets one token per herb, is fine-tuned with
peft adapters and evaluated."""

import json
import subprocess
import sys

import yaml
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from pipeline.model.tokenizer import build_tokenizer
from rxapp.stepformat import FORMAT_WORDS
from tests.conftest import ROOT

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_lora_fine_tuning_of_a_local_base(tmp_path, cli):
    base = tmp_path / "base"
    tokenizer = build_tokenizer(FORMAT_WORDS)  # characters only: every herb name takes several tokens
    assert len(tokenizer.encode("当归")) > 1
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(base)
    config = yaml.safe_load((ROOT / "configs" / "micro.yaml").read_text())
    config["model"] = {"base": str(base), "lora_r": 4, "lora_alpha": 8}
    config["sft"].update(max_train=256, max_validation=64, epochs=1, lr=0.01)
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))

    result = subprocess.run([sys.executable, "-m", "pipeline", "sft", "--config", str(tmp_path / "lora.yaml"),
                             "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = tmp_path / "run" / "sft" / "best"
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and not (best / "model.safetensors").exists()  # adapters only, the base untouched
    assert set(adapter["trainable_token_indices"]) == {"embed_tokens", "lm_head"}  # the new herb tokens' rows
    assert len(AutoTokenizer.from_pretrained(best).encode("当归")) == 1

    evaluated = cli("-m", "pipeline", "evaluate", "--model", str(best), "--split", "validation", "--limit", "16",
                    "--baseline", "cooccurrence", "--json")
    assert evaluated.returncode == 2 and "not allowed with" in evaluated.stderr  # one kind of thing at a time
    evaluated = cli("-m", "pipeline", "evaluate", "--model", str(best), "--split", "validation", "--limit", "16",
                    "--json", "--out", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [r for r in json.loads(evaluated.stdout) if not r["model"].startswith("Δ")]  # Δ: against each baseline
    assert [(r["lists"], r["n"]) for r in rows] == [("raw", 16), ("clean", 16)]
