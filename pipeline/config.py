"""One config drives the pipeline: a YAML file read into these dataclasses (unknown keys are an error). The defaults
here are the shipped model's settings (configs/default.yaml overrides nothing; tests/pipeline/test_config.py keeps it
so); other configs override only what differs, and say why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.runfolder import TRAINED_STAGES
from rxapp.safety import check_safety_weight

# The herb lists a split can be read with (pipeline.data.records.load_split). raw: as published, for comparison with
# published results; clean: rxapp.vocab.Vocab.clean_herbs applied (no artefact token beside its longer name, one
# name per drug: what matters to a practitioner).
HERB_LISTS = ("raw", "clean")


def check_share(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be between 0 and 1, got {value}")


@dataclass
class ModelConfig:
    base: str | None = None  # None: the domain model, trained from scratch; else a local HF causal-LM folder (LoRA)
    # with no base: a trained domain model folder (RUN/sft/best, an export's hf/) whose weights and tokenizer SFT
    # continues from, instead of fresh weights (the size settings below are then the folder's)
    init: str | None = None
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 768  # a multiple of 256, so that K-quants apply to every matrix
    dropout: float = 0.1
    max_length: int = 512
    lora_r: int = 16  # LoRA settings apply only to a pretrained base
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    load_in_4bit: bool = False  # QLoRA (bitsandbytes), for GPU bases

    def __post_init__(self) -> None:
        if self.base and self.init:
            raise ValueError("model.base (a pretrained base, LoRA) and model.init (a domain model to continue) "
                             "exclude each other")


@dataclass
class SFTConfig:
    epochs: int = 2
    batch_size: int = 32
    # rows per forward pass (None: the whole batch); the micro-batches' gradients add up to the batch's. The logits
    # of a pretrained base's ~150k-token vocabulary dominate GPU memory, and they scale with the rows
    micro_batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05  # share of the steps
    patience: int = 2  # evaluations without improvement before stopping
    evals_per_epoch: int = 2
    order: str = "certainty"  # step order of the herbs: "certainty" (the teacher's) or "shuffle" (each epoch)
    herb_targets: str = "set"  # "next": the herb the order puts there; "set": uniform over the herbs still to add
    # with "set": share of each herb step's target from the co-occurrence teacher (0.5 chosen on validation)
    teacher_weight: float = 0.5
    # with "set": "mean" trains a step on the mean log-probability of the herbs still to add, "sum" on their sum, so
    # that each is a target of its own (sft_loss explains what each makes the first step rank by)
    set_loss: str = "sum"
    first_step_passes: int = 2  # with "set": extra first-step-only copies of each record per epoch (stages/sft.py)
    # with "set": passes over first-step copies alone after the main epochs (stages/sft.py), unless patience stopped
    ranking_passes: int = 1
    ranking_lr: float = 3e-4  # the peak learning rate of those passes' own cosine schedule
    # share of the training records whose revision example (a corrupted draft to correct with 减/加) joins each main
    # epoch, drawn afresh (stages/sft.py, pipeline/data/revision.py)
    revision_share: float = 0.25
    # the training steps' forward passes: "bf16" runs them under bfloat16 autocast (weights, optimizer state, the
    # loss and every validation stay float32), the default model's epochs 1.25× faster on the CPU the shipped model
    # was trained on (docs/lab/2026-12-07-one-command-default.md) and 1.3–1.5× slower on one with AVX512-BF16 but no AMX
    # (docs/lab/2026-12-08-bf16-without-amx.md); "fp32" does not; "auto" is bf16 on a CUDA device that supports it
    # or a CPU with AMX, else fp32
    precision: str = "auto"
    max_train: int | None = None  # cap on training examples (micro config)
    max_validation: int | None = None
    # the first validation cases the logged validation loss is taken on (None: all). The loss is only logged (the
    # checkpoint is chosen by F1@10 on every validation case); on all 2,292 it took 47 s of each evaluation on the
    # two cores, about 5 min of a default run
    validation_loss_cases: int | None = 500

    def __post_init__(self) -> None:
        check_share(self.revision_share, "revision_share")
        if self.validation_loss_cases is not None and self.validation_loss_cases < 1:
            raise ValueError(f"validation_loss_cases must be at least 1 (or null: all), got "
                             f"{self.validation_loss_cases}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")


@dataclass
class StoppingConfig:
    """Tuning a trained model's stop rule on validation (pipeline/model/stopping.py): from nothing, a threshold and
    a herb limit, after SFT, DPO and GRPO (unless grpo.retune_stop is false); revising a draft, a threshold, at
    export, for the model that ships, the one model a run's revisions are made with."""

    cases: int = 1000  # from nothing: the first validation cases
    revision_cases: int = 300  # revising: drafts of the first validation cases, through the app's stepper


