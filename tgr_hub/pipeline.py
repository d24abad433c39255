"""A whole TGR run: pool ─► recover ─► embed ─► group ─► meta-train ─► evaluate, in a run folder.

Each stage writes its artefact into the run folder, and a rerun skips every finished stage
(:func:`stage_status` says which; meta-training and evaluation only when the recorded config
is this run's), so rerunning a stopped run resumes it (meta-training resumes from its newest
checkpoint with ``resume=True`` / ``tgr-hub train --resume``):

    runs/NAME/
      pool.json                 the resolved pool (sources, pinned revisions, labels)
      recovered/bank.safetensors + bank.json    memory bank of recovered pseudo-tasks
      recovered/generators.safetensors          warm online recovery: each teacher's generator + Adam state
      embeddings.safetensors    diagonal Fisher per teacher
      dissimilarity.json        [N, N] teacher dissimilarity
      groups.json               teacher groups
      checkpoints/step-NNNNNN/  meta-training checkpoints (train.checkpoint_every > 0)
      config.json, model.safetensors            the meta-model (timm Hub layout, num_classes 0)
      tgr_config.json           full config + pool + groups + metrics
      dissimilarity.png, training_curve.png

Several processes (``accelerate launch -m tgr_hub.cli train ...`` or ``tgr-hub train
--num-processes N``): every stage shares its work out by index, ``i % world == rank``:
recovery and Fisher embedding by teacher, meta-training by task and replay episode, evaluation
by episode. Each process writes what it computed as one file per item (``recovered/parts/``,
``embeddings-parts/``; these also make an interrupted stage resume where it stopped), the main
process merges them into the artefacts above in teacher order, and everyone reads the merged
artefact back. Each item is seeded by its index alone (recovery by the stream
[seed, RECOVER, teacher, recovery], embedding by [seed, EMBED, teacher]; see tgr_hub.seeds), so
the artefacts do not depend on the number of processes.
Every file in the run folder is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from . import __version__, seeds
from .bank import MemoryBank, RecoveredTask
from .config import RunConfig, changed_settings
from .data import split_of
from .data.episodes import ImageSplit
from .distributed import Distributed, check_run_folder_shared, make_accelerator
from .embed import dissimilarity_matrix, fisher_diagonal
from .errors import MemoryBankError, RunFolderError
from .evaluate import chosen_validation, eval_settings, evaluate_model
from .figures import plot_dissimilarity, plot_training_curves
from .group import group_teachers
from .io import save_safetensors_atomic, write_json_atomic
from .metamodel import TGR_CONFIG_NAME, MetaModel, create_meta_model, load_meta_model, save_meta_model
from .pool import PoolMember, load_pool
from .probe import gradient_measure
from .progress import progress_bar
from .recover import WarmGenerator, recover_teachers
from .run_record import MemberRecord, RunRecord, describe_pool
from .seeds import EMBED, seed_sequence
from .train import meta_train

logger = logging.getLogger(__name__)

RECOVER_PARTS = "parts"  # inside recovered/
GENERATORS_FILE = "generators.safetensors"  # inside recovered/: warm generators for online recovery
GENERATOR_PREFIX = "generator/"  # keys of a task part that hold the generator state
EMBED_PARTS = "embeddings-parts"
CHECKPOINTS = "checkpoints"


def _default_dist(cfg: RunConfig, dist: Distributed | None) -> Distributed:
    return dist if dist is not None else Distributed(make_accelerator(cfg.train.mixed_precision))


# --- stage 1: recover -------------------------------------------------------------------


def _part_name(index: int, recovery: int) -> str:
    return f"t{index:05d}-r{recovery:04d}.safetensors"


def _save_task_part(task: RecoveredTask, path: Path, warm: WarmGenerator | None = None) -> None:
    """One recovered task as safetensors (images as the bank stores them: uint8 = round(255·x)).

    With ``warm``, the teacher's generator state after this recovery goes into the same file, so
    a part and the generator it left are written (and found on resume) together.
    """
    images = (task.images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    metadata = {
        "teacher": task.teacher,
        "classes": json.dumps([int(c) for c in task.classes]),
        "class_names": json.dumps(list(task.class_names)),
        "loss": repr(float(task.loss)),
        "best_step": str(int(task.best_step)),
    }
    tensors = {"images": images, "labels": task.labels.to(torch.int64)}
    if warm is not None:
        tensors.update({f"{GENERATOR_PREFIX}{k}": v for k, v in warm.state_tensors().items()})
    save_safetensors_atomic(path, tensors, metadata)


def _load_part_generator(path: Path) -> dict[str, torch.Tensor]:
    """The generator state saved with a task part (empty when it has none)."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {
            k.removeprefix(GENERATOR_PREFIX): handle.get_tensor(k)
            for k in handle.keys()  # noqa: SIM118 (a safetensors handle, not a dict: it has no __contains__/__iter__)
            if k.startswith(GENERATOR_PREFIX)
        }


