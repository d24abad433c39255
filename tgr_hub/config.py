"""One dataclass tree for a whole tgr-hub run.

A :class:`RunConfig` is built from a named preset, optionally a YAML/JSON file, and
``section.key=value`` overrides, in that order. It is validated in ``__post_init__``
and saved with every run and every meta-model (``tgr_config.json``).

    cfg = load_config(preset="quick", path="my.yaml", overrides=["train.beta=0"])
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .io import write_json_atomic
from .run_record import config_part


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class DataConfig:
    """Where few-shot episodes come from (meta-validation and meta-test)."""

    dataset: str = "glyphs"  # "glyphs", a local imagefolder / save_to_disk folder, or a Hub dataset id
    image_size: int = 32
    cache_dir: str | None = None  # default: ~/.cache/tgr_hub
    seed: int = 0  # seeds the class-disjoint split (and, for glyphs, the rendering augmentations)
    class_split: str | None = None  # a built-in class split (cub-200) or a JSON file of class lists
    # only these domains' classes for meta-validation and meta-test (None: every domain); the
    # benchmark's `standard` scenario evaluates on its one domain, as the paper evaluates on its dataset
    domains: list[str] | None = None

    def __post_init__(self) -> None:
        _check(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")


@dataclass
class PoolBuildConfig:
    """How `tgr-hub make-pool` trains its teachers."""

    domains: list[str] = field(default_factory=lambda: ["latin", "greek", "symbols"])
    archs: list[str] = field(default_factory=lambda: ["conv4", "resnet10t"])
    teachers: int = 6
    way: int = 5
    epochs: int = 30
    batch_size: int = 16  # a teacher sees ~120 images: small batches give enough optimiser steps
    lr: float = 3e-3

    def __post_init__(self) -> None:
        _check(self.teachers >= 1, "pool.teachers must be >= 1")
        _check(self.way >= 2, "pool.way must be >= 2")
        _check(self.epochs >= 1, "pool.epochs must be >= 1")
        _check(len(self.domains) >= 1 and len(self.archs) >= 1, "pool.domains and pool.archs must be non-empty")


@dataclass
class RecoverConfig:
    """Model inversion (docs/method.md stage 1); defaults are the reference's."""

    steps: int = 200
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    latent_dim: int = 256
    generator_width: int = 128  # channels of the generator's first conv block (reference 128)
    images_per_class: int = 30
    bn_weight: float = 1.0
    bank_size: int = 20  # recoveries kept per (teacher, class), overwritten cyclically
    recoveries_per_teacher: int = 1  # recoveries run up front for each teacher
    max_way: int = 5  # many-class teachers: a pseudo-task is an N-way subset of their labels
    reuse_generator: bool = False
    # online recovery inside meta-training (docs/method.md, stage 3): every `online_every` steps each
    # chosen teacher's pseudo-task is recovered afresh, used for that step's IGR and added to the bank
    online_every: int = 1  # 1: every step (reference); 0: only the up-front bank
    # cold: a new generator per recovery (reference); warm: each teacher's own generator continues;
    # meta: a copy of a meta-generator shared by the teachers, moved by Reptile (FREE's fast recovery)
    online_start: Literal["warm", "cold", "meta"] = "cold"
    online_steps: int = 200  # steps of an online recovery (a warm teacher's first one runs `steps`)
    # generate ceil(oversample × images_per_class) images per class and keep the images_per_class the
    # teacher gives the highest probability of their own class (1: keep all, the reference)
    oversample: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        _check(self.online_every >= 0, "recover.online_every must be >= 0 (0: no recovery during meta-training)")
        _check(
            self.online_start in ("warm", "cold", "meta"),
            f"recover.online_start must be warm, cold or meta, got {self.online_start!r}",
        )
        _check(self.online_steps >= 1, "recover.online_steps must be >= 1")
        _check(self.steps >= 1, "recover.steps must be >= 1")
        _check(self.images_per_class >= 2, "recover.images_per_class must be >= 2")
        _check(self.bank_size >= 1, "recover.bank_size must be >= 1")
        _check(self.bn_weight >= 0, "recover.bn_weight must be >= 0")
        _check(self.oversample >= 1, "recover.oversample must be >= 1 (1: keep every generated image)")


