"""The pinned environment that later stages rely on imports and works: torch CPU, the compiled llama.cpp bindings
(with the quantizer the export stage calls), gguf, transformers, peft, trl, bitsandbytes, sqlite-utils."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pinned() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


@pytest.mark.parametrize("module", ["torch", "transformers", "peft", "trl", "bitsandbytes", "gguf", "llama_cpp",
                                    "gradio", "sqlite_utils", "accelerate", "datasets"])
def test_pinned_packages_import(module):
    importlib.import_module(module)


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    mismatched = {name: (want, version(name)) for name, want in pinned().items()
                  if version(name).split("+")[0] != want}
    assert not mismatched


def test_llama_cpp_quantizer_is_reachable():
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert params.ftype == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_torch_is_the_cpu_build():
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert (torch.ones(2, 2) @ torch.ones(2, 2)).sum().item() == 8.0
