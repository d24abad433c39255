"""Build a pool of teachers: N-way classifiers trained on N meta-train classes each.

This is the offline stand-in for "a pool of classifiers somebody put on the Hub": every
teacher is trained from scratch on ``way`` classes sampled from the meta-train classes of
one domain, is validated on held-out images of those classes, and is saved in timm's Hub
layout (``config.json`` with ``label_names`` and the true ``input_size``/``mean``/``std``,
plus ``model.safetensors``), so plain timm loads it with
``timm.create_model("local-dir:pool/t03", pretrained=True)`` (after ``import tgr_hub`` for Conv4).

    reports = make_pool(Path("pool"), PoolBuildConfig(domains=["latin", "greek"], archs=["conv4", "resnet10t"],
                                                      teachers=6, way=5, epochs=6), seed=0)
    print(format_table(reports))

Teacher ``i`` (named ``t00``, ``t01``, ...) takes the ``i``-th (architecture, domain) pair of
the cycle ``[(a, d) for d in domains for a in archs]``, so architectures and domains are spread
evenly. Its classes, its held-out images, its initialisation and its batches are functions of
``(seed, i)`` only; a teacher folder whose recorded recipe matches is reused, not retrained.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import seeds
from .config import DataConfig, PoolBuildConfig
from .data.episodes import channel_stats
from .errors import ConfigError, DatasetError, UnknownArchitectureError
from .io import write_json_atomic, write_text_atomic
from .models.hub_layout import CONFIG_NAME, WEIGHTS_NAME, save_timm_folder
from .recipes import ALL_DOMAINS

__all__ = [
    "torch_threads",
    "TeacherSpec",
    "TeacherReport",
    "plan_teachers",
    "train_teacher",
    "make_pool",
    "format_table",
    "split_heldout",
]

_logger = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when training changes, so existing teachers are retrained
HELDOUT_FRACTION = 0.2
_TEACHER_KEY = "tgr_teacher"


@dataclass
class TeacherSpec:
    """What a teacher is trained on, and how (everything that decides its weights)."""

    name: str
    index: int
    architecture: str
    domain: str
    classes: list[int]  # class ids in the meta-train split, in label order
    label_names: list[str]
    seed: int  # the teacher's own seed, derived from the pool seed and its index
    epochs: int
    batch_size: int
    lr: float
    image_size: int
    dataset: str
    data_seed: int
    heldout_fraction: float = HELDOUT_FRACTION
    recipe: int = RECIPE_VERSION


@dataclass
class TeacherReport:
    """A trained (or reused) teacher and how well it does on its held-out images."""

    name: str
    architecture: str
    domain: str
    label_names: list[str]
    heldout_accuracy: float
    train_images: int
    heldout_images: int
    seconds: float
    folder: str
    reused: bool = False
    reload_exact: bool | None = None  # timm's local-dir loader reproduces the logits bit for bit
    spec: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.label_names


def plan_teachers(
    class_names: Sequence[str],
    class_domains: Sequence[str],
    *,
    domains: Sequence[str],
    archs: Sequence[str],
    teachers: int,
    way: int,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    image_size: int,
    dataset: str,
    data_seed: int,
) -> list[TeacherSpec]:
    """Decide architecture, domain and classes of every teacher (no training).

    Raises:
        DatasetError: a requested domain has fewer than ``way`` meta-train classes.
    """
    by_domain: dict[str, list[int]] = {d: [] for d in domains}
    for c, d in enumerate(class_domains):
        if d in by_domain:
            by_domain[d].append(c)
    for d, classes in by_domain.items():
        if len(classes) < way:
            known = sorted(set(class_domains))
            raise DatasetError(
                f"domain {d!r} has {len(classes)} meta-train classes, a {way}-way teacher needs {way}",
                hint=f"domains with meta-train classes: {', '.join(known) or 'none'}",
            )
    cycle = [(a, d) for d in domains for a in archs]
    width = max(2, len(str(teachers - 1)))
    specs = []
    for i in range(teachers):
        arch, domain = cycle[i % len(cycle)]
        tseed = seeds.teacher_seed(seed, i)
        g = seeds.teacher_plan_generator(tseed)
        pool = by_domain[domain]
        pick = torch.randperm(len(pool), generator=g)[:way].tolist()
        classes = [pool[j] for j in pick]
        specs.append(
            TeacherSpec(
                name=f"t{i:0{width}d}",
                index=i,
                architecture=arch,
                domain=domain,
                classes=classes,
                label_names=[class_names[c] for c in classes],
                seed=tseed,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                image_size=image_size,
                dataset=dataset,
                data_seed=data_seed,
            )
        )
    return specs


def split_heldout(
    labels: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, hold out ``ceil(fraction * n_c)`` images (at least 1, leaving at least 1).

    Args:
        labels: ``[N]`` int64 in ``0..num_classes-1``.

    Returns:
        ``(train_idx, heldout_idx)``, disjoint, covering ``0..N-1``, each sorted.
    """
    train, held = [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < 2:
            raise DatasetError(f"class {c} has {idx.numel()} images; a teacher needs at least 2 (train + held-out)")
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = min(max(1, math.ceil(fraction * idx.numel())), idx.numel() - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def _augment(
    x: torch.Tensor, generator: torch.Generator, shift: int = 3, scale: float = 0.1, rotate: float = 10.0
) -> torch.Tensor:
    """Random affine jitter per image: translation, scaling and rotation, edge-padded.

    Font-to-font variation of a glyph is mostly position, size and slant, so these are the
    augmentations; no flips (mirrored glyphs are other glyphs).

    Args:
        x: ``[B, C, H, W]`` in [0, 1].
        generator: draws, in order, ``[B, 2]`` integer pixel shifts in ``[-shift, shift]``
            (rows, cols), ``[B]`` scale factors in ``1 +- scale`` and ``[B]`` angles in
            ``+- rotate`` degrees.

    Returns:
        ``[B, C, H, W]``; with ``scale=0`` and ``rotate=0`` exactly the input translated by the
        integer shifts with replicated edges.
    """
    b, _, h, w = x.shape
    shifts = torch.randint(-shift, shift + 1, (b, 2), generator=generator).to(x.dtype)
    scales = 1.0 + (torch.rand(b, generator=generator, dtype=x.dtype) * 2 - 1) * scale
    angles = torch.deg2rad((torch.rand(b, generator=generator, dtype=x.dtype) * 2 - 1) * rotate)
    cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shifts[:, 1] * 2 / w], dim=1),
            torch.stack([sin, cos, shifts[:, 0] * 2 / h], dim=1),
        ],
        dim=1,
    )  # output pixel p samples the input at theta @ (p, 1), in [-1, 1] coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _training_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here (ConfigError otherwise)."""
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}", hint="use cpu, cuda or cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device", hint="use --device cpu")
    return chosen


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)`` (None: unchanged), then restore.

    Small models on a busy 2-core machine train several times faster on one thread than on two
    (OpenMP threads spin while waiting for each other), hence the knob.
    """
    if not num_threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x - m) / s


def create_teacher_model(architecture: str, num_classes: int, image_size: int, seed: int) -> nn.Module:
    """A freshly initialised timm classifier, initialised from ``seed`` (global RNG untouched)."""
    import timm

    from . import models  # noqa: F401  (registers conv4)

    if not timm.is_model(architecture):
        raise UnknownArchitectureError(
            f"unknown architecture {architecture!r}",
            hint="use conv4 or any timm model name (timm.list_models())",
        )
    kwargs: dict[str, Any] = {}
    if architecture.startswith("conv4"):
        kwargs["img_size"] = image_size
    with seeds.seeded_torch(seed):
        try:
            return timm.create_model(architecture, pretrained=False, num_classes=num_classes, **kwargs)
        except (ValueError, TypeError, RuntimeError) as error:
            raise ConfigError(f"cannot build a {architecture} teacher for {image_size}px images: {error}") from None


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, normalize, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def train_teacher(
    spec: TeacherSpec,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train one teacher with AdamW and a one-cycle schedule.

    Args:
        spec: architecture, seed, epochs, batch size, lr.
        train_x: ``[N, 3, S, S]`` float in [0, 1].
        train_y: ``[N]`` int64 in ``0..way-1``.
        mean, std: the normalisation the teacher applies (recorded in its config).
        device: where the model trains. Batches are drawn and augmented on the CPU (the same
            random stream on every device), then moved; bit-exact repeatability holds on the CPU.

    Returns:
        The trained model in eval mode, on the CPU.
    """
    from .progress import progress_bar

    device = torch.device(device)
    model = create_teacher_model(spec.architecture, len(spec.classes), spec.image_size, spec.seed).to(device)
    normalize = _normalizer(mean, std)
    g = seeds.teacher_batches_generator(spec.seed)
    n = len(train_x)
    steps_per_epoch = max(1, math.ceil(n / spec.batch_size))
    total = steps_per_epoch * spec.epochs
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr
    )
    schedule: torch.optim.lr_scheduler.LRScheduler
    if total >= 4:
        # one-cycle needs at least one warm-up step: 20% of the steps, but never less than 1.5 of them
        warmup = max(0.2, 1.5 / total)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=total, pct_start=warmup)
    else:  # too few steps for a schedule: constant learning rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model.train()
    bar = progress_bar(
        total=total, desc=f"{spec.name} {spec.architecture}", unit="step", leave=False, disable=not progress
    )
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * spec.batch_size : (s + 1) * spec.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs two samples; fold a lone last sample away
                continue
            x = normalize(_augment(train_x[idx], g)).to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), train_y[idx].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            if progress:  # .item() waits for the device: only when the loss is shown
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.to("cpu").eval()