@dataclass
class SmallConfig:
    """The small BART of the preference stage (`pipeline small`)."""

    d_model: int = 256
    layers: int = 2  # in the encoder and in the decoder
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 2  # epochs without a better validation F1@10 before stopping
    max_train: int | None = None
    max_validation: int | None = None


@dataclass
class PrefsConfig:
    """Implicit preference pairs (`pipeline prefs`; the rule is in pipeline/stages/prefs.py)."""

    cases: int | None = 2000  # training cases to sample (None: all); each costs `samples` generations
    samples: int = 4  # sampled LLM responses per case
    temperature: float = 1.0
    margin: float = 0.1  # least Jaccard gap between chosen and rejected for a pair


@dataclass
class DpoConfig:
    """`pipeline dpo`: TRL's DPOTrainer from the SFT model, which is also the frozen reference."""

    beta: float = 0.1
    lr: float = 5e-5
    epochs: int = 1
    batch_size: int = 8
    sft_weight: float = 0.0  # weight of an NLL term on the chosen response beside the DPO loss (RPO); 0: plain DPO
    kto: bool = False  # also train on the unpaired feedback examples with TRL's KTOTrainer, after DPO


@dataclass
class GrpoConfig:
    """`pipeline grpo`: step-wise GRPO with potential-based reward shaping (its terms: pipeline/stages/grpo.py)."""

    # the model it starts from: "sft", or "dpo" (the preference stage's), which no validation has yet shown to help
    start: str = "sft"
    # 100 tie 150 on validation (Jaccard −.0012 [−.0029, +.0005], all 2,292 cases) in a third less time; on test
    # they wrote Jaccard −.0018 [−.0033, −.0003] against 150 (docs/lab/2026-12-07-grpo-updates.md)
    updates: int = 100
    states: int = 8  # states per update (per process under torchrun)
    group: int = 8  # G rollouts per state
    alpha: float = 1.0  # the reward weight of the safety cost in the potential Φ (rxapp.safety.safety_cost)
    step_weight: float = 0.5  # λ: weight of the step advantage beside the outcome advantage
    clip: float = 0.2  # ε of the clipped surrogate
    kl: float = 0.1  # κ: weight of the KL to the reference (the starting model)
    # κ_rank: weight of a KL of the first step's herb distribution (the ranking the app returns) to the reference's,
    # for each update's patients from an empty list, whether or not a rollout starts there. 0: at 1 it held the first
    # step eight times closer to the start and the ranking no better (P@5 −.0031 against −.0035 below the start on
    # validation), while the list lost Jaccard (docs/lab/2026-12-07-ranking-anchor.md)
    ranking_kl: float = 0.0
    iterations: int = 2  # gradient steps on each update's rollouts (the clip matters from the second on)
    lr: float = 2e-5
    # of the herb choice in rollouts, and of its log-probabilities in the ratio and the KL (the stop is sampled at the
    # model's own probability: the app's stop rule reads a quantile of that very distribution); of 0.3, 0.5, 0.7 and
    # 1, 0.7 trained the best greedy lists on validation (docs/lab/2026-12-06-grpo-on-own-states.md)
    temperature: float = 0.7
    screen_weight: float = 0.0  # the stepper's safety screen in rollouts (0: the model meets pairs through Φ alone)
    max_herbs: int = 20  # a rollout ends when its list holds this many herbs (the doctors' mean is 6.9)
    # states from the policy's own rollouts, the states the app meets; the rest are corrupted ground truth, which
    # taught every policy to stop early (the same lab page)
    policy_share: float = 1.0
    # states that are drafts to revise (corrupted as SFT's revision examples are, named in the prompt), where the
    # policy may also remove a herb of the draft; the rest are drawn by policy_share
    revision_share: float = 0.0
    pregnant_share: float = 0.1  # states whose patient is pregnant, so that the pregnancy rules are exercised
    error_cases: int = 200  # validation cases that measure the starting model's errors (for corrupted truth)
    # True: tune the from-nothing stop rule (threshold and herb limit) again on validation, as after SFT: the stop
    # probabilities GRPO trains set how long lists are on average, not which patients need longer ones, so the rule
    # that scores best for the trained model is chosen afresh (docs/lab/2026-12-07-stop-length.md); False keeps the
    # start's. The revision threshold is tuned at export either way: GRPO moves it, whether or not it trains revising
    retune_stop: bool = True
    checkpoint_every: int = 10  # updates between checkpoints, which `--resume` continues from after an interruption

    def __post_init__(self) -> None:
        check_safety_weight(self.alpha, "alpha")
        check_safety_weight(self.screen_weight, "screen_weight")
        for key in ("policy_share", "revision_share", "pregnant_share"):
            check_share(getattr(self, key), key)
        if self.start not in ("sft", "dpo"):
            raise ValueError(f"start must be sft or dpo, got {self.start!r}")


