"""Shared helpers: run the project's CLIs as a user would, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUTF8": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A run folder with the micro config's first stages run in it by `pipeline run --until sft` (data/, knowledge/,
    distill/, sft/ and their records), shared by the tests that need a model."""
    out = tmp_path_factory.mktemp("micro")
    result = run_cli("-m", "pipeline", "run", "--config", "configs/micro.yaml", "--out", str(out), "--until", "sft",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def micro_small(micro_run):
    """The micro config's small BART, trained into the micro run folder (small/best)."""
    result = run_cli("-m", "pipeline", "small", "--config", "configs/micro.yaml", "--out", str(micro_run), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return micro_run / "small" / "best"


@pytest.fixture(scope="session")
def micro_export(micro_run):
    """The micro model exported: hf/, model-f16.gguf, model-q8_0.gguf, model-q4_k_m.gguf."""
    out = micro_run / "export"
    result = run_cli("-m", "pipeline", "export", "--model", str(micro_run / "sft" / "best"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out
