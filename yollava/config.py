"""Structured configuration: dataclasses as OmegaConf schemas, YAML overlays, key=value overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from yollava.errors import YollavaError

DEFAULT_MODEL = "llava-hf/llava-1.5-13b-hf"
# Most latent tokens a concept may have: each is one position of every training sample (the paper
# uses 16; its ablation stops at 32), and a soft prompt longer than the context cannot train.
MAX_K = 1024


class HeadRows(str, Enum):
    """Which new output-head rows are trained: the identifier's only (design card) or all k+1 (reference code)."""

    identifier = "identifier"
    all = "all"


class InitMethod(str, Enum):
    """How new rows start.

    ``mean``: mean of the base vocabulary's rows plus small seeded noise (breaks the symmetry
    between the k latent tokens); ``word``: the rows of ``concept.init_word`` (e.g. "dog");
    ``random``: normal with the vocabulary's per-dimension std.
    """

    mean = "mean"
    word = "word"
    random = "random"


class Recipe(str, Enum):
    """Which training set to build (the paper's dataset-creation ablation).

    ``recognition``: positives + easy negatives; ``recognition+conversation``: + text-only attribute
    Q/A; ``full``: + retrieved hard negatives; ``auto``: ``full`` when hard negatives are available,
    else ``recognition+conversation``.
    """

    auto = "auto"
    recognition = "recognition"
    recognition_conversation = "recognition+conversation"
    full = "full"


class LrSchedule(str, Enum):
    """How the learning rate moves across epochs.

    ``constant``: ``train.lr`` throughout (the paper). ``linear``: stepped down each epoch,
    ``lr * (1 - epoch / epochs)`` (1, 0.75, 0.5, 0.25 x lr over four epochs); on the toy it removed
    the later epochs' collapses to Yes = No (docs/toyworld.md, "One concept's training ... chaotic").
    """

    constant = "constant"
    linear = "linear"


class Category(str, Enum):
    """Which conversation question set a concept gets; ``auto`` asks the base model."""

    auto = "auto"
    person = "person"
    other = "other"


class Quantization(str, Enum):
    """Optional low-bit loading of the frozen base (needs the ``quant`` extra and a GPU)."""

    none = "none"
    int8 = "8bit"
    int4 = "4bit"


@dataclass
class ModelConfig:
    """Which frozen base to load and where."""

    name: str = DEFAULT_MODEL  # hub id, local directory, or "tiny"
    revision: Optional[str] = None
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU; or float32|bfloat16|float16
    device: str = "auto"  # auto = cuda when available (placed by accelerate), else cpu
    quantization: Quantization = Quantization.none


@dataclass
class ConceptConfig:
    """Shape and initialisation of the soft prompt."""

    k: int = 16  # latent tokens; 0 is allowed (identifier only)
    head_rows: HeadRows = HeadRows.identifier
    init: InitMethod = InitMethod.mean
    init_word: Optional[str] = None  # used by init=word
    init_noise: float = 0.02  # noise std relative to the vocabulary's per-dimension std (init=mean)


@dataclass
class DataConfig:
    """How the concept's training set is assembled."""

    max_negatives: int = 200  # a larger --negatives folder is sampled (seeded)
    positive_ratio: float = 1.0  # positive samples ~= ratio x negative samples: without the balance training collapses to "No"
    min_positive_repeats: int = 1
    text_samples: Optional[str] = None  # jsonl/json file or HF dataset dir of text-only {question, answer}
    hflip: bool = False  # add a horizontally flipped variant of every positive
    recipe: Recipe = Recipe.auto
    category: Category = Category.auto
    conversation_max_new_tokens: int = 64  # length cap of the base model's attribute answers
    seed: int = 0


@dataclass
class TrainConfig:
    """The optimisation recipe (Yo'LLaVA: AdamW, lr 1e-3, up to 15 epochs, keep the best epoch)."""

    epochs: int = 15
    lr: float = 1e-3
    lr_schedule: LrSchedule = LrSchedule.constant  # constant | linear (stepped down per epoch)
    weight_decay: float = 0.0  # applies to the concept rows only; frozen rows are never in the optimizer
    batch_size: int = 1
    seed: int = 0
    cache_image_features: bool = True  # frozen vision tower + projector run once per image
    # keys/values of the frozen prefix (system text + image) computed once per image; steps run the
    # soft prompt, question and answer only (~50 of ~660 tokens at LLaVA-1.5 scale); exact
    prefix_cache: bool = True
    # kept on the model's device (13B bf16: 0.5 GB per image; the toy: 0.8 MB): 4 GB holds a 13B
    # concept's 5 positives, used ~40 times an epoch, within a 40 GB peak; all 205 images need ~103 GB
    prefix_cache_gb: float = 4.0
    prefix_cache_cpu_gb: float = 32.0  # then in host memory, copied at each use (GPU only); past both, recomputed
    bucket_window: int = 16  # batch_size > 1: batches per length-sorting window; 0 = unsorted chunks
    head_at_supervised_only: bool = True  # apply the output head only where the loss needs it
    early_stop_patience: int = 0  # epochs without improvement before stopping; 0 = never
    eval_generation: bool = False  # also score recognition by greedy generation after each epoch
    runs_dir: str = "runs"
    max_length: int = 2048