@dataclass
class EvaluateConfig:
    """What `pipeline run` scores at its end: every trained stage's Q4_K_M through the app's stepper, beside the
    baselines, and optionally the α sweep of step-wise GRPO."""

    split: str = "test"
    limit: int | None = None  # the first N records only (micro config)
    screen_weight: float = 0.0  # the stepper's safety screen while scoring (0: what training alone achieves)
    tradeoff_alphas: list[float] = field(default_factory=list)  # GRPO α sweep for the model card (empty: none)

    def __post_init__(self) -> None:
        check_safety_weight(self.screen_weight, "screen_weight")
        for alpha in self.tradeoff_alphas:
            check_safety_weight(alpha, "each of tradeoff_alphas")


@dataclass
class TeacherConfig:
    kind: str = "knowledge"  # "knowledge": the offline teacher; "openai": a chat-completions endpoint, then knowledge
    url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (the key, if any, comes from OPENAI_API_KEY)
    model: str = "gpt-4o"
    requests_per_minute: float = 60.0
    limit: int | None = None  # ask the endpoint about the first N records of each split only (cost control)


@dataclass
class PipelineConfig:
    name: str = "default"
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    small: SmallConfig = field(default_factory=SmallConfig)
    prefs: PrefsConfig = field(default_factory=PrefsConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # the herb lists every stage learns and tunes on (HERB_LISTS above): "clean", the lists without
    # substring artefacts and second names of one drug (assets/vocab/artefacts.yaml), since the app writes those;
    # "raw" as published
    herb_lists: str = "clean"
    # the stage whose model `pipeline run` exports (and `pipeline ship` embeds): sft, dpo or grpo. GRPO, whose greedy
    # lists beat the SFT model it starts from (docs/lab/2026-12-06-grpo-on-own-states.md); DPO does not
    ship: str = "grpo"

    def __post_init__(self) -> None:
        if self.herb_lists not in HERB_LISTS:
            raise ValueError(f"herb_lists must be one of {', '.join(HERB_LISTS)}, got {self.herb_lists!r}")
        if self.ship not in TRAINED_STAGES:
            raise ValueError(f"ship must be one of {', '.join(TRAINED_STAGES)}, got {self.ship!r}")

    @classmethod
    def load(cls, path: Path) -> PipelineConfig:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return _build(cls, data, str(path))

    def to_dict(self) -> dict:
        return asdict(self)


def _build(cls: type, data: dict, where: str):
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if is_dataclass(kind):
            values[name] = _build(kind, value or {}, f"{where}:{name}")
        elif _fits(value, kind):
            values[name] = value
        else:
            raise ValueError(f"{where}:{name}: expected {_describe(kind)}, got {value!r}")
    try:
        return cls(**values)
    except ValueError as e:  # a value of the right type that the setting refuses
        raise ValueError(f"{where}: {e}") from None


def _fits(value, kind) -> bool:
    """Whether a YAML value has a setting's type (an int where a float is asked is fine; a bool is not a number)."""
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if get_origin(kind) is list:
        return isinstance(value, list) and all(_fits(v, get_args(kind)[0]) for v in value)
    if get_origin(kind) in (Union, UnionType):
        return any(_fits(value, k) for k in get_args(kind))
    return isinstance(value, kind)


def _describe(kind) -> str:
    names = {float: "a number", int: "a whole number", str: "text", bool: "true or false", type(None): "null"}
    if get_origin(kind) is list:
        return f"a list of {_describe(get_args(kind)[0]).removeprefix('a ')}s"
    if get_origin(kind) in (Union, UnionType):
        return " or ".join(_describe(k) for k in get_args(kind))
    return names.get(kind, kind.__name__)