@dataclass
class EmbedConfig:
    """Fisher task embeddings (docs/method.md stage 2)."""

    method: Literal["task2vec", "reference"] = "task2vec"
    probe: str | None = None  # None: the meta-model backbone at initialisation; else a timm name
    probe_pretrained: bool = False
    head_steps: int = 50  # Task2Vec: fit the probe's head on the task first
    max_samples: int = 100  # images per teacher used for the Fisher
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        _check(
            self.method in ("task2vec", "reference"), f"embed.method must be task2vec or reference, got {self.method!r}"
        )


@dataclass
class GroupConfig:
    """Spectral grouping of dissimilar teachers."""

    num_groups: int = 5
    n_init: int = 30
    strategy: Literal["spectral", "random", "none"] = "spectral"
    # a group smaller than this is merged into the group most dissimilar to it: IGR aligns the
    # gradients of *different* teachers, which a group of one cannot offer
    min_size: int = 2

    def __post_init__(self) -> None:
        _check(self.num_groups >= 1, "group.num_groups must be >= 1")
        _check(self.min_size >= 1, "group.min_size must be >= 1")
        _check(self.strategy in ("spectral", "random", "none"), f"unknown group.strategy {self.strategy!r}")


@dataclass
class TrainConfig:
    """Meta-training with IGR and replay (docs/method.md stage 3)."""

    arch: str = "conv4"
    learner: Literal["protonet", "maml"] = "protonet"
    maml_first_order: bool = True
    iterations: int = 2000
    teachers_per_step: int = 4  # m
    beta: float = 1e-3
    igr_order: Literal["first", "second"] = "first"
    lr: float = 1e-3
    # the IGR step's per-task loss L_i: `head` (reference) scores a task's images with a shared
    # N-way head on the teacher's own label order, no inner loop; `episodic` is the learner's own
    # support/query loss (ProtoNet's does not depend on the label order)
    igr_loss: Literal["head", "episodic"] = "head"
    distill_weight: float = 0.0  # weight of T²·KL(teacher || meta-model) added to the CE; 0: CE only
    distill_temperature: float = 4.0
    seed: int | None = None  # meta-training's own seed (init, task choice, online recovery); None: the run's
    replay: bool = True
    replay_way: int = 5
    replay_shot: int = 5
    replay_query: int = 15
    replay_batch: int = 16
    # a replay batch's gradient over its episodes: "mean", or "sum" (the reference's). The IGR step
    # and replay share one Adam, so this sets the replay's weight against the IGR step's mean over tasks
    replay_reduction: Literal["mean", "sum"] = "mean"
    replay_steps: int = 1  # replay optimiser steps (batches of replay_batch episodes) after each IGR step
    # then, with patience > 0, more replay steps while the replay loss improved within the last
    # `replay_patience` batches, up to replay_max_steps (the reference loops until training stops improving)
    replay_patience: int = 0
    replay_max_steps: int = 50
    inner_steps: int = 5
    inner_lr: float = 0.01
    eval_every: int = 200
    val_episodes: int = 100
    # meta-validation episodes: the evaluation's way and query, and every shot the evaluation
    # reports (checkpoints are chosen on the mean accuracy over these shots)
    val_way: int = 5
    val_shots: list[int] = field(default_factory=lambda: [1, 5])
    val_query: int = 15
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps (and at the end); 0: never
    keep_checkpoints: int = 2  # newest checkpoints kept in runs/NAME/checkpoints/
    sync_check_every: int = 100  # several processes: verify every N steps that all hold the same model; 0: never
    # every N steps, P and the cosine of the task gradients on a fixed probe of pseudo-tasks go into
    # the history (tgr-hub analyze gradients' measurement, inside any run); 0: never
    analysis_every: int = 0
    analysis_groups: int = 8  # the probe's groups of teachers_per_step tasks

    def __post_init__(self) -> None:
        _check(self.learner in ("protonet", "maml"), f"train.learner must be protonet or maml, got {self.learner!r}")
        _check(self.igr_loss in ("head", "episodic"), f"train.igr_loss must be head or episodic, got {self.igr_loss!r}")
        _check(self.distill_weight >= 0, "train.distill_weight must be >= 0 (0: CE only)")
        _check(self.distill_temperature > 0, "train.distill_temperature must be > 0")
        _check(
            self.replay_reduction in ("mean", "sum"),
            f"train.replay_reduction must be mean or sum, got {self.replay_reduction!r}",
        )
        _check(self.replay_steps >= 1, "train.replay_steps must be >= 1")
        _check(self.replay_patience >= 0, "train.replay_patience must be >= 0 (0: exactly replay_steps)")
        _check(self.replay_max_steps >= self.replay_steps, "train.replay_max_steps must be >= train.replay_steps")
        _check(self.val_way >= 2 and self.val_query >= 1, "train.val_way must be >= 2 and train.val_query >= 1")
        _check(bool(self.val_shots) and all(s >= 1 for s in self.val_shots), "train.val_shots must be positive")
        _check(
            self.igr_order in ("first", "second"), f"train.igr_order must be first or second, got {self.igr_order!r}"
        )
        _check(self.iterations >= 0, "train.iterations must be >= 0")
        _check(self.teachers_per_step >= 1, "train.teachers_per_step must be >= 1")
        _check(self.beta >= 0, "train.beta must be >= 0")
        _check(self.eval_every >= 1, "train.eval_every must be >= 1")
        _check(
            self.mixed_precision in ("no", "fp16", "bf16"),
            f"train.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}",
        )
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: no checkpoints)")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        _check(self.sync_check_every >= 0, "train.sync_check_every must be >= 0 (0: never)")
        _check(self.analysis_every >= 0, "train.analysis_every must be >= 0 (0: never)")
        _check(self.analysis_groups >= 1, "train.analysis_groups must be >= 1")
        # torch's batch_norm has no 3rd derivative: second-order IGR on the episodic loss differentiates
        # through second-order MAML's inner-loop gradients, which needs one (the head loss has no inner loop)
        _check(
            not (
                self.igr_order == "second"
                and self.igr_loss == "episodic"
                and self.learner == "maml"
                and not self.maml_first_order
            ),
            "train.igr_order=second with train.igr_loss=episodic cannot be combined with second-order MAML "
            "(train.maml_first_order=false): BatchNorm has no 3rd derivative; use train.igr_order=first, "
            "train.maml_first_order=true or train.igr_loss=head",
        )


