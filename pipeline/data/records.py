"""The SMGCN prescriptions as records with Chinese names: the published train/test split plus a seeded validation
split carved from train, each with its herb lists as published (raw) or cleaned of their substring artefacts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from pipeline.config import HERB_LISTS
from rxapp.vocab import SMGCN, vocab

SPLITS = ("train", "validation", "test", "train_full")
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 20200420  # fixed: every model and baseline is tuned on the same validation records


@dataclass(frozen=True)
class Record:
    id: str  # "<file>-<line number>", e.g. "test-17": stable across runs
    symptoms: tuple[str, ...]
    herbs: tuple[str, ...]


@cache
def _read(file: str, lists: str = "raw") -> tuple[Record, ...]:
    v = vocab()
    if lists == "clean":
        return tuple(Record(r.id, r.symptoms, tuple(v.clean_herbs(r.herbs))) for r in _read(file))
    records = []
    for n, line in enumerate((SMGCN / f"{file}.txt").read_text(encoding="utf-8").splitlines()):
        symptom_ids, herb_ids = line.split("\t")
        records.append(Record(
            id=f"{file}-{n}",
            symptoms=tuple(v.symptoms[int(i)] for i in symptom_ids.split()),
            herbs=tuple(v.herbs[int(i)] for i in herb_ids.split()),
        ))
    return tuple(records)


@cache
def _validation_ids() -> frozenset[str]:
    train = _read("train")
    count = round(len(train) * VALIDATION_FRACTION)
    return frozenset(r.id for r in random.Random(VALIDATION_SEED).sample(train, count))


def load_split(split: str, lists: str = "raw") -> list[Record]:
    """Records of one split, with `lists` herb lists (HERB_LISTS); ids are the same in both.

    train: the published train file minus validation (what models learn from);
    validation: a seeded 10 % of the published train file (for tuning and early stopping);
    test: the published test file, untouched;
    train_full: the whole published train file (train + validation).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if lists not in HERB_LISTS:
        raise ValueError(f"unknown herb lists {lists!r}; choose from {', '.join(HERB_LISTS)}")
    records = _read(split if split == "test" else "train", lists)
    if split in ("test", "train_full"):
        return list(records)
    held_out = _validation_ids()
    return [r for r in records if (r.id in held_out) == (split == "validation")]
