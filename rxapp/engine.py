"""The one model the app serves: loading it (auto CPU/GPU), its identity for the records, and its load status.
A model that fails to load leaves the app running without one, with the reason to show."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rxapp.backends import Backend, ModelLoadError, load_backend
from rxapp.modelinfo import ModelMismatchError, file_sha256

BACKENDS = ("auto", "llama", "hf")
DEVICES = ("auto", "cpu", "gpu")


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CARD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)")


def inline_images(text: str, folder: Path) -> str:
    """The PNGs a card links beside it, as data URIs: the app's Markdown view cannot fetch files."""
    def data_uri(link: re.Match) -> str:
        image = folder / link.group(2)
        if not image.is_file():
            return link.group(0)
        return f"![{link.group(1)}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"

    return CARD_IMAGE.sub(data_uri, text)


def model_card(path: Path) -> str:
    """The card.md shipped beside a model (its data, metrics and α; for an export's hf/ folder, the export's card),
    with its plots inlined, or a line saying there is none."""
    folder = path if path.is_dir() else path.parent
    for card in (folder / "card.md", folder.parent / "card.md") if path.is_dir() else (folder / "card.md",):
        if card.exists():
            return inline_images(card.read_text(encoding="utf-8"), card.parent)
    return f"（{folder} 中没有模型卡 card.md）"


@dataclass
class LoadedModel:
    path: Path
    backend: Backend
    kind: str  # "llama" or "hf"
    device: str  # "cpu" or "gpu"
    quantization: str  # one of QUANTIZATIONS
    sha256: str


class Engine:
    """Holds at most one loaded model; `lock` is held by whoever runs it, so one request uses it at a time. A context
    manager: leaving it closes the model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model: LoadedModel | None = None
        self.error: str | None = None

    def load(self, path: str | Path, backend: str = "auto", device: str = "auto", quantization: str = "none") -> None:
        """Replace the current model; on failure there is none and `error` says why. `quantization` (4bit, 8bit)
        loads an HF folder's weights through bitsandbytes."""
        path = Path(str(path).strip()).expanduser()
        on_gpu = device == "gpu" or (device == "auto" and gpu_available())
        kind = None if backend == "auto" else backend
        with self.lock:
            self._unload()
            self.error = None
            started = time.perf_counter()
            try:
                loaded = load_backend(path, kind, n_gpu_layers=-1 if on_gpu else 0, device="cuda" if on_gpu else "cpu",
                                      quantization=quantization)
            except (ModelLoadError, ModelMismatchError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
                self.error = f"模型未能加载 Model not loaded: {e}"
                return
            loaded.load_s = time.perf_counter() - started
            self.model = LoadedModel(path, loaded, loaded.name, "gpu" if on_gpu else "cpu", quantization,
                                     file_sha256(path))

    def close(self) -> None:
        """Close the loaded model, if any, once a running recommendation has finished; the engine then has none."""
        with self.lock:
            self._unload()

    def _unload(self) -> None:
        # under the lock; the lock is not reentrant, so load() calls this rather than close()
        if self.model is not None:
            self.model.backend.close()
        self.model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def status(self) -> str:
        if self.model is None:
            return self.error or "未加载模型 No model loaded"
        m = self.model
        weights = f" · weights {m.quantization}" if m.quantization != "none" else ""
        return (f"已加载 Loaded: `{m.path}` · backend {m.kind} · device {m.device}{weights} · "
                f"load {m.backend.load_s:.1f} s"
                f" · sha256 {m.sha256[:12]}…")
