"""A whole TGR run: pool ─► recover ─► embed ─► group ─► meta-train ─► evaluate, in a run folder.

Each stage writes its artefact into the run folder and is skipped when that artefact
already exists, so rerunning a stopped run resumes it:

    runs/NAME/
      pool.json                 the resolved pool (sources, pinned revisions, labels)
      recovered/bank.safetensors + bank.json    memory bank of recovered pseudo-tasks
      embeddings.safetensors    diagonal Fisher per teacher
      dissimilarity.json        [N, N] teacher dissimilarity
      groups.json               teacher groups
      config.json, model.safetensors            the meta-model (timm Hub layout, num_classes 0)
      tgr_config.json           full config + pool + groups + metrics
      dissimilarity.png, training_curve.png
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import __version__
from .config import RunConfig
from .data import load_split
from .embed import dissimilarity_matrix, fisher_diagonal
from .evaluate import evaluate_model
from .figures import plot_dissimilarity, plot_training_curves
from .group import group_teachers
from .metamodel import MetaModel, create_meta_model, save_meta_model
from .pool import PoolMember, load_pool
from .recover import MemoryBank, recover_teachers
from .train import meta_train

logger = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def describe_pool(members: list[PoolMember]) -> list[dict[str, Any]]:
    """JSON-able description of the pool: what the run card and Space show."""
    return [
        {
            "name": m.name,
            "source": m.source,
            "revision": m.revision,
            "architecture": m.architecture,
            "num_classes": m.num_classes,
            "label_names": list(m.label_names),
            "input_size": list(m.input_size),
        }
        for m in members
    ]


# --- stage 1: recover -------------------------------------------------------------------


def recover_pool(members: list[PoolMember], cfg: RunConfig, bank_path: Path, *, progress: bool = True) -> MemoryBank:
    """Recover pseudo-tasks for every teacher not yet in the bank at ``bank_path``.

    Each recovery is seeded by (run seed, teacher index, recovery index), so a resumed
    recovery gives the same bank as an uninterrupted one; the bank is saved after every task.
    """
    if bank_path.exists():
        bank = MemoryBank.load(bank_path, bank_size=cfg.recover.bank_size)
    else:
        bank = MemoryBank(cfg.recover.bank_size)
    recover_teachers(members, cfg.recover, bank, seed=cfg.seed, progress=progress,
                     on_task=lambda task: bank.save(bank_path))
    return bank


# --- stage 2: embed + group -------------------------------------------------------------


def embed_pool(
    members: list[PoolMember], bank: MemoryBank, cfg: RunConfig, path: Path, *, progress: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Diagonal Fisher embedding of every teacher's pseudo-task through one shared probe."""
    if path.exists():
        flat = load_file(str(path))
        return [{k.split("/", 1)[1]: v for k, v in flat.items() if k.split("/", 1)[0] == m.name} for m in members]
    probe = make_probe(cfg)
    embeddings = []
    for index, member in enumerate(tqdm(members, desc="embed", disable=not progress, dynamic_ncols=True)):
        rng = np.random.default_rng([cfg.seed, index, 2])
        classes = bank.classes_of(member.name)
        per_class = max(1, cfg.embed.max_samples // len(classes))
        images, labels = bank.task_for(member.name, classes, per_class, rng, allow_fewer=True)
        remap = {c: i for i, c in enumerate(classes)}
        task_labels = torch.tensor([remap[int(c)] for c in labels.tolist()], dtype=torch.long)
        embeddings.append(
            fisher_diagonal(probe, images, task_labels, num_classes=len(classes), method=cfg.embed.method,
                            head_steps=cfg.embed.head_steps, seed=cfg.seed + index)
        )
    flat = {f"{m.name}/{k}": v.contiguous() for m, e in zip(members, embeddings) for k, v in e.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp))
    tmp.replace(path)
    return embeddings