@dataclass
class EvalConfig:
    """Few-shot evaluation on real episodes."""

    split: Literal["train", "val", "test"] = "test"
    way: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    query: int = 15
    episodes: int = 600
    method: Literal["auto", "protonet", "finetune"] = "auto"
    inner_steps: int = 10
    inner_lr: float = 0.01

    def __post_init__(self) -> None:
        _check(self.way >= 2, "eval.way must be >= 2")
        _check(bool(self.shots) and all(s >= 1 for s in self.shots), "eval.shots must be positive")
        _check(self.episodes >= 1, "eval.episodes must be >= 1")


@dataclass
class PurerConfig:
    """PURER, the ``purer`` method of ``tgr-hub benchmark`` (:mod:`tgr_hub.peers.purer`): a learnable
    pixel memory improved by one inversion step per outer step, and second-order MAML on tasks
    drawn from it. Defaults: the public code's values (its argparse defaults, but the curriculum's
    start and scale from its published scripts), the length aside."""

    iterations: int = 15000  # outer steps (the public code: 60,000 tasks in batches of 4)
    episode_batch: int = 4  # tasks per outer step (the memory takes one data step per outer step)
    way: int = 5
    shot: int = 5
    query: int = 15  # shot + query of each class's per_class images: every one of them (20)
    per_class: int = 20  # learnable images per class
    data_lr: float = 0.25  # Adam on the pixels, in the teachers' normalised units (× their std in pixels)
    bn_weight: float = 0.01
    tv_weight: float = 1e-4
    l2_weight: float = 1e-5
    jitter: int = 2  # the largest roll of a data step, in pixels
    # "running-sum": the public code's weighting, teacher i of n weighing n - i
    teacher_weights: Literal["equal", "running-sum"] = "equal"
    inner_steps: int = 5
    inner_lr: float = 0.01
    first_order: bool = False
    outer_lr: float = 1e-3
    curriculum_start: int = 1000  # the outer step after which the curriculum term first joins; 0: never
    curriculum_scale: float = 10.0  # the published scripts' --adv_scale (1.0 is only their argparse default)
    curriculum_patience: int = 6  # later: whenever the tasks' accuracy has not improved for this many steps
    average_init: bool = True  # start from the teachers' average where their architecture is the meta-model's
    eval_every: int = 500
    val_episodes: int = 200
    val_inner_steps: int = 10  # fine-tuning steps of meta-validation
    checkpoint_every: int = 500  # outer steps between checkpoints (and at the end); 0: none

    def __post_init__(self) -> None:
        _check(self.iterations >= 1 and self.episode_batch >= 1, "purer.iterations and episode_batch must be >= 1")
        _check(self.eval_every >= 1 and self.val_episodes >= 1, "purer.eval_every and val_episodes must be >= 1")
        _check(self.way >= 2 and self.shot >= 1 and self.query >= 1, "purer.way >= 2, shot >= 1, query >= 1")
        _check(
            self.shot + self.query <= self.per_class,
            f"purer.shot + purer.query = {self.shot + self.query} images per class, but purer.per_class is "
            f"{self.per_class}: raise per_class or lower shot / query",
        )
        _check(self.jitter >= 0 and self.data_lr > 0, "purer.jitter must be >= 0 and purer.data_lr > 0")
        _check(
            self.teacher_weights in ("equal", "running-sum"),
            f"purer.teacher_weights must be equal or running-sum, got {self.teacher_weights!r}",
        )
        _check(
            self.checkpoint_every >= 0 and self.curriculum_start >= 0,
            "purer.checkpoint_every and curriculum_start must be >= 0",
        )
        _check(self.curriculum_patience >= 1, "purer.curriculum_patience must be >= 1")