@dataclass
class PromptConfig:
    """Chat format used for training, chat and evaluation."""

    template: str = "llava_v1"
    max_new_tokens: int = 128


@dataclass
class Config:
    """Everything a run needs; written next to each run's outputs as config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


def _explain(exc: OmegaConfBaseException, source: str) -> YollavaError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return YollavaError(f"unknown config key '{key}' in {source}; see `yollava config` for valid keys")
    if isinstance(exc, ValidationError):
        first_line = str(exc).splitlines()[0]
        return YollavaError(f"bad value for config key '{key}' in {source}: {first_line}")
    return YollavaError(f"invalid configuration in {source}: {str(exc).splitlines()[0]}")


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None, base: Any = None) -> Config:
    """Build a validated :class:`Config`.

    Args:
        yaml_path: optional YAML overlay (only the keys it sets change).
        overrides: ``key=value`` strings, e.g. ``train.lr=5e-4``; applied last.
        base: optional starting config (a Config or a saved config.yaml path) instead of defaults.

    Returns:
        A typed Config object (OmegaConf-backed; enums are real enums).

    Raises:
        YollavaError: unknown key, wrong type, unreadable YAML, or a malformed override.
    """
    schema = OmegaConf.structured(Config)
    merged: DictConfig = schema
    try:
        if base is not None:
            base_cfg = OmegaConf.load(base) if isinstance(base, (str, Path)) else OmegaConf.structured(base)
            merged = OmegaConf.merge(merged, base_cfg)
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.is_file():
                raise YollavaError(f"--config {path}: no such file; pass a YAML file of config keys")
            try:
                overlay = OmegaConf.load(path)
            except Exception as exc:  # yaml errors come in several classes
                raise YollavaError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
            if not isinstance(overlay, DictConfig):
                raise YollavaError(
                    f"--config {path}: holds a {type(overlay).__name__.removesuffix('Config').lower()}, not a mapping of config keys; "
                    "write e.g. 'train: {epochs: 5}'"
                )
            try:
                merged = OmegaConf.merge(merged, overlay)
            except OmegaConfBaseException as exc:
                raise _explain(exc, str(path)) from exc
        for item in overrides or []:
            if "=" not in item:
                raise YollavaError(f"override '{item}' is not key=value; write e.g. train.lr=5e-4")
            key, value = item.split("=", 1)
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"{key.strip()}={value}"]))
            except OmegaConfBaseException as exc:
                raise _explain(exc, f"override '{item}'") from exc
    except OmegaConfBaseException as exc:
        raise _explain(exc, "configuration") from exc
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    """Range checks OmegaConf's type system cannot express."""
    checks = [
        (config.concept.k >= 0, "concept.k must be >= 0"),
        (config.concept.k <= MAX_K, f"concept.k={config.concept.k} is too large: the soft prompt takes k+1 positions of every "
                                    f"training sample; use at most {MAX_K} (the paper uses 16)"),
        (config.concept.k + 1 < config.train.max_length, f"concept.k={config.concept.k} does not fit train.max_length={config.train.max_length}; "
                                                         "lower concept.k (the paper uses 16) or raise train.max_length"),
        (config.train.epochs >= 1, "train.epochs must be >= 1"),
        (config.train.lr > 0, "train.lr must be > 0"),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.train.prefix_cache_gb >= 0 and config.train.prefix_cache_cpu_gb >= 0, "train.prefix_cache_gb and train.prefix_cache_cpu_gb must be >= 0"),
        (config.train.bucket_window >= 0, "train.bucket_window must be >= 0"),
        (config.data.max_negatives >= 0, "data.max_negatives must be >= 0"),
        (config.data.positive_ratio > 0, "data.positive_ratio must be > 0"),
        (config.concept.init != InitMethod.word or bool(config.concept.init_word), "concept.init=word needs concept.init_word=<a word>"),
    ]
    for ok, message in checks:
        if not ok:
            raise YollavaError(f"invalid configuration: {message}")


def config_to_yaml(config: Config) -> str:
    """Fully resolved YAML of a config (what each run writes next to its outputs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-dict form (enums as strings) for JSON artifacts."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)  # type: ignore[return-value]