def make_probe(cfg: RunConfig) -> torch.nn.Module:
    """The shared Fisher probe: the meta-backbone at initialisation, or a timm model by name."""
    if cfg.embed.probe is None:
        return create_meta_model(cfg.train.arch, cfg.data.image_size, seed=cfg.seed)
    return create_meta_model(cfg.embed.probe, cfg.data.image_size, seed=cfg.seed, pretrained=cfg.embed.probe_pretrained)


def group_pool(dissimilarity: np.ndarray, cfg: RunConfig, path: Path) -> list[list[int]]:
    """Spectral groups of mutually dissimilar teachers (cached in ``path``)."""
    if path.exists():
        return json.loads(path.read_text())["groups"]
    groups = group_teachers(dissimilarity, cfg.group.num_groups, n_init=cfg.group.n_init, seed=cfg.seed,
                            strategy=cfg.group.strategy)
    _write_json(path, {"groups": groups})
    return groups


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
    pool_path: str | Path, out: str | Path, cfg: RunConfig, *, allow_pickle: bool = False, progress: bool = True
) -> PreparedPool:
    """Resolve the pool, recover pseudo-tasks, embed and group the teachers, into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    members = load_pool(pool_path, allow_pickle=allow_pickle)
    _write_json(out / "pool.json", describe_pool(members))
    timings["pool"] = time.perf_counter() - start

    start = time.perf_counter()
    (out / "recovered").mkdir(exist_ok=True)
    bank = recover_pool(members, cfg, out / "recovered" / "bank.safetensors", progress=progress)
    timings["recover"] = time.perf_counter() - start

    start = time.perf_counter()
    embeddings = embed_pool(members, bank, cfg, out / "embeddings.safetensors", progress=progress)
    dissimilarity = dissimilarity_matrix(embeddings, eps=cfg.embed.epsilon).cpu().numpy()
    names = [m.name for m in members]
    _write_json(out / "dissimilarity.json", {"names": names, "matrix": dissimilarity.tolist()})
    groups = group_pool(dissimilarity, cfg, out / "groups.json")
    plot_dissimilarity(dissimilarity, names, groups, out / "dissimilarity.png")
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


def run_tgr(
    pool_path: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    allow_pickle: bool = False,
    evaluate_test: bool = True,
    progress: bool = True,
) -> RunResult:
    """Run every TGR stage for the pool list at ``pool_path``, writing into the run folder ``out``."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress)
    members, groups, timings = prepared.members, prepared.groups, prepared.timings

    start = time.perf_counter()
    val_split = load_split(cfg.data.dataset, "val", image_size=cfg.data.image_size, seed=cfg.data.seed,
                           cache_dir=cfg.data.cache_dir)
    model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=cfg.seed)
    result = meta_train(model, members, prepared.bank, groups, cfg.train, val_split=val_split, seed=cfg.seed,
                        progress=progress)
    model.load_state_dict(result.best_state)
    plot_training_curves(result.history, out / "training_curve.png")
    timings["meta-train"] = time.perf_counter() - start

    metrics: dict[str, Any] = {
        "val": {"best_step": result.best_step, f"{cfg.train.replay_shot}shot": result.best_val_accuracy},
    }
    if evaluate_test:
        start = time.perf_counter()
        test_split = load_split(cfg.data.dataset, cfg.eval.split, image_size=cfg.data.image_size,
                                seed=cfg.data.seed, cache_dir=cfg.data.cache_dir)
        metrics[cfg.eval.split] = evaluate_model(
            model, test_split, way=cfg.eval.way, shots=cfg.eval.shots, query=cfg.eval.query,
            episodes=cfg.eval.episodes, learner=cfg.train.learner, seed=cfg.seed, progress=progress,
        )
        timings["evaluate"] = time.perf_counter() - start

    tgr_config = {
        **cfg.to_dict(),
        "tgr_hub_version": __version__,
        "pool_members": describe_pool(members),
        "groups": [[members[i].name for i in group] for group in groups],
        "metrics": metrics,
        "history": result.history,
        "timings_s": timings,
    }
    save_meta_model(model, out, tgr_config=tgr_config)
    return RunResult(out, model, groups, metrics, timings)
