"""The micro config trains and evaluates inside the test suite: one process, resumed, and two processes (gloo)."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import yaml
from transformers import AutoTokenizer

from pipeline.model.tokenizer import build_tokenizer
from rxapp.modelinfo import HF_METADATA, REVISION_STOP_KEY, STOP_KEY, StopThresholds, stop_thresholds
from tests.conftest import ROOT


def test_sft_writes_the_best_model_a_checkpoint_and_a_log(micro_run):
    best = micro_run / "sft" / "best"
    assert (best / "config.json").exists() and (best / "model.safetensors").exists()
    assert (micro_run / "sft" / "checkpoint.pt").exists()
    log = json.loads((micro_run / "sft" / "log.json").read_text())
    assert len(log) >= 2 and {"val_loss", "val_P@5", "val_F1@10"} <= log[0].keys()
    assert log[-1]["val_loss"] < log[0]["val_loss"]  # it learns
    saved = json.loads((best / HF_METADATA).read_text())
    assert {STOP_KEY, REVISION_STOP_KEY} <= saved.keys()
    tuned = stop_thresholds(saved)  # building from nothing tuned on validation; revising, at export (test_run)
    assert 0.05 <= tuned.scratch <= 0.95 and tuned.revision == StopThresholds().revision


def test_saved_tokenizer_reloads_identically(micro_run):
    reloaded = AutoTokenizer.from_pretrained(micro_run / "sft" / "best")
    built = build_tokenizer()
    text = (micro_run / "distill" / "validation.jsonl").read_text(encoding="utf-8")[:20000]
    assert reloaded.encode(text) == built.encode(text)


def test_resume_continues_from_the_checkpoint(micro_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy)
    before = json.loads((copy / "sft" / "log.json").read_text())
    result = subprocess.run([sys.executable, "-m", "pipeline", "sft", "--config", "configs/micro.yaml", "--out",
                             str(copy), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((copy / "sft" / "log.json").read_text()) == before  # finished runs are not redone


def test_training_again_writes_the_same_weights(micro_run, tmp_path):
    """A run reproduces its model: SFT again on the same data and config, on the same machine, writes the same
    bytes (under bfloat16 autocast where the CPU has AMX: sft.precision auto)."""
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy, ignore=shutil.ignore_patterns("sft"))
    result = subprocess.run([sys.executable, "-m", "pipeline", "sft", "--config", "configs/micro.yaml", "--out",
                             str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = "sft/best/model.safetensors"
    assert (copy / weights).read_bytes() == (micro_run / weights).read_bytes()


def test_model_evaluation_reports_grounding_and_validity(micro_run, cli, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("-m", "pipeline", "evaluate", "--model", str(micro_run / "sft" / "best"), "--split", "validation",
                 "--limit", "40", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout)[0]  # raw herb lists, then clean
    assert row["n"] == 40 and {"P@5", "F1@10", "grounding", "format_validity", "incompat_rate"} <= row.keys()
    assert "cooccurrence" in result.stderr  # shown beside the baselines


def test_two_process_data_parallel_training_on_gloo(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "micro.yaml").read_text())
    config["sft"].update(max_train=256, max_validation=64, epochs=1)  # a quarter of the micro slice, one epoch
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config, allow_unicode=True))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", "-m", "pipeline", "sft", "--config", str(small),
                             "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((tmp_path / "run" / "sft" / "log.json").read_text())
    # (256 examples + a quarter as many revision examples) / 32 per batch, then one ranking pass (256 / 32)
    steps_one_process = (256 + 64) // 32 + 256 // 32
    assert log[-1]["step"] == steps_one_process // 2  # each rank takes half the batches


def test_the_ranking_phase_follows_the_main_epochs_at_its_own_learning_rate(micro_run):
    from pipeline.config import PipelineConfig

    sft = PipelineConfig.load(ROOT / "configs" / "micro.yaml").sft
    log = json.loads((micro_run / "sft" / "log.json").read_text())
    main = [e for e in log if e["phase"] == "main"]
    ranking = [e for e in log if e["phase"] == "ranking"]
    assert len(main) == sft.epochs * sft.evals_per_epoch and len(ranking) == sft.ranking_passes * sft.evals_per_epoch
    assert log == main + ranking and ranking[-1]["step"] == main[-1]["step"] + 32  # 1024 copies / 32 per batch
    assert main[0]["lr"] > sft.ranking_lr >= ranking[0]["lr"] > ranking[-1]["lr"]


def test_the_learning_rate_warms_up_decays_and_restarts_lower_for_the_ranking_phase():
    from pipeline.stages.sft import lr_factor

    warmup, main, ranking, scale = 10, 100, 40, 0.15
    factors = [lr_factor(step, warmup, main, ranking, scale) for step in range(main + ranking + 1)]
    rises = [b >= a for a, b in itertools.pairwise(factors)]
    assert factors[0] == 0 and factors[warmup] == 1 and factors[main - 1] < 1e-3
    assert all(rises[:warmup]) and not any(rises[warmup:main - 1])  # warmup, then the main cosine
    assert factors[main] == scale and not any(rises[main:]) and factors[-1] < 1e-12  # the ranking phase's cosine


def test_first_step_copies_train_the_whole_prescription_at_the_first_herb(micro_run):
    import random

    import numpy as np
    import torch

    from pipeline.model.llm import load_trained
    from pipeline.model.scoring import first_step_ids, herb_token_ids
    from pipeline.model.training import IGNORE
    from pipeline.runfolder import read_jsonl
    from pipeline.stages.sft import collate, first_step_examples, sft_loss
    from rxapp.vocab import vocab

    model, tokenizer = load_trained(micro_run / "sft" / "best")
    records = read_jsonl(micro_run / "distill" / "validation.jsonl")[:16]
    herb_ids = herb_token_ids(tokenizer)
    herb_token = dict(zip(vocab().herbs, herb_ids, strict=True))
    priors = [np.full(len(herb_ids), 1 / len(herb_ids), dtype=np.float32)] * len(records)
    copies = first_step_examples(tokenizer, records, priors, 2, herb_token, random.Random(0))
    assert len(copies) == 2 * len(records)
    for copy, record in zip(copies, records * 2, strict=True):
        (position, target), = copy.herb_steps
        assert position == len(copy.ids) - 1 and set(copy.labels) == {IGNORE}
        assert target == [herb_token[h] for h in record["herbs"]]  # every herb of the prescription
        prefix = tokenizer.decode(copy.ids[:position])
        assert sorted(tokenizer.decode(first_step_ids(tokenizer, record["symptoms"]))) == sorted(prefix)
    pairs = zip(copies, records * 2, strict=True)
    shuffled = [c.ids[:-1] != first_step_ids(tokenizer, r["symptoms"]) for c, r in pairs]
    assert any(shuffled)  # symptom order varies between copies
    model.train()
    loss = sft_loss(model, collate(copies, tokenizer.pad_token_id, "cpu"), copies, torch.tensor(herb_ids), 0.5)
    loss.backward()
    assert torch.isfinite(loss) and model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_micro_batches_give_the_whole_batchs_gradient(micro_run):
    import torch

    from pipeline.config import PipelineConfig
    from pipeline.model.llm import load_trained
    from pipeline.model.scoring import herb_token_ids
    from pipeline.runfolder import read_jsonl
    from pipeline.stages.sft import collate, encode_all, sft_loss, target_count

    model, tokenizer = load_trained(micro_run / "sft" / "best")
    model.eval()  # no dropout: the two passes see the same function
    records = read_jsonl(micro_run / "distill" / "validation.jsonl")[:6]
    herb_ids = torch.tensor(herb_token_ids(tokenizer))
    examples = encode_all(tokenizer, records, [r["response"] for r in records], PipelineConfig(),
                          set(herb_ids.tolist()), [None] * len(records))

    def gradient(rows: int) -> torch.Tensor:
        model.zero_grad()
        for start in range(0, len(examples), rows):
            part = examples[start : start + rows]
            sft_loss(model, collate(part, tokenizer.pad_token_id, "cpu"), part, herb_ids, 0.0,
                     target_count(examples)).backward()
        return model.get_input_embeddings().weight.grad.clone()

    whole, in_parts = gradient(len(examples)), gradient(2)
    assert whole.abs().sum() > 0 and torch.allclose(whole, in_parts, atol=1e-6)
    assert target_count(examples) > sum(len(r["herbs"]) for r in records)  # the explanations' tokens count too


def test_set_loss_sum_makes_every_herb_still_to_add_a_target_of_its_own(micro_run):
    import random

    import torch

    from pipeline.model.llm import load_trained
    from pipeline.model.scoring import herb_token_ids
    from pipeline.runfolder import read_jsonl
    from pipeline.stages.sft import collate, first_step_examples, sft_loss
    from rxapp.vocab import vocab

    model, tokenizer = load_trained(micro_run / "sft" / "best")
    model.eval()
    record = next(r for r in read_jsonl(micro_run / "distill" / "validation.jsonl") if len(r["herbs"]) >= 3)
    herb_ids = torch.tensor(herb_token_ids(tokenizer))
    herb_token = dict(zip(vocab().herbs, herb_ids.tolist(), strict=True))
    copy, = first_step_examples(tokenizer, [record], [None], 1, herb_token, random.Random(0))
    batch = collate([copy], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        position, herbs = copy.herb_steps[0]
        logp = model(input_ids=batch["input_ids"]).logits[0, position - 1].log_softmax(-1)[herbs]
        summed = sft_loss(model, batch, [copy], herb_ids, per=1, set_loss="sum")
        mean = sft_loss(model, batch, [copy], herb_ids, per=1, set_loss="mean")
    assert torch.isclose(summed, -logp.sum(), rtol=1e-5)
    assert torch.isclose(mean, -logp.mean(), rtol=1e-5)


def test_revision_examples_train_the_revision_and_never_the_drafts_lines(micro_run):
    from pipeline.model.llm import load_trained
    from pipeline.model.scoring import herb_token_ids
    from pipeline.model.training import IGNORE
    from pipeline.runfolder import RunFolder, read_jsonl
    from pipeline.stages.sft import encode

    _, tokenizer = load_trained(micro_run / "sft" / "best")
    herb_ids = set(herb_token_ids(tokenizer))
    revisions = read_jsonl(RunFolder(micro_run).revisions())
    assert revisions and all(e["id"].endswith(":revision") for e in revisions)
    for example in revisions[:50]:
        encoded = encode(tokenizer, example["prompt"], example["response"], 10_000, herb_ids, None, example["given"])
        trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE]
        assert tokenizer.decode(encoded.ids[trained[0]:]).replace(" ", "") == (
            example["response"].removeprefix(example["given"]) + tokenizer.eos_token).replace(" ", "")
        added = [tokenizer.decode([encoded.ids[p]]) for p, _ in encoded.herb_steps]
        assert sorted(added) == sorted(example["dropped"])  # order-free targets: only the herbs put back
        for position, remaining in encoded.herb_steps:
            assert encoded.ids[position] in remaining and position >= trained[0]
