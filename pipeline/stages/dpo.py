"""`pipeline dpo`: preference training with TRL's DPOTrainer from the SFT model, which is also the frozen
reference; then, optionally, TRL's KTOTrainer on the unpaired clinician feedback. The domain model trains all its
weights. A pretrained base trained with LoRA has its SFT adapters merged first and takes new adapters, so that the
adapter-disabled model TRL uses as reference is the SFT model. The result is saved as a full model folder, and its
stop threshold is re-tuned on validation (its length distribution has moved)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import PipelineConfig
from pipeline.model.llm import load_trained, lora_adapters
from pipeline.model.stopping import tune_stopping
from pipeline.model.training import default_device, save_model, seed_everything
from pipeline.runfolder import RunFolder, read_jsonl, write_json

PAIR_KEYS = ("prompt", "chosen", "rejected")
UNPAIRED_KEYS = ("prompt", "completion", "label")


def read_optional(path: Path) -> list[dict]:
    """The rows of a `pipeline prefs` file; none when the file is absent."""
    return read_jsonl(path) if path.exists() else []


def trl_rows(records: list[dict], keys: tuple[str, ...], tokenizer) -> list[dict]:
    """TRL rows: plain text for the domain model, chat turns for a base with a chat template (as SFT encodes)."""
    rows = [{k: r[k] for k in keys} for r in records]
    if getattr(tokenizer, "chat_template", None):
        for row in rows:
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
            for key in set(keys) - {"prompt", "label"}:
                row[key] = [{"role": "assistant", "content": row[key]}]
    return rows


def policy_and_adapters(cfg: PipelineConfig, sft_model: Path):
    """The model to train, and the LoRA config for a pretrained base (None for the domain model)."""
    model, tokenizer = load_trained(sft_model)
    if cfg.model.base is None:
        return model.train(), tokenizer, None
    return model.merge_and_unload().train(), tokenizer, lora_adapters(cfg.model)


def trainer_settings(cfg: PipelineConfig, out: Path) -> dict:
    cuda = torch.cuda.is_available()
    return {"output_dir": str(out), "learning_rate": cfg.dpo.lr, "num_train_epochs": cfg.dpo.epochs,
            "per_device_train_batch_size": cfg.dpo.batch_size, "beta": cfg.dpo.beta, "seed": cfg.seed,
            "max_length": cfg.model.max_length, "logging_steps": 10, "save_strategy": "no", "report_to": [],
            "use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported(), "lr_scheduler_type": "cosine"}


def train_dpo(cfg: PipelineConfig, run_folder: RunFolder, sft_model: Path) -> Path:
    """DPO (then KTO, when configured and there is unpaired feedback) on RUN/prefs; the model in RUN/dpo/best."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    seed_everything(cfg.seed)
    pairs = read_optional(run_folder.prefs / "pairs.jsonl")
    if not pairs:
        raise FileNotFoundError(f"no preference pairs in {run_folder.prefs} (run `python -m pipeline prefs` first)")
    out = run_folder.stage("dpo")
    model, tokenizer, lora = policy_and_adapters(cfg, sft_model)
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.dpo.sft_weight]} if cfg.dpo.sft_weight else {}
    trainer = DPOTrainer(model=model, args=DPOConfig(**trainer_settings(cfg, out / "trainer"), **losses),
                         train_dataset=Dataset.from_list(trl_rows(pairs, PAIR_KEYS, tokenizer)),
                         processing_class=tokenizer, peft_config=lora)
    trainer.train()
    log = {"dpo": trainer.state.log_history, "pairs": len(pairs)}
    model = trainer.model
    unpaired = read_optional(run_folder.prefs / "unpaired.jsonl")
    if cfg.dpo.kto and unpaired:
        if lora is not None:
            model = model.merge_and_unload()
        kto = KTOTrainer(model=model, args=KTOConfig(**trainer_settings(cfg, out / "kto-trainer")),
                         train_dataset=Dataset.from_list(trl_rows(unpaired, UNPAIRED_KEYS, tokenizer)),
                         processing_class=tokenizer, peft_config=lora)
        kto.train()
        log |= {"kto": kto.state.log_history, "unpaired": len(unpaired)}
        model = kto.model
    if lora is not None:
        model = model.merge_and_unload()
    best = save_model(model, tokenizer, out / "best")
    write_json(log, out / "log.json")
    tune_stopping(best, read_jsonl(run_folder.examples("validation"))[: cfg.sft.max_validation], default_device(),
                  cfg.stopping, revision=False)
    return best