def _warm_upfront(cfg: RunConfig) -> bool:
    """Whether up-front recovery runs warm-startable generators, to hand them on to online recovery."""
    return cfg.recover.online_every > 0 and cfg.recover.online_start == "warm"


def load_generators(bank_path: Path, members: list[PoolMember]) -> dict[int, dict[str, torch.Tensor]]:
    """``{teacher index: generator state}`` the up-front recovery saved beside the bank (``{}`` if none)."""
    path = bank_path.parent / GENERATORS_FILE
    if not path.is_file():
        return {}
    flat = load_file(str(path))
    index_of = {m.name: i for i, m in enumerate(members)}
    states: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, rest = key.split("/", 1)
        if name in index_of:
            states.setdefault(index_of[name], {})[rest] = value
    return states


def _load_task_part(path: Path) -> RecoveredTask:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        meta = handle.metadata() or {}
        images, labels = handle.get_tensor("images"), handle.get_tensor("labels")
    return RecoveredTask(
        images=images.float() / 255,
        labels=labels,
        teacher=meta["teacher"],
        loss=float(meta["loss"]),
        classes=json.loads(meta["classes"]),
        class_names=json.loads(meta["class_names"]),
        best_step=int(meta["best_step"]),
    )


def recover_pool(
    members: list[PoolMember],
    cfg: RunConfig,
    bank_path: Path,
    *,
    progress: bool = True,
    dist: Distributed | None = None,
) -> MemoryBank:
    """Recover pseudo-tasks for every teacher not yet in the bank at ``bank_path``.

    Each recovery is seeded by (run seed, teacher index, recovery index) (see :mod:`tgr_hub.seeds`). Process ``r``
    recovers the teachers ``i`` with ``i % world == r`` and saves each task as it finishes
    (``parts/`` beside the bank); the main process then adds the tasks to the bank in
    (teacher, recovery) order, as one process would have, and saves it. A stopped recovery
    resumes from the saved parts, with any number of processes.
    """
    dist = _default_dist(cfg, dist)
    count = cfg.recover.recoveries_per_teacher
    parts = bank_path.parent / RECOVER_PARTS

    def base() -> MemoryBank:
        if bank_path.exists():
            return MemoryBank.load(bank_path, bank_size=cfg.recover.bank_size)
        return MemoryBank(cfg.recover.bank_size)

    bank = base()
    missing = [(i, r) for i, m in enumerate(members) for r in range(bank.tasks_of(m.name), count)]
    if not missing:
        logger.info("recover: %s holds every recovery; skipped", bank_path)
        if dist.is_main and parts.is_dir():  # stopped between saving the bank and deleting its parts
            shutil.rmtree(parts)
        return bank
    mine = set(dist.shard(len(members)))
    local = bank
    warm: dict[str, WarmGenerator] | None = {} if _warm_upfront(cfg) else None
    for i, r in missing:  # parts this process saved before it was stopped
        if i in mine and r == local.tasks_of(members[i].name) and (parts / _part_name(i, r)).is_file():
            local.add(_load_task_part(parts / _part_name(i, r)))
            state = _load_part_generator(parts / _part_name(i, r)) if warm is not None else {}
            if warm is not None and state:
                warm[members[i].name] = WarmGenerator.for_teacher(members[i].to(dist.device), cfg.recover, cfg.seed, i)
                warm[members[i].name].load_state_tensors(state)
    if dist.is_main:
        parts.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    index_of = {m.name: i for i, m in enumerate(members)}
    for i in mine:
        members[i].to(dist.device)

    def save_part(task: RecoveredTask) -> None:
        i = index_of[task.teacher]
        _save_task_part(
            task,
            parts / _part_name(i, local.tasks_of(task.teacher) - 1),
            warm.get(task.teacher) if warm is not None else None,
        )

    recover_teachers(
        members,
        cfg.recover,
        local,
        seed=cfg.seed,
        progress=progress,
        skip={m.name for i, m in enumerate(members) if i not in mine},
        on_task=save_part,
        warm=warm,
    )
    dist.barrier()
    if dist.is_main:
        merged = base()
        generators: dict[str, torch.Tensor] = {}
        for i, r in missing:
            merged.add(_load_task_part(parts / _part_name(i, r)))
            if warm is not None and r == count - 1:  # the generator after the teacher's last recovery
                state = _load_part_generator(parts / _part_name(i, r))
                generators.update({f"{members[i].name}/{k}": v for k, v in state.items()})
        if generators:  # before the bank: a saved bank means the stage is done
            save_safetensors_atomic(bank_path.parent / GENERATORS_FILE, generators)
        merged.save(bank_path)
        shutil.rmtree(parts)
    dist.barrier()
    return MemoryBank.load(bank_path, bank_size=cfg.recover.bank_size)


