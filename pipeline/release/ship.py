"""`pipeline ship`: an export becomes the app's embedded default model (assets/models/default/): its Q4_K_M GGUF,
its card and the card's plots, and its hf/ folder for the transformers backend while everything fits the size
limit. The new folder is written beside the old one and renamed into place, so that the app never starts on half a
model."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rxapp import DEFAULT_MODEL

LIMIT_BYTES = 50 * 1024 * 1024  # what the repository carries for the default model
GGUF = DEFAULT_MODEL.name


def size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def ship(export_dir: Path, dest: Path = DEFAULT_MODEL.parent, limit: int = LIMIT_BYTES) -> list[Path]:
    """Replace `dest` with the export's model, card, plots and (when it fits) hf/ folder; return the files shipped."""
    needed = [export_dir / GGUF, export_dir / "card.md"]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{export_dir} lacks {', '.join(missing)} (run `python -m pipeline run` or "
                                "`export` then `card`)")
    files = needed + sorted(export_dir.glob("*.png"))
    if size(files) > limit:
        raise ValueError(f"the GGUF, card and plots take {size(files) / 2**20:.1f} MiB, over the "
                         f"{limit / 2**20:.0f} MiB limit")
    hf = sorted(p for p in (export_dir / "hf").glob("*") if p.is_file())
    if hf and size(files + hf) <= limit:
        files += hf
    elif hf:
        print(f"warning: hf/ left out ({size(hf) / 2**20:.1f} MiB would pass the {limit / 2**20:.0f} MiB limit); "
              "the shipped model runs on llama.cpp only", file=sys.stderr)
    staging, old = dest.with_name(dest.name + ".new"), dest.with_name(dest.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    for path in files:
        target = staging / path.relative_to(export_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return [dest / p.relative_to(export_dir) for p in files]