@dataclass
class FreeConfig:
    """FREE, the ``free`` method of ``tgr-hub benchmark`` (:mod:`tgr_hub.peers.free`): a meta-generator
    adapted to each teacher in a few steps, sequential distillation with a Reptile outer step, and
    MAML replay. Defaults: the public code's values, the replay cap aside."""

    iterations: int = 1000  # outer steps (the public code: 999)
    warmup: int = 20  # the first outer steps train the meta-generator only
    teachers_per_step: int = 4  # drawn with replacement
    way: int = 5
    images_per_class: int = 20  # recovered per class and task
    adapt_steps: int = 5  # Adam steps adapting the meta-generator to one teacher
    generator_lr: float = 1e-3  # Adam of the adaptation (generator copy and codes)
    meta_generator_lr: float = 1e-3  # Adam of the meta-generator's first-order step
    latent_dim: int = 256
    generator_width: int = 128
    bn_weight: float = 0.0  # the public code recovers with CE only
    adversarial_weight: float = 1.0  # the boundary term, after the warm-up
    distill_steps: int = 1  # Adam steps per teacher of the sequential distillation
    distill_lr: float = 1e-3
    temperature: float = 1.0
    kl_on_probabilities: bool = False  # True: the public code's kl_div on probabilities (a defect)
    bank_last_teacher_only: bool = False  # True: the public code's banking of the last teacher only (a defect)
    bank_size: int = 20  # tasks' worth of images kept per class
    outer_lr: float = 1e-3  # the meta-model's Adam (Reptile step and replay)
    # θ − θ' is scaled by this before the meta-model's Adam (the public code: 67). Replay feeds the same
    # Adam state, so the scale sets how far a Reptile step moves against a replay step's
    reptile_scale: float = 67.0
    shot: int = 1  # replay episodes
    query: int = 15
    inner_steps: int = 5
    inner_lr: float = 0.01
    first_order: bool = False
    episode_batch: int = 10  # replay episodes per Adam step
    replay_patience: int = 10  # replay stops when this many batches in a row did not beat the best accuracy
    replay_max_batches: int = 50  # and after this many batches at most (the public code has no cap)
    eval_every: int = 100
    val_episodes: int = 200
    val_inner_steps: int = 10  # fine-tuning steps of meta-validation
    checkpoint_every: int = 100  # outer steps between checkpoints (and at the end); 0: none

    def __post_init__(self) -> None:
        _check(self.iterations >= 1 and self.warmup >= 0, "free.iterations must be >= 1 and free.warmup >= 0")
        _check(
            self.teachers_per_step >= 1 and self.adapt_steps >= 1 and self.distill_steps >= 1,
            "free.teachers_per_step, adapt_steps and distill_steps must be >= 1",
        )
        _check(self.way >= 2 and self.shot >= 1 and self.query >= 1, "free.way >= 2, shot >= 1, query >= 1")
        _check(self.reptile_scale > 0, "free.reptile_scale must be > 0")
        _check(
            self.shot + self.query <= self.images_per_class * self.bank_size,
            f"free.shot + free.query = {self.shot + self.query} images per class, more than the bank holds "
            f"(images_per_class × bank_size = {self.images_per_class * self.bank_size})",
        )
        _check(
            self.episode_batch >= 1 and self.replay_patience >= 1 and self.replay_max_batches >= 1,
            "free.episode_batch, replay_patience and replay_max_batches must be >= 1",
        )
        _check(self.temperature > 0 and self.generator_lr > 0, "free.temperature and free.generator_lr must be > 0")
        _check(self.eval_every >= 1 and self.val_episodes >= 1, "free.eval_every and val_episodes must be >= 1")
        _check(self.checkpoint_every >= 0, "free.checkpoint_every must be >= 0")


