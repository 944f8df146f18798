"""Step-wise GRPO: the shaped reward, the advantages, the loss's direction, and a two-process run on gloo."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pipeline.config import GrpoConfig
from pipeline.metrics import jaccard
from pipeline.stages.grpo import State, grpo_loss, line_rewards, potential, token_advantages
from rxapp.engine import model_card
from rxapp.modelinfo import saved_stop_threshold, write_model_metadata
from tests.conftest import ROOT


def state(truth, start=(), pregnant=False) -> State:
    return State(("咳嗽",), pregnant, frozenset(truth), tuple(start))


def test_step_rewards_telescope_to_the_change_in_potential_and_charge_invalid_lines():
    cfg = GrpoConfig(alpha=1.0, invalid_penalty=0.1)
    s = state({"麻黄", "杏仁", "甘草"}, start=["桂枝"])
    lines = ["加麻黄：发汗", "这不是一步", "加杏仁：止咳", "减桂枝：不需要", "加杏仁：重复"]
    rewards, invalid, final = line_rewards(s, lines, cfg)
    assert invalid == [False, True, False, False, True] and final == ["麻黄", "杏仁"]
    assert rewards[0] == pytest.approx(jaccard({"桂枝", "麻黄"}, s.truth) - jaccard({"桂枝"}, s.truth))
    assert rewards[1] == pytest.approx(-0.1)
    assert sum(rewards) == pytest.approx(potential(final, s, 1.0) - potential(["桂枝"], s, 1.0) - 0.2)


def test_the_potential_prices_the_apps_safety_cost_by_alpha():
    truth = {"甘草", "甘遂"}
    assert potential(["甘草", "甘遂"], state(truth), 0.0) == 1.0
    assert potential(["甘草", "甘遂"], state(truth), 2.0) == 1.0 - 2.0 * 2.0  # 十八反 is severe: a cost of 2
    assert potential(["麝香"], state({"麝香"}, pregnant=True), 1.0) == 1.0 - 2.0  # 妊娠禁用, severe
    assert potential(["麝香"], state({"麝香"}), 1.0) == 1.0


def test_token_advantage_is_the_outcome_plus_lambda_times_the_step_advantage_of_its_line():
    rewards = [[0.5, -0.1], [0.0], [0.2, 0.2, 0.2]]
    lines = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3])]
    advantages = token_advantages(rewards, lines, step_weight=0.5)
    outcome = torch.tensor([0.4, 0.0, 0.6])
    outcome = (outcome - outcome.mean()) / (outcome.std() + 1e-6)
    steps = torch.tensor([0.5, -0.1, 0.0, 0.2, 0.2, 0.2])
    steps = (steps - steps.mean()) / (steps.std() + 1e-6)
    expected = [outcome[0] + 0.5 * steps[0]] * 2 + [outcome[0] + 0.5 * steps[1], outcome[0]]
    assert advantages[0].tolist() == pytest.approx([e.item() for e in expected])
    assert advantages[1][-1].item() == pytest.approx(outcome[1].item())  # the stop token: outcome only
    assert sum(a[0] for a in advantages) != 0  # the step term is there
    stopped_at_once = token_advantages([[], []], [torch.tensor([0]), torch.tensor([0])], step_weight=0.5)
    assert [a.tolist() for a in stopped_at_once] == [[0.0], [0.0]]  # no lines anywhere: nothing to learn


def test_one_step_of_the_loss_raises_the_better_rollout_and_lowers_the_worse(micro_run):
    from pipeline.model.llm import load_trained
    from pipeline.stages.grpo import completion_logprobs

    model, tokenizer = load_trained(micro_run / "sft" / "best")
    prompt = tokenizer.encode("症状：咳嗽\n", add_special_tokens=False)
    group = [tokenizer.encode(t, add_special_tokens=False) for t in ("加麻黄：发汗\n【", "加甘遂：逐水\n【")]
    cfg = GrpoConfig(kl=0.0)
    with torch.no_grad():
        before, mask = completion_logprobs(model, prompt, group, tokenizer.pad_token_id)
    advantages = torch.tensor([[1.0], [-1.0]]).expand_as(before)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    logp, _ = completion_logprobs(model, prompt, group, tokenizer.pad_token_id)
    loss, kl = grpo_loss(logp, before, before, advantages, mask, cfg)
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = completion_logprobs(model, prompt, group, tokenizer.pad_token_id)
    change = ((after - before) * mask).sum(1)
    assert change[0] > 0 > change[1]


def test_clipping_stops_the_gradient_once_the_ratio_leaves_the_trust_region():
    cfg = GrpoConfig(clip=0.2, kl=0.0)
    logp = torch.tensor([[0.5]], requires_grad=True)  # ratio e^0.5 > 1.2 with a positive advantage
    loss, _ = grpo_loss(logp, torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), cfg)
    loss.backward()
    assert logp.grad.item() == 0.0


def test_two_process_grpo_on_gloo_writes_model_log_and_curves(micro_run, tmp_path):
    start = tmp_path / "start"  # the SFT model with a threshold that re-tuning would not land on by chance
    shutil.copytree(micro_run / "sft" / "best", start)
    write_model_metadata(start, 0.37)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29519", "-m", "pipeline", "grpo", "--config", "configs/micro.yaml",
                             "--out", str(micro_run), "--model", str(start), "--alpha", "0.5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = micro_run / "grpo-a0.5"
    log = json.loads((out / "log.json").read_text())
    assert log["processes"] == 2 and log["settings"]["alpha"] == 0.5 and len(log["updates"]) == 3
    assert all({"reward", "phi", "kl", "invalid_rate", "incompat_rate"} <= u.keys() for u in log["updates"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stopping GRPO trained is decoded with the start's threshold (grpo.retune_stop: false)
    assert saved_stop_threshold(out / "best") == 0.37
    result = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--model", str(out / "best"), "--split",
                             "validation", "--limit", "8", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["n"] for r in json.loads(result.stdout)] == [8, 8]  # raw and clean herb lists


def test_tradeoff_scores_the_start_and_each_alpha_and_plots_them(micro_run):
    # grpo-a0.5 was trained by the two-process test above; with --resume the sweep trains only what is missing
    result = subprocess.run([sys.executable, "-m", "pipeline", "tradeoff", "--config", "configs/micro.yaml", "--out",
                             str(micro_run), "--model", str(micro_run / "sft" / "best"), "--alphas", "0.5",
                             "--split", "validation", "--limit", "8", "--resume"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((micro_run / "tradeoff.json").read_text())
    assert [r["grpo_alpha"] for r in rows] == [None, 0.5] and all(r["n"] == 8 for r in rows)
    assert all(r["decoding"] == "stepper:llama" and r["screen_weight"] == 0.0 for r in rows)
    assert "GRPO α=0.5" in result.stdout and "start (no GRPO)" in result.stdout
    assert (micro_run / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    export = micro_run / "grpo-a0.5" / "export"
    result = subprocess.run([sys.executable, "-m", "pipeline", "card", "--export", str(export), "--config",
                             "configs/micro.yaml", "--eval", str(micro_run / "tradeoff.json"), "--stages", "distill",
                             "sft", "grpo", "export", "--tradeoff", str(micro_run / "tradeoff.json")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (export / "card.md").read_text(encoding="utf-8")
    assert "step-wise GRPO (α" in card and "DPO" not in card and "| GRPO α=0.5 | 8 |" in card
    assert (export / "tradeoff.png").read_bytes() == (micro_run / "tradeoff.png").read_bytes()
    shown = model_card(export / "model-q4_k_m.gguf")  # what the app's model tab shows: the plot inlined
    assert "](tradeoff.png)" in card and "](data:image/png;base64," in shown
