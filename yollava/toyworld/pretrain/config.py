"""The pretraining recipe as data: stages, the whole run's settings, the compiled recipe's defaults and their flag overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from yollava.toyworld.pretrain.mix import MixWeights
from yollava.toyworld.toy_llava import ToyLlavaArch

# what each stage task runs (yollava.toyworld.pretrain.stages) and what it may train
STAGE_TASKS = {
    "dense": ("vision",),  # the tower, with linear heads naming each patch's attributes (tower.py)
    "code": ("projector",),  # the projector regresses each patch onto the circuit's attribute code
    "compile": ("projector",),  # no training: the circuit is written into the weights (circuit.py)
    "mix": ("all", "language", "projector"),  # the instruction mix, around the frozen circuit
}


@dataclass
class StageConfig:
    """One pretraining stage: what trains, on what, for how long (``task``: a :data:`STAGE_TASKS` key)."""

    name: str
    steps: int
    lr: float
    trains: str
    task: str
    warmup: int = 50
    # dense stage: the tower's learning rate relative to its linear heads'
    vision_lr_scale: float = 1.0
    # mix stage: task shares (None: PretrainConfig.mix)
    mix: MixWeights | None = None

    def __post_init__(self) -> None:
        if self.task not in STAGE_TASKS:
            raise ValueError(f"stage {self.name}: unknown task {self.task!r}; tasks: {', '.join(STAGE_TASKS)}")
        if self.trains not in STAGE_TASKS[self.task]:
            raise ValueError(f"stage {self.name}: a {self.task} stage trains {' or '.join(STAGE_TASKS[self.task])}, not {self.trains!r}")


def compiled_arch() -> ToyLlavaArch:
    """The language model the compiled recipe builds: the circuit needs 64-wide heads and a large RoPE base."""
    return ToyLlavaArch(head_dim=64, rope_theta=1e9)


def compiled_stages() -> list[StageConfig]:
    """The compiled recipe (docs/toyworld.md): ``vision`` (dense tower supervision), ``code`` (the
    projector regresses each patch onto the circuit's attribute code), ``compile`` (the comparison
    circuit written into layers 0-2, see circuit.py), ``instruct`` (everything else learns the task
    mix around the frozen circuit)."""
    return [
        # the toy CLIP's features name the attributes poorly: dense per-patch supervision first
        StageConfig("vision", steps=14000, lr=3e-3, trains="vision", task="dense", warmup=50),
        # the tower stays as the dense stage left it: fine-tuning it on the codes fitted the large
        # CONST entry better and the attribute slots worse (held-out presence 0.69 against 0.83)
        StageConfig("code", steps=3000, lr=3e-3, trains="projector", task="code", warmup=0),
        StageConfig("compile", steps=0, lr=0.0, trains="projector", task="compile", warmup=0),
        StageConfig("instruct", steps=1500, lr=1e-3, trains="all", task="mix", warmup=100),
    ]


@dataclass
class PretrainConfig:
    """The whole recipe (defaults: the shipped weights)."""

    seed: int = 0
    arch: ToyLlavaArch = field(default_factory=compiled_arch)
    train_scenes: int = 30000
    # the dense ``vision`` stage sees the training scenes (with the known identities'), then plain
    # scenes train_scenes..vision_scenes-1 of the same stream (210,240 in all). With the training
    # scenes alone the tower overfitted (training loss kept falling from step 8,000 on, held-out
    # patch accuracy did not); every later stage reads the frozen tower on the training scenes only
    vision_scenes: int = 200000
    heldout_scenes: int = 2000
    # scenes per known identity (scenes.stream_scenes): (with it as main subject, with a one-attribute lookalike instead)
    known_scenes: tuple[int, int] = (120, 40)
    known_heldout_scenes: tuple[int, int] = (12, 6)
    batch_size: int = 32
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # share of samples whose placeholder names get fresh vectors (batches.replace_names), and the smallest sigma
    name_noise: float = 0.5
    name_noise_low: float = 0.02
    mix: MixWeights = field(default_factory=MixWeights)
    stages: list[StageConfig] = field(default_factory=compiled_stages)
    excluded_seeds: tuple[int, ...] = (0,)
    excluded_max_concepts: int = 20
    # the compile stage picks the circuit's free numbers on this many presence and as many introduced questions
    calibration_questions: int = 200
    calibration_grid: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"threshold": (0.8, 0.85, 0.9), "size_weight": (1.0, 0.5), "shape_weight": (1.0, 0.5)})
    # held-out items per quality gate (the progress checks during the mix stage use a quarter, at least 20)
    eval_items: int = 400
    log_every: int = 50
    eval_every: int = 500


def quick(config: PretrainConfig) -> PretrainConfig:
    """A few steps of every stage on a few hundred scenes: a pipeline check (~30 s on one thread), not a model."""
    stages = [replace(s, steps=4, warmup=min(s.warmup, 2)) for s in config.stages]
    return replace(config, train_scenes=600, vision_scenes=900, heldout_scenes=300, known_scenes=(3, 2), known_heldout_scenes=(2, 1),
                   calibration_questions=20, eval_items=40, log_every=2, eval_every=4, stages=stages)


def _stage(stages: list[StageConfig], name: str) -> StageConfig:
    for stage in stages:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in stages)}")


def apply_overrides(stages: list[StageConfig], stage_set: str = "", stage_steps: str = "") -> None:
    """Change stage fields in place from flag strings.

    Args:
        stage_set: ``name.field=value`` items, comma-separated (``instruct.lr=2e-3``); a mix is
            ``instruct.mix=presence:0.5/verify:0.5`` (the tasks not named get 0).
        stage_steps: ``name=steps`` items, comma-separated (``instruct=200``).

    Raises:
        ValueError: an unknown stage, field or task, or a value of the wrong type.
    """
    names = {f.name for f in fields(StageConfig)} - {"name"}
    for item in filter(None, stage_set.split(",")):
        key, _, value = item.partition("=")
        name, _, field_name = key.partition(".")
        stage = _stage(stages, name)
        if field_name not in names:
            raise ValueError(f"--stage-set {key}: unknown field {field_name!r}; fields: {', '.join(sorted(names))}")
        if field_name == "mix":
            tasks = list(asdict(MixWeights()))
            given = {task: float(share) for task, share in (part.split(":") for part in value.split("/"))}
            if set(given) - set(tasks):
                raise ValueError(f"--stage-set {key}: unknown task(s) {sorted(set(given) - set(tasks))}; tasks: {', '.join(tasks)}")
            stage.mix = MixWeights(**{task: given.get(task, 0.0) for task in tasks})
            continue
        current = getattr(stage, field_name)
        try:
            setattr(stage, field_name, type(current)(value))
        except ValueError as exc:
            raise ValueError(f"--stage-set {key}: {value!r} is not a {type(current).__name__}") from exc
        stage.__post_init__()
    for item in filter(None, stage_steps.split(",")):
        name, _, steps = item.partition("=")
        _stage(stages, name).steps = int(steps)