def _read_existing(folder: Path, spec: TeacherSpec) -> TeacherReport | None:
    """The recorded report of an already trained teacher with exactly this recipe, else None."""
    config_path = folder / CONFIG_NAME
    if not (config_path.is_file() and (folder / WEIGHTS_NAME).is_file()):
        return None
    try:
        recorded = json.loads(config_path.read_text()).get(_TEACHER_KEY) or {}
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    if recorded.get("spec") != json.loads(json.dumps(asdict(spec))):
        _logger.info("%s: recipe changed, retraining", folder)
        return None
    report = dict(recorded.get("report") or {})
    try:
        return TeacherReport(
            **{**report, "folder": str(folder), "reused": True, "seconds": 0.0, "spec": recorded["spec"]}
        )
    except TypeError:
        return None


def _check_reload(folder: Path, model: nn.Module, x_normalized: torch.Tensor) -> bool:
    """Does plain timm (``local-dir:``) load the saved teacher and give the very same logits?"""
    import timm

    timm_logger = logging.getLogger("timm")
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # timm logs every checkpoint it loads at INFO
    try:
        reloaded = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()
    finally:
        timm_logger.setLevel(level)
    with torch.no_grad():
        return bool(torch.equal(model(x_normalized), reloaded(x_normalized)))


def make_pool(
    out: str | Path,
    pool: PoolBuildConfig,
    *,
    seed: int,
    data: DataConfig | None = None,
    num_threads: int | None = 1,
    progress: bool = True,
    device: str | torch.device = "cpu",
    planner: Callable[[Sequence[str], Sequence[str]], list[TeacherSpec]] | None = None,
) -> list[TeacherReport]:
    """Train ``teachers`` teachers and write the pool folder.

    Writes ``out/tNN/`` (timm Hub layout; ``config.json`` also records the recipe and held-out
    accuracy under ``tgr_teacher``), ``out/repo-list.txt`` (``./tNN`` entries) and
    ``out/pool.json`` (settings + reports). Teachers already in ``out`` with the same recipe
    are reused, so an interrupted run resumes.

    Args:
        out: pool folder.
        pool: what to train (the ``pool`` section of the run config): ``domains`` to draw each
            teacher's classes from (one domain per teacher; ``["*"]``: every domain of the dataset,
            a Hub benchmark's single domain is its name), timm ``archs`` (``conv4``
            included), the number of ``teachers``, ``way`` classes each, and the training
            (``epochs``, ``batch_size``, ``lr``; AdamW, one-cycle schedule, random translations).
        seed: seeds classes, held-out images, initialisation and batches of every teacher.
        data: the dataset (``"glyphs"`` or any dataset :func:`tgr_hub.data.load_split` reads;
            teachers use its meta-train split only), its split seed, cache, image size and
            class split (passed to :func:`tgr_hub.data.load_split`); default
            :class:`~tgr_hub.config.DataConfig` (glyphs, 32x32).
        num_threads: torch CPU threads while training, restored afterwards (None: leave torch's
            setting). Teachers are small: on a 2-core CPU one thread trains them about as fast as
            two when the machine is idle, and several times faster when it is busy (OpenMP
            threads spin waiting for each other).
        progress: show tqdm bars.
        device: where the teachers train (``"cuda"`` on a GPU machine; the quickstart passes
            Accelerate's device). The saved teachers are the same recipe on any device, but only
            the CPU is bit-exact from run to run.
        planner: decides the teachers instead of :func:`plan_teachers` (e.g. the overlap ladder of
            :mod:`tgr_hub.analyze`): called with the meta-train split's ``class_names`` and
            ``class_domains`` (of ``pool.domains``), it returns the specs, whose ``classes`` index
            that split; ``pool.teachers`` is then ignored.

    Returns:
        One :class:`TeacherReport` per teacher, in order.

    Raises:
        UnknownArchitectureError: an architecture timm does not know.
        DatasetError: the data cannot be loaded, or a domain has too few classes.
    """
    import timm

    from .progress import progress_bar

    data = data if data is not None else DataConfig()
    domains, archs, teachers, way = list(pool.domains), list(pool.archs), pool.teachers, pool.way
    epochs, batch_size, lr = pool.epochs, pool.batch_size, pool.lr
    dataset, data_seed, cache_dir, image_size = data.dataset, data.seed, data.cache_dir, data.image_size
    device = _training_device(device)
    for arch in archs:
        if not timm.is_model(arch):
            raise UnknownArchitectureError(
                f"unknown architecture {arch!r}", hint="use conv4 or any timm model name (see timm.list_models())"
            )
    for arch in archs:  # fail before any training if an architecture cannot take the images
        create_teacher_model(arch, way, image_size, seed=0)
    from .data import load_split

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    every_domain = list(domains) == [ALL_DOMAINS]
    split = load_split(
        dataset,
        "train",
        domains=None if every_domain else list(domains),
        image_size=image_size,
        seed=data_seed,
        cache_dir=cache_dir,
        class_split=data.class_split,
    )
    if every_domain:
        domains = split.domains()
    if planner is not None:
        specs = planner(split.class_names, split.class_domains)
        teachers = len(specs)
    else:
        specs = plan_teachers(
            split.class_names,
            split.class_domains,
            domains=domains,
            archs=archs,
            teachers=teachers,
            way=way,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            image_size=split.image_size,
            dataset=dataset,
            data_seed=data_seed,
        )
    # the teachers' normalisation: per-channel statistics of the meta-train images they come from
    channel_mean, channel_std = channel_stats(split.images[:: max(1, len(split) // 4096)])
    mean = tuple(round(float(v), 4) for v in channel_mean)
    std = tuple(round(max(float(v), 1e-3), 4) for v in channel_std)
    _logger.info(
        "make-pool: %d teachers from %d meta-train classes of %s; mean %s std %s",
        teachers,
        split.num_classes,
        dataset,
        mean,
        std,
    )

    reports: list[TeacherReport] = []
    bar = progress_bar(specs, desc="make-pool", unit="teacher", disable=not progress)
    for spec in bar:
        folder = out / spec.name
        existing = _read_existing(folder, spec)
        if existing is not None:
            _logger.info("%s: already trained (held-out accuracy %.3f), reused", spec.name, existing.heldout_accuracy)
            reports.append(existing)
            continue
        t0 = time.perf_counter()
        sub = split.select_classes(spec.classes)
        g = seeds.teacher_heldout_generator(spec.seed)
        train_idx, held_idx = split_heldout(sub.labels, len(spec.classes), spec.heldout_fraction, g)
        train_x, train_y = sub.float_images(train_idx), sub.labels[train_idx]
        held_x, held_y = sub.float_images(held_idx), sub.labels[held_idx]
        with torch_threads(num_threads):
            model = train_teacher(spec, train_x, train_y, mean=mean, std=std, progress=progress, device=device)
        normalize = _normalizer(mean, std)
        logits = _predict(model, held_x, normalize)
        accuracy = float((logits.argmax(1) == held_y).float().mean())
        seconds = time.perf_counter() - t0
        report = TeacherReport(
            name=spec.name,
            architecture=spec.architecture,
            domain=spec.domain,
            label_names=spec.label_names,
            heldout_accuracy=round(accuracy, 4),
            train_images=len(train_idx),
            heldout_images=len(held_idx),
            seconds=round(seconds, 2),
            folder=str(folder),
            spec=asdict(spec),
        )
        recorded = {k: v for k, v in asdict(report).items() if k not in ("spec", "folder", "reused", "reload_exact")}
        # a stale config must never vouch for new weights, should we stop between the two writes
        (folder / CONFIG_NAME).unlink(missing_ok=True)
        save_timm_folder(
            model,
            folder,
            architecture=spec.architecture,
            num_classes=len(spec.classes),
            label_names=spec.label_names,
            pretrained_cfg={
                "input_size": (3, split.image_size, split.image_size),
                "mean": mean,
                "std": std,
                "interpolation": "bilinear",
                "crop_pct": 1.0,
                "description": f"{len(spec.classes)}-way {spec.domain} teacher trained by tgr-hub make-pool",
            },
            extra={_TEACHER_KEY: {"spec": asdict(spec), "report": recorded}},
        )
        report.reload_exact = _check_reload(folder, model, normalize(held_x[:64]))
        if not report.reload_exact:
            _logger.warning("%s: timm's local-dir loader does not reproduce the logits exactly", spec.name)
        _logger.info(
            "%s: %s on %s, held-out accuracy %.3f (%.1fs)", spec.name, spec.architecture, spec.domain, accuracy, seconds
        )
        bar.set_postfix(last=f"{spec.name} {accuracy:.2f}")
        reports.append(report)

    lines = [
        f"# tgr-hub make-pool: {teachers} teachers, {way}-way, {dataset} ({', '.join(domains)}), "
        f"archs {', '.join(archs)}, seed {seed}",
        "# one entry per line; relative paths resolve against this file's folder",
    ]
    lines += [f"./{spec.name}" for spec in specs]
    write_text_atomic(out / "repo-list.txt", "\n".join(lines) + "\n")
    summary = {
        "dataset": dataset,
        "domains": list(domains),
        "archs": list(archs),
        "teachers": teachers,
        "way": way,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "data_seed": data_seed,
        "image_size": split.image_size,
        "mean": list(mean),
        "std": list(std),
        "dataset_revision": split.revision,
        "class_split": split.class_split,
        "seconds": round(time.perf_counter() - started, 2),
        "members": [{k: v for k, v in asdict(r).items() if k != "spec"} for r in reports],
    }
    write_json_atomic(out / "pool.json", summary)
    return reports


def format_table(reports: Sequence[TeacherReport]) -> str:
    """A plain-text summary table: teacher, arch, domain, classes, held-out accuracy."""
    rows = [("teacher", "arch", "domain", "classes", "held-out acc", "time")]
    for r in reports:
        classes = ", ".join(name.split("/", 1)[-1] for name in r.label_names)
        rows.append(
            (
                r.name,
                r.architecture,
                r.domain,
                classes,
                f"{100 * r.heldout_accuracy:.1f}%",
                "reused" if r.reused else f"{r.seconds:.1f}s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