# --- stage 2: embed + group -------------------------------------------------------------


def _embed_one(
    probe: torch.nn.Module, member: PoolMember, index: int, bank: MemoryBank, cfg: RunConfig
) -> dict[str, torch.Tensor]:
    rng = seeds.numpy_rng(seeds.seed_sequence(cfg.seed, seeds.EMBED, index, 0))
    classes = bank.classes_of(member.name)
    if not classes:
        raise MemoryBankError(
            f"the memory bank holds nothing of teacher {member.name!r}",
            hint="delete the run folder's recovered/ to recover again",
        )
    per_class = max(1, cfg.embed.max_samples // len(classes))
    images, labels = bank.task_for(member.name, classes, per_class, rng, allow_fewer=True)
    remap = {c: i for i, c in enumerate(classes)}
    task_labels = torch.tensor([remap[int(c)] for c in labels.tolist()], dtype=torch.long)
    fisher_seed = int(seed_sequence(cfg.seed, EMBED, index, 1).generate_state(1)[0])
    embedding = fisher_diagonal(
        probe,
        images,
        task_labels,
        num_classes=len(classes),
        method=cfg.embed.method,
        head_steps=cfg.embed.head_steps,
        seed=fisher_seed,
    )
    return {k: v.detach().cpu() for k, v in embedding.items()}


def embed_pool(
    members: list[PoolMember],
    bank: MemoryBank,
    cfg: RunConfig,
    path: Path,
    *,
    progress: bool = True,
    dist: Distributed | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Diagonal Fisher embedding of every teacher's pseudo-task through one shared probe.

    Teacher ``i`` is embedded by process ``i % world`` (seeded by [seed, EMBED, i]) and saved as a
    part; the main process merges the parts into ``path``.
    """
    dist = _default_dist(cfg, dist)
    parts = path.parent / EMBED_PARTS
    if path.exists() and dist.is_main and parts.is_dir():  # stopped between the merge and the clean-up
        shutil.rmtree(parts)
    if not path.exists():
        if dist.is_main:
            parts.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        todo = [i for i in dist.shard(len(members)) if not (parts / f"t{i:05d}.safetensors").is_file()]
        if todo:
            probe = make_probe(cfg).to(dist.device)
            for i in progress_bar(todo, desc="embed", disable=not progress, dynamic_ncols=True):
                save_safetensors_atomic(parts / f"t{i:05d}.safetensors", _embed_one(probe, members[i], i, bank, cfg))
        dist.barrier()
        if dist.is_main:
            flat = {}
            for i, member in enumerate(members):
                for key, value in load_file(str(parts / f"t{i:05d}.safetensors")).items():
                    flat[f"{member.name}/{key}"] = value
            save_safetensors_atomic(path, flat)
            shutil.rmtree(parts)
        dist.barrier()
    flat = load_file(str(path))
    return [{k.split("/", 1)[1]: v for k, v in flat.items() if k.split("/", 1)[0] == m.name} for m in members]


def make_probe(cfg: RunConfig) -> torch.nn.Module:
    """The shared Fisher probe: the meta-backbone at initialisation, or a timm model by name."""
    if cfg.embed.probe is None:
        return create_meta_model(cfg.train.arch, cfg.data.image_size, seed=cfg.seed)
    return create_meta_model(cfg.embed.probe, cfg.data.image_size, seed=cfg.seed, pretrained=cfg.embed.probe_pretrained)


def group_pool(dissimilarity: np.ndarray, cfg: RunConfig, path: Path) -> list[list[int]]:
    """Spectral groups of mutually dissimilar teachers (cached in ``path``)."""
    if path.exists():
        return json.loads(path.read_text())["groups"]
    groups = group_teachers(
        dissimilarity,
        cfg.group.num_groups,
        n_init=cfg.group.n_init,
        seed=cfg.seed,
        strategy=cfg.group.strategy,
        min_size=cfg.group.min_size,
    )
    write_json_atomic(path, {"groups": groups})
    return groups


# --- which stages are done -----------------------------------------------------------------

#: The stages of a run, in order (see :func:`stage_status`).
STAGES = ("pool", "recover", "embed", "dissimilarity", "group", "meta-train", "evaluate")


def _holds_json(path: Path, data: Any) -> bool:
    """Whether ``path`` already holds ``data`` (as JSON): then it is not rewritten."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(data, default=str))
    except (OSError, ValueError):
        return False


def dissimilarity_done(out: str | Path, names: Sequence[str]) -> bool:
    """Whether ``out/dissimilarity.json`` holds the dissimilarity of the teachers ``names``."""
    try:
        saved = json.loads((Path(out) / "dissimilarity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(saved, dict) and saved.get("names") == list(names) and len(saved.get("matrix") or []) == len(names)
    )


def training_done(out: str | Path, cfg: RunConfig) -> RunRecord | None:
    """The record of the meta-model in ``out`` when it was trained with ``cfg`` (all but ``eval``), else None.

    Done means ``config.json``, ``model.safetensors`` and ``tgr_config.json`` exist and the
    recorded config equals ``cfg`` in every section that shapes the model.
    """
    out = Path(out)
    if not all((out / name).is_file() for name in ("config.json", "model.safetensors", TGR_CONFIG_NAME)):
        return None
    try:
        record = RunRecord.read(out / TGR_CONFIG_NAME)
    except RunFolderError:
        return None
    return None if changed_settings(record.config, cfg.to_dict(), "meta-model") else record


def evaluation_done(record: RunRecord, cfg: RunConfig) -> bool:
    """Whether ``record`` holds the final test of ``cfg.eval`` (same eval settings, metrics present)."""
    same = not changed_settings(record.config, cfg.to_dict(), "evaluation")
    return same and isinstance(record.metrics.get(cfg.eval.split), dict)


def stage_status(out: str | Path, cfg: RunConfig) -> dict[str, bool]:
    """Which stages of the run in ``out`` are done, so that a rerun skips them (:data:`STAGES` order).

    pool, recover, embed and group are done when their artefact exists (recover: the bank,
    with no half-merged ``parts/`` left; the bank may still lack recoveries a larger
    ``recover.recoveries_per_teacher`` asks for, which a rerun adds); dissimilarity when
    ``dissimilarity.json`` exists; meta-train when the meta-model of this config exists
    (:func:`training_done`); evaluate when its metrics for this ``eval`` section exist.
    """
    out = Path(out)
    record = training_done(out, cfg)
    return {
        "pool": (out / "pool.json").is_file(),
        "recover": (out / "recovered" / "bank.safetensors").is_file()
        and not (out / "recovered" / RECOVER_PARTS).exists(),
        "embed": (out / "embeddings.safetensors").is_file() and not (out / EMBED_PARTS).exists(),
        "dissimilarity": (out / "dissimilarity.json").is_file(),
        "group": (out / "groups.json").is_file(),
        "meta-train": record is not None,
        "evaluate": record is not None and evaluation_done(record, cfg),
    }


# --- the whole run ------------------------------------------------------------------------


@dataclass
class PreparedPool:
    """Stages 1-2 done: the pool, its memory bank, dissimilarities and groups."""

    members: list[PoolMember]
    bank: MemoryBank
    dissimilarity: np.ndarray  # [N, N]
    groups: list[list[int]]
    timings: dict[str, float]


def prepare_pool(
    pool_path: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    allow_pickle: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
) -> PreparedPool:
    """Resolve the pool, recover pseudo-tasks, embed and group the teachers, into ``out``.

    On several processes, call it on every process; the artefacts are written by the main
    process and every process returns the same :class:`PreparedPool`.
    """
    dist = _default_dist(cfg, dist)
    progress = progress and dist.is_main
    out = Path(out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    check_run_folder_shared(dist, out)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    with dist.local_main_first():  # the first process per machine downloads, the others read its cache
        members = load_pool(pool_path, allow_pickle=allow_pickle)
    if dist.is_main and not _holds_json(out / "pool.json", describe_pool(members)):
        write_json_atomic(out / "pool.json", describe_pool(members))
    timings["pool"] = time.perf_counter() - start

    start = time.perf_counter()
    if dist.is_main:
        (out / "recovered").mkdir(exist_ok=True)
    dist.barrier()
    bank = recover_pool(members, cfg, out / "recovered" / "bank.safetensors", progress=progress, dist=dist)
    timings["recover"] = time.perf_counter() - start

    start = time.perf_counter()
    names = [m.name for m in members]
    dissimilarity: np.ndarray | None = None
    if dissimilarity_done(out, names):  # its embeddings are not even read
        logger.info("embed, dissimilarity: %s holds this pool's; skipped", out / "dissimilarity.json")
    else:
        embeddings = embed_pool(members, bank, cfg, out / "embeddings.safetensors", progress=progress, dist=dist)
        if dist.is_main:  # one process decides (clustering may differ across machines), the others read it
            dissimilarity = dissimilarity_matrix(embeddings, eps=cfg.embed.epsilon).cpu().numpy()
            write_json_atomic(out / "dissimilarity.json", {"names": names, "matrix": dissimilarity.tolist()})
    dist.barrier()
    if dist.is_main:
        if dissimilarity is None:
            dissimilarity = np.asarray(json.loads((out / "dissimilarity.json").read_text())["matrix"], dtype=np.float64)
        if (out / "groups.json").is_file():
            logger.info("group: %s exists; skipped", out / "groups.json")
        groups = group_pool(dissimilarity, cfg, out / "groups.json")
        if not (out / "dissimilarity.png").is_file():
            plot_dissimilarity(dissimilarity, names, groups, out / "dissimilarity.png")
    dist.barrier()
    dissimilarity = np.asarray(json.loads((out / "dissimilarity.json").read_text())["matrix"], dtype=np.float64)
    groups = json.loads((out / "groups.json").read_text())["groups"]
    timings["embed+group"] = time.perf_counter() - start
    return PreparedPool(members, bank, dissimilarity, groups, timings)


@dataclass
class RunResult:
    """The outcome of :func:`run_tgr`."""

    out: Path
    model: MetaModel
    groups: list[list[int]]
    metrics: dict[str, Any]
    timings: dict[str, float]
    is_main: bool = True  # False on the other processes of a multi-process run (they write nothing)
    device: torch.device = torch.device("cpu")  # where the stages ran (Accelerate's device)


def run_tgr(
    pool_path: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    allow_pickle: bool = False,
    evaluate_test: bool = True,
    progress: bool = True,
    resume: bool = False,
    log_with: Sequence[str] | None = None,
    dist: Distributed | None = None,
) -> RunResult:
    """Run every TGR stage for the pool list at ``pool_path``, writing into the run folder ``out``.

    Runs on however many processes it was launched with (``accelerate launch``); call it on
    every process. Device and mixed precision (``cfg.train.mixed_precision``) are Accelerate's.

    Args:
        pool_path: the repo-list file.
        out: the run folder.
        cfg: the run config.
        allow_pickle: accept pickled teacher weights.
        evaluate_test: evaluate the meta-model on ``cfg.eval.split`` at the end.
        progress: progress bars (main process only).
        resume: continue meta-training from the newest checkpoint in ``out/checkpoints``.
        log_with: experiment trackers (e.g. ``["tensorboard"]``), logging into ``out/logs``.
        dist: the processes; default: from the environment (``make_accelerator``).
    """
    out = Path(out)
    dist = (
        dist
        if dist is not None
        else Distributed(make_accelerator(cfg.train.mixed_precision, log_with=log_with, project_dir=out / "logs"))
    )
    seeds.seed_global_torch(cfg.seed)
    logger.info("run %s on %s (mixed precision %s)", out, dist.device, cfg.train.mixed_precision)
    prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress, dist=dist)
    members, groups, timings = prepared.members, prepared.groups, prepared.timings
    progress = progress and dist.is_main

    if log_with:
        dist.accelerator.init_trackers("tgr-hub", config=_flat_config(cfg.to_dict()))
    done = training_done(out, cfg)  # every process reads the same files, written before this run
    if done is not None:
        logger.info("meta-train: %s holds the meta-model of this config; skipped", out / "model.safetensors")
        model = load_meta_model(out).to(dist.device)
        metrics: dict[str, Any] = dict(done.metrics)
        history = done.history
        data_source = done.data_source
    else:
        start = time.perf_counter()
        with dist.local_main_first():
            val_split = split_of(cfg.data, "val")
        data_source = _data_source(cfg, val_split)
        # the training seed (init, task choice, online recovery); validation episodes stay on the run's
        train_seed = cfg.seed if cfg.train.seed is None else cfg.train.seed
        model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=train_seed)
        generators = load_generators(out / "recovered" / "bank.safetensors", members) if _warm_upfront(cfg) else None
        if dist.is_main and generators is not None and len(generators) < len(members):
            # a bank recovered by an earlier run without warm online recovery: recovery is skipped, so
            # these teachers' online recovery starts from a new generator, unlike a run in a new folder
            logger.warning(
                "meta-train: %s lacks the warm generators of %d of %d teachers; their online recovery "
                "starts from a new generator (delete recovered/ to recover again)",
                out / "recovered" / GENERATORS_FILE,
                len(members) - len(generators),
                len(members),
            )
        result = meta_train(
            model,
            members,
            prepared.bank,
            groups,
            cfg.train,
            val_split=val_split,
            seed=train_seed,
            progress=progress,
            dist=dist,
            checkpoint_dir=out / CHECKPOINTS,
            resume=resume,
            recover=cfg.recover,
            generators=generators,
            val_seed=seeds.val_seed(cfg.seed),
            # train.analysis_every: the task gradients on a probe the run's methods share (validation seed)
            measure=gradient_measure(members, prepared.bank, cfg.train, seed=seeds.val_seed(cfg.seed))
            if cfg.train.analysis_every > 0
            else None,
        )
        model.load_state_dict(result.best_state)
        timings["meta-train"] = time.perf_counter() - start
        history = result.history
        # meta-val at the chosen step: the mean over shots it was chosen on, each shot, and the
        # standard error over episodes of that mean (the selection noise)
        val = chosen_validation(history, result.best_step, result.best_val_accuracy, result.val_std_error)
        metrics = {"val": val}

    evaluated = False
    if evaluate_test and done is not None and evaluation_done(done, cfg):
        logger.info(
            "evaluate: %s holds the %s metrics of these eval settings; skipped", out / TGR_CONFIG_NAME, cfg.eval.split
        )
    elif evaluate_test:
        evaluated = True
        start = time.perf_counter()
        with dist.local_main_first():
            test_split = split_of(cfg.data, cfg.eval.split)
        data_source = data_source or _data_source(cfg, test_split)
        model.eval()
        metrics[cfg.eval.split] = evaluate_model(
            model, test_split, seed=cfg.seed, dist=dist, progress=progress, **eval_settings(cfg.eval, cfg.train.learner)
        )
        timings["evaluate"] = time.perf_counter() - start

    model = model.to("cpu")
    if dist.is_main and done is None:
        plot_training_curves(history, out / "training_curve.png")
        record = RunRecord(
            config=cfg.to_dict(),
            tgr_hub_version=__version__,
            # the dataset as resolved: a Hub dataset's commit, and which class split was used
            data_source=data_source,
            pool_members=[MemberRecord.from_member(m) for m in members],
            groups=[[members[i].name for i in group] for group in groups],
            metrics=metrics,
            history=history,
            timings_s=timings,
            device=str(dist.device),
        )
        save_meta_model(model, out, tgr_config=record.to_dict())
    elif dist.is_main and evaluated and done is not None:  # same model, new eval settings: only the record changes
        done.config, done.metrics = cfg.to_dict(), metrics
        done.data_source = done.data_source or data_source
        done.timings_s = {**done.timings_s, **timings}
        done.device = done.device or str(dist.device)  # where the training ran, when recorded
        done.write(out / TGR_CONFIG_NAME)
    dist.barrier()
    if log_with:
        dist.accelerator.end_training()
    return RunResult(out, model, groups, metrics, timings, is_main=dist.is_main, device=dist.device)


def _data_source(cfg: RunConfig, split: ImageSplit) -> dict[str, Any]:
    """The run record's ``data_source``: the dataset, the commit a Hub dataset resolved to, the class split."""
    return {"dataset": cfg.data.dataset, "revision": split.revision, "class_split": split.class_split}


def _flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train/beta": 0.001, ...}``: trackers take flat scalar hyper-parameters."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