@dataclass
class BidfMkdConfig:
    """BiDf-MKD (white-box), the ``bidf-mkd`` method of ``tgr-hub benchmark`` (:mod:`tgr_hub.peers.bidf`):
    support and query sets recovered by fresh generators, MAML with distillation in both loops, a
    boundary term on the query set, and replay. Defaults: the public code's values, the length aside."""

    iterations: int = 15000  # outer steps (the public code: 240,000 tasks in batches of 4)
    episode_batch: int = 4  # tasks per outer step: a distillation task when a recovery is due, then replay
    way: int = 5
    recover_steps: int = 200  # Adam steps of each set's fresh generator
    images_per_class: int = 30  # of the support set and of the query set
    generator_lr: float = 1e-3
    latent_dim: int = 256
    generator_width: int = 128
    bn_weight: float = 0.0  # the public code recovers with CE only
    adversarial_weight: float = 1.0  # the query set's boundary term
    # the outer step from which the term joins: the published scripts' 4,000 of 60,000 outer steps, scaled
    adversarial_start: int = 1000
    kd_inner_steps: int = 10  # MAML inner steps distilling the support set
    temperature: float = 1.0
    kl_on_probabilities: bool = False  # True: the public code's kl_div on probabilities (a defect)
    recover_patience: int = 200  # a recovery is due after this many outer steps without a better batch accuracy
    bank_size: int = 20  # sets' worth of images kept per class
    shot: int = 1  # replay episodes
    query: int = 15
    inner_steps: int = 5  # replay's MAML inner steps
    inner_lr: float = 0.01
    first_order: bool = False
    outer_lr: float = 1e-3
    eval_every: int = 500
    val_episodes: int = 200
    val_inner_steps: int = 10  # fine-tuning steps of meta-validation
    checkpoint_every: int = 500  # outer steps between checkpoints (and at the end); 0: none

    def __post_init__(self) -> None:
        _check(self.iterations >= 1 and self.episode_batch >= 1, "bidf_mkd.iterations and episode_batch must be >= 1")
        _check(
            self.recover_steps >= 1 and self.images_per_class >= 1 and self.kd_inner_steps >= 1,
            "bidf_mkd.recover_steps, images_per_class and kd_inner_steps must be >= 1",
        )
        _check(self.way >= 2 and self.shot >= 1 and self.query >= 1, "bidf_mkd.way >= 2, shot >= 1, query >= 1")
        _check(
            self.shot + self.query <= 2 * self.images_per_class * self.bank_size,
            f"bidf_mkd.shot + bidf_mkd.query = {self.shot + self.query} images per class, more than the bank holds "
            f"(2 sets × images_per_class × bank_size = {2 * self.images_per_class * self.bank_size})",
        )
        _check(self.recover_patience >= 1 and self.adversarial_start >= 0, "bidf_mkd.recover_patience must be >= 1")
        _check(self.temperature > 0 and self.generator_lr > 0, "bidf_mkd.temperature and generator_lr must be > 0")
        _check(self.eval_every >= 1 and self.val_episodes >= 1, "bidf_mkd.eval_every and val_episodes must be >= 1")
        _check(self.checkpoint_every >= 0, "bidf_mkd.checkpoint_every must be >= 0")


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``tgr_config.json`` beside the meta-model."""

    seed: int = 0
    preset: str = "quick"
    recipe: str | None = None  # a paper benchmark recipe (tgr_hub.recipes), applied over the preset
    data: DataConfig = field(default_factory=DataConfig)
    pool: PoolBuildConfig = field(default_factory=PoolBuildConfig)
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    purer: PurerConfig = field(default_factory=PurerConfig)
    free: FreeConfig = field(default_factory=FreeConfig)
    bidf_mkd: BidfMkdConfig = field(default_factory=BidfMkdConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())


# --- presets -----------------------------------------------------------------------------

# Each preset is a set of overrides on the defaults (the defaults are the reference values).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # seconds: for tests
    "smoke": {
        "pool": {"teachers": 4, "epochs": 2, "domains": ["latin", "greek"], "archs": ["conv4"]},
        "recover": {
            "steps": 8,
            "images_per_class": 6,
            "bank_size": 2,
            "generator_width": 16,
            "online_every": 1,
            "online_start": "warm",
            "online_steps": 2,
        },
        "embed": {"head_steps": 5, "max_samples": 20},
        "group": {"num_groups": 2, "n_init": 5},
        "train": {
            "iterations": 4,
            "teachers_per_step": 2,
            "replay_batch": 2,
            "replay_shot": 1,
            "replay_query": 2,
            "eval_every": 2,
            "val_episodes": 4,
            "val_query": 5,
            "inner_steps": 1,
        },
        "eval": {"episodes": 10, "query": 5},
        "purer": {
            "iterations": 4,
            "episode_batch": 2,
            "shot": 1,
            "query": 3,
            "per_class": 4,
            "inner_steps": 1,
            "curriculum_start": 2,
            "curriculum_patience": 1,
            "eval_every": 2,
            "val_episodes": 4,
            "val_inner_steps": 2,
        },
        "free": {
            "iterations": 4,
            "warmup": 1,
            "teachers_per_step": 2,
            "images_per_class": 4,
            "adapt_steps": 2,
            "generator_width": 32,
            "shot": 1,
            "query": 3,
            "inner_steps": 1,
            "episode_batch": 2,
            "replay_patience": 1,
            "replay_max_batches": 2,
            "eval_every": 2,
            "val_episodes": 4,
            "val_inner_steps": 2,
        },
        "bidf_mkd": {
            "iterations": 4,
            "episode_batch": 2,
            "recover_steps": 2,
            "images_per_class": 4,
            "latent_dim": 32,
            "generator_width": 16,
            "kd_inner_steps": 1,
            "recover_patience": 1,
            "adversarial_start": 1,
            "shot": 1,
            "query": 3,
            "inner_steps": 1,
            "eval_every": 2,
            "val_episodes": 4,
            "val_inner_steps": 2,
        },
    },
    # minutes on a laptop CPU
    "quick": {
        "pool": {"teachers": 12},
        "recover": {
            "steps": 40,
            "images_per_class": 12,
            "bank_size": 20,
            "generator_width": 64,
            "bn_weight": 0.02,
            "online_every": 10,
            "online_start": "warm",
            "online_steps": 5,
            "oversample": 1.5,
        },
        "embed": {"head_steps": 30, "max_samples": 60},
        "group": {"num_groups": 3, "n_init": 10},
        "train": {"iterations": 300, "replay_query": 5, "replay_batch": 2, "eval_every": 100, "val_episodes": 200},
        "eval": {"episodes": 600},
        # the peers' starts scale with the schedule: 1,000 of 15,000 outer steps is 20 of 300
        "purer": {"iterations": 300, "curriculum_start": 20, "eval_every": 100, "checkpoint_every": 100},
        # FREE's step recovers from 4 teachers (5 adaptation steps each) and distils them: ~55 ERM steps
        # on this project's CPU (bench/bench_peers.py), so its quick run is shorter, to cost about what a
        # PURER or BiDf-MKD quick cell does (~30 core-minutes); the warm-up is shortened in proportion
        "free": {
            "iterations": 60,
            "warmup": 4,
            "generator_width": 64,
            "episode_batch": 4,
            "replay_max_batches": 1,  # one MAML batch per step, as PURER's quick
            "eval_every": 20,
            "checkpoint_every": 20,
        },
        "bidf_mkd": {
            "iterations": 300,
            "recover_steps": 40,
            "images_per_class": 10,
            "generator_width": 64,
            "kd_inner_steps": 5,
            "recover_patience": 10,
            "adversarial_start": 20,
            "eval_every": 100,
            "checkpoint_every": 100,
        },
    },
    # the reference settings of docs/method.md
    "paper": {
        "pool": {"teachers": 100, "epochs": 30},
        # the reference's schedule: ~1,200 rounds, each one IGR step on 4 freshly recovered tasks (a cold
        # 200-step recovery each, the recover defaults) then a replay loop of 16-episode batches (their
        # losses summed, 1-shot as in its published scripts, second-order MAML), at least 5, until the
        # replay loss has not improved for 4 batches; a resumable checkpoint at every meta-validation
        "train": {
            "learner": "maml",
            "maml_first_order": False,
            "iterations": 1200,
            "replay_shot": 1,
            "replay_reduction": "sum",
            "replay_steps": 5,
            "replay_patience": 4,
            "replay_max_steps": 50,
            "eval_every": 100,
            "val_episodes": 600,
            "checkpoint_every": 100,
        },
    },
}


# --- building a config -------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML/JSON or a ``--set`` string) to the type of a field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(annotation, value, where)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))) and type(None) in args:
            return None
        last_error: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                last_error = error
        raise last_error or ConfigError(f"{where}: cannot use {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, where) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be {kind}, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be {kind}, got {value!r}") from None
        if annotation is int:
            if number != int(number):
                raise ConfigError(f"{where} must be {kind}, got {value!r}")
            return int(number)
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in {where or 'config'}; known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    for key in reversed(keys):
        value = {key: value}
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A config saved before ``train.igr_loss``: its ``task_loss`` was the learner's episodic loss,
    with (``distill``) or without (``episodic``) a T²-scaled KL of weight 1."""
    train = values.get("train")
    if not isinstance(train, dict) or "task_loss" not in train:
        return values
    train = dict(train)
    legacy = train.pop("task_loss")
    train.setdefault("igr_loss", "episodic")
    train.setdefault("distill_weight", 1.0 if legacy == "distill" else 0.0)
    return {**values, "train": train}


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
    recipe: str | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig`: defaults < preset < recipe < file < values < overrides.

    Args:
        preset: one of :data:`PRESETS` (``smoke``, ``quick``, ``paper``); default: the file's,
            else the recipe's (``paper``), else ``quick``.
        recipe: a paper benchmark of :data:`tgr_hub.recipes.RECIPES` (dataset, image size,
            class split, teacher architectures and pool size); default: the file's, if any.
        path: a YAML or JSON file (e.g. a saved ``tgr_config.json``).
        overrides: ``section.key=value`` strings, values parsed as YAML scalars.
        values: a nested dict applied after the file (used by CLI flags).
    """
    # a saved tgr_config.json carries the run's results too: only its config sections count
    file_values = _migrate(config_part(read_config_file(path))) if path is not None else {}
    recipe = recipe or file_values.get("recipe")
    recipe_values: dict[str, Any] = {}
    if recipe:
        from .recipes import get_recipe

        chosen = get_recipe(recipe)
        recipe_values = chosen.config_values()
    name = preset or file_values.get("preset") or (chosen.preset if recipe else None) or "quick"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    merged: dict[str, Any] = _merge(_merge(PRESETS[name], recipe_values), file_values)
    merged["preset"] = name
    merged["recipe"] = recipe or None
    if values:
        merged = _merge(merged, values)
    for text in overrides or []:
        merged = _merge(merged, _parse_override(text))
    return _build(RunConfig, merged, "")


# --- reusing saved work -----------------------------------------------------------------------------

#: What may differ between saved work and the run that reuses it, by what is reused (dotted names; a
#: section's name covers the whole section). Every other setting must be equal, or the work is redone
#: (a meta-model, its test) or refused (a checkpoint, a benchmark folder).
MAY_CHANGE: dict[str, frozenset[str]] = {
    # resuming meta-training from a checkpoint: how long it runs, how it saves and what it measures,
    # not what a step computes
    "checkpoint": frozenset(
        {
            "train.iterations",
            "train.checkpoint_every",
            "train.keep_checkpoints",
            "train.sync_check_every",
            "train.analysis_every",
            "train.analysis_groups",
            "purer.iterations",
            "purer.checkpoint_every",
            "free.iterations",
            "free.checkpoint_every",
            "bidf_mkd.iterations",
            "bidf_mkd.checkpoint_every",
        }
    ),
    # a TGR run folder's trained meta-model: only its evaluation may differ (and the peers' settings, unused;
    # and how often it saved checkpoints, as resuming is exact)
    "meta-model": frozenset({"eval", "purer", "free", "bidf_mkd", "train.checkpoint_every", "train.keep_checkpoints"}),
    # a TGR run folder's test metrics: nothing may differ (but the peers' settings, unused, and the checkpoints)
    "evaluation": frozenset({"purer", "free", "bidf_mkd", "train.checkpoint_every", "train.keep_checkpoints"}),
    # a benchmark folder's cells: each cell runs with its own seed; measuring gradients changes no result;
    # the peers' sections matter to their own cells only (tgr_hub.benchmark.grid.method_settings)
    "benchmark": frozenset({"seed", "train.analysis_every", "train.analysis_groups", "purer", "free", "bidf_mkd"}),
}


#: Settings added after saved work (run folders, checkpoints, benchmark cells) already existed, each
#: with the value that computes what the code did before it: at that value a setting is left out of
#: every comparison, so the saved work stays valid; at any other value it differs from that work.
ADDED_LATER: dict[str, Any] = {"train.replay_reduction": "mean"}


def comparable(config: dict[str, Any], reuse: str) -> dict[str, Any]:
    """``config`` as JSON values, without what :data:`MAY_CHANGE` lets differ when ``reuse`` is reused,
    and without each :data:`ADDED_LATER` setting that holds its earlier behaviour's value."""
    if reuse not in MAY_CHANGE:
        raise ValueError(f"unknown kind of reuse {reuse!r}; one of {sorted(MAY_CHANGE)}")
    data = json.loads(json.dumps(config, default=str))
    added = {dotted for dotted, before in ADDED_LATER.items() if _walk(data, dotted.split(".")) == before}
    for dotted in MAY_CHANGE[reuse] | added:
        *parents, key = dotted.split(".")
        node = _walk(data, parents)
        if isinstance(node, dict):
            node.pop(key, None)
    return data


def _walk(data: dict[str, Any], keys: list[str]) -> Any:
    """``data[k0][k1]...`` for ``keys``; None where a level is missing."""
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def changed_settings(saved: dict[str, Any], now: dict[str, Any], reuse: str) -> dict[str, tuple[Any, Any]]:
    """``{dotted name: (saved value, value now)}`` of each setting that differs and may not (``reuse``)."""
    changed: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            changed[prefix] = (a, b)

    walk(comparable(saved, reuse), comparable(now, reuse), "")
    return changed
