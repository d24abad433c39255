"""Methods × seeds × scenarios, all scored on identical episodes, with paired statistics.

A benchmark is a grid of **cells** ``(scenario, seed, method)``. For each scenario and seed a
teacher pool is built (or the user's pool is used) and prepared once (pseudo-tasks recovered,
Fisher-embedded, grouped); every trained method starts from a copy of those recovered tasks.
Every method of a seed is then scored on the **same** list of meta-test episodes (same classes,
support and query images): the episode list is built once per seed and handed to
:func:`tgr_hub.evaluate.evaluate_model` for each method, and each cell records a hash of the
images it was actually given, which the report checks are equal across methods.

Run folder::

    out/
      bench.json                                   the settings (a rerun must use the same)
      SCENARIO/seed-S/pool/                        the teachers (make_pool), scenario pools only
      SCENARIO/seed-S/shared/                      recovered bank, embeddings, groups (prepare_pool)
      SCENARIO/seed-S/pool-build.json, prepare.json  what building / preparing the pool took (done markers)
      SCENARIO/seed-S/METHOD/                      each trained method's run folder (run_tgr)
      cells/SCENARIO/seed-S/METHOD.json            one finished cell: per-episode accuracies
      results.json, results.md, results.png        the report (statistics: :mod:`tgr_hub.stats`)

Long runs: a cell is written atomically when it is finished and skipped when the benchmark is
run again, so an interruption loses at most the cell in flight. ``shard=(i, n)`` runs only the
cells whose position in the grid is ``i`` modulo ``n``, so ``n`` processes (or machines sharing
the folder) share the grid; preparing a (scenario, seed) is serialised by a file lock, and the
report is written from whatever cells are finished (:func:`write_report`).

Scenarios (``SCENARIOS``, glyph benchmark): ``standard``, the paper's main setting: at least 24
Conv4 teachers (``max(pool.teachers, 24)``), each on a random 5-class subset of the 55 meta-train
classes of one domain (cyrillic; each teacher draws its subset with its own seed, so subsets overlap
as chance makes them), with meta-validation and meta-test on that domain's classes only
(``data.domains = ["cyrillic"]`` for its cells); ``multi-domain`` (Conv4 teachers on the four
domains), ``multi-arch`` (Conv4 / ResNet-10t / ResNet-18 teachers on the symbols domain) and
``mixed`` (both), scored on every domain's classes (or the config's ``data.domains``).

Methods (``METHODS``): Random, Average, ERM (β = 0, one group), TGR (β > 0, spectral groups),
and the ablations groups-no-igr (spectral groups, β = 0), igr-no-groups (β > 0, one group),
igr-random-groups (β > 0, random groups) and tgr-second-order (the authors' second-order IGR).
``erm-replicate`` ("ERM, another seed") is ERM with only its meta-training seed changed
(``train.seed = seed + REPLICATE_SEED_OFFSET``, 1000): the same pool, the same up-front recovered
tasks and the same meta-test episodes. ``erm-replicate − erm`` is the report's **noise floor**: a
difference between methods means something only if it exceeds what training ERM again gives.
Each trained cell also records the mean online-recovery teacher agreement of its meta-training.
Trained methods meta-train with ``cfg.train.learner`` (ProtoNet or MAML) and keep the checkpoint
that is best on meta-**validation**; all methods, baselines included, are adapted at test time as
the run's ``eval`` section says (:func:`tgr_hub.evaluate.eval_settings`: ``eval.method``, where
``auto`` is that learner, and the fine-tuning schedule), as ``tgr-hub train``'s final test is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import stats
from .config import PoolBuildConfig, RunConfig
from .data import split_of
from .data.episodes import Episode, EpisodeSampler, ImageSplit
from .distributed import choose_device
from .errors import BenchmarkError, ConfigError
from .io import copy_atomic, write_json_atomic, write_text_atomic
from .progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "BenchmarkError",
    "BenchmarkSpec",
    "Cell",
    "EpisodeList",
    "METHODS",
    "Method",
    "QUICKSTART_METHODS",
    "SCENARIOS",
    "Scenario",
    "NOISE_FLOOR",
    "REPLICATE_SEED_OFFSET",
    "method_config",
    "plan_cells",
    "run_benchmark",
    "scenario_config",
    "scenario_from_name",
    "scenario_from_pool",
    "scenario_pool",
    "summarize",
    "write_report",
]

CELL_FORMAT = "tgr-hub-benchmark-cell"
RESULTS_FORMAT = "tgr-hub-benchmark"


# --- scenarios ------------------------------------------------------------------------------------

_ALL_GLYPH_DOMAINS = ("latin", "greek", "cyrillic", "symbols")
_THREE_ARCHS = ("conv4", "resnet10t", "resnet18")  # a 4-layer CNN, a light and a deeper timm ResNet


@dataclass(frozen=True)
class Scenario:
    """Where a benchmark's teachers come from, and which classes it is scored on.

    Attributes:
        name: folder and table name (``standard``, ``multi-domain``, ``multi-arch``, ``mixed``,
            ``config``, ``pool``).
        domains, archs: the pool built per seed with :func:`tgr_hub.teachers.make_pool` (one
            teacher per (domain, arch) pair at least, cycling as make_pool does).
        pool_list: the user's repo list instead (the same teachers for every seed).
        min_teachers: the pool has at least this many teachers (``max(pool.teachers, min_teachers)``).
        way: classes per teacher (None: the config's ``pool.way``).
        eval_domains: meta-validation and meta-test use only these domains' classes (the cells'
            ``data.domains``); None: the config's ``data.domains``.
    """

    name: str
    domains: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()
    pool_list: str | None = None
    min_teachers: int = 0
    way: int | None = None
    eval_domains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.min_teachers < 0 or (self.way is not None and self.way < 2):
            raise ConfigError(f"scenario {self.name!r}: min_teachers must be >= 0 and way >= 2")
        if self.eval_domains is not None and not self.eval_domains:
            raise ConfigError(f"scenario {self.name!r}: eval_domains must name a domain, or be None (every domain)")

    def describe(self) -> dict[str, Any]:
        """The scenario as JSON (bench.json, the report, the settings digest).

        ``name``, ``domains``, ``archs`` and ``pool_list`` always; ``min_teachers``, ``way`` and
        ``eval_domains`` only when set, so the scenarios that lack them describe (and digest) as
        they did before those fields existed.
        """
        described = dataclasses.asdict(self)
        defaults = {"min_teachers": 0, "way": None, "eval_domains": None}
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in described.items()
            if k not in defaults or v != defaults[k]
        }


#: Named scenarios (after the paper's settings): glyph domains × teacher architectures.
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        # the paper's main setting: >= 24 Conv4 teachers, each on a random 5-class subset of one domain's
        # 55 meta-train classes (subsets overlap as chance makes them), scored on that domain's held-out classes
        Scenario("standard", ("cyrillic",), ("conv4",), min_teachers=24, way=5, eval_domains=("cyrillic",)),
        Scenario("multi-domain", _ALL_GLYPH_DOMAINS, ("conv4",)),
        Scenario("multi-arch", ("symbols",), _THREE_ARCHS),  # symbols: the domain with the most classes
        Scenario("mixed", _ALL_GLYPH_DOMAINS, _THREE_ARCHS),
    )
}
#: The pool the run config's ``pool`` section describes (the quickstart's).
CONFIG_SCENARIO = "config"


def scenario_from_name(name: str, cfg: RunConfig) -> Scenario:
    """A named scenario (:data:`SCENARIOS`), or ``config`` for the config's own pool section."""
    if name == CONFIG_SCENARIO:
        return Scenario(name, tuple(cfg.pool.domains), tuple(cfg.pool.archs))
    if name not in SCENARIOS:
        raise ConfigError(
            f"unknown scenario {name!r}",
            hint=f"choose {', '.join(SCENARIOS)} or {CONFIG_SCENARIO}, or give your own --pool LIST",
        )
    return SCENARIOS[name]


def scenario_from_pool(pool_list: str | Path) -> Scenario:
    """The user's pool (a repo-list file), used as it is for every seed."""
    path = Path(pool_list).expanduser()
    if not path.is_file():
        raise ConfigError(f"pool list {pool_list} does not exist", hint="give a repo-list file (one teacher per line)")
    return Scenario("pool", pool_list=str(path.resolve()))


def scenario_config(cfg: RunConfig, scenario: Scenario) -> RunConfig:
    """The run config of a scenario's cells: ``data.domains`` set to the scenario's ``eval_domains``.

    Raises:
        ConfigError: the config restricts ``data.domains`` to other domains than the scenario's.
    """
    if scenario.eval_domains is None:
        return cfg
    wanted = list(scenario.eval_domains)
    if cfg.data.domains is not None and list(cfg.data.domains) != wanted:
        raise ConfigError(
            f"scenario {scenario.name!r} is scored on the domains {wanted}, but data.domains is "
            f"{list(cfg.data.domains)}",
            hint=f"drop the data.domains setting, or set it to {wanted}",
        )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, domains=wanted))


def scenario_pool(cfg: RunConfig, scenario: Scenario) -> PoolBuildConfig:
    """The ``pool`` section :func:`tgr_hub.teachers.make_pool` builds a scenario's teachers with.

    The config's pool section (epochs, batch size, lr) with the scenario's domains and
    architectures, at least one teacher per (domain, arch) pair and at least ``min_teachers``,
    ``way`` classes each (the scenario's, else ``pool.way``).

    Raises:
        ConfigError: the scenario is the user's pool list (it builds no teachers).
    """
    if scenario.pool_list is not None:
        raise ConfigError(f"scenario {scenario.name!r} uses the pool list {scenario.pool_list}; it builds no teachers")
    teachers = max(cfg.pool.teachers, scenario.min_teachers, len(scenario.domains) * len(scenario.archs))
    return dataclasses.replace(
        cfg.pool,
        domains=list(scenario.domains),
        archs=list(scenario.archs),
        teachers=teachers,
        way=scenario.way if scenario.way is not None else cfg.pool.way,
    )


# --- methods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One benchmarked method.

    Attributes:
        name: identifier used on the command line and in file names.
        label: the name in tables.
        kind: ``random`` / ``average`` (baselines, not trained) or ``trained``.
        igr: β = ``train.beta`` (True) or β = 0 (False).
        groups: teacher grouping (``group.strategy``).
        igr_order: ``first`` or ``second`` (the authors' second-order IGR).
        train_seed_offset: meta-training's seed (``train.seed``) is the cell's seed plus this
            offset; None leaves ``train.seed`` as the config has it (None: the cell's seed). Only
            meta-training changes with it: the pool, the up-front recovered tasks and the
            meta-test episodes stay those of the cell's seed.
    """

    name: str
    label: str
    kind: Literal["random", "average", "trained"]
    igr: bool = False
    groups: Literal["spectral", "random", "none"] = "none"
    igr_order: Literal["first", "second"] = "first"
    train_seed_offset: int | None = None


#: ``erm-replicate`` meta-trains with ``train.seed = seed + REPLICATE_SEED_OFFSET``: ERM again, another seed.
REPLICATE_SEED_OFFSET = 1000
#: The noise floor: (replicate, original), the same method trained with two training seeds.
NOISE_FLOOR = ("erm-replicate", "erm")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("random", "Random", "random"),
        Method("average", "Average", "average"),
        Method("erm", "ERM", "trained", igr=False, groups="none"),
        Method(
            "erm-replicate",
            "ERM, another seed",
            "trained",
            igr=False,
            groups="none",
            train_seed_offset=REPLICATE_SEED_OFFSET,
        ),
        Method("tgr", "TGR", "trained", igr=True, groups="spectral"),
        Method("groups-no-igr", "groups, no IGR", "trained", igr=False, groups="spectral"),
        Method("igr-no-groups", "IGR, no groups", "trained", igr=True, groups="none"),
        Method("igr-random-groups", "IGR, random groups", "trained", igr=True, groups="random"),
        Method("tgr-second-order", "TGR 2nd order", "trained", igr=True, groups="spectral", igr_order="second"),
    )
}
#: The quickstart's four methods.
QUICKSTART_METHODS = ("random", "average", "erm", "tgr")


def method_config(cfg: RunConfig, method: Method, seed: int) -> RunConfig:
    """The run config of a trained method at ``seed``: β, grouping, IGR order and training seed from the method.

    The run seed is ``seed`` for every method; ``train.seed`` is ``seed + method.train_seed_offset``
    for a method with an offset (``erm-replicate``), else the config's.
    """
    train_seed = cfg.train.seed if method.train_seed_offset is None else int(seed) + method.train_seed_offset
    train = dataclasses.replace(
        cfg.train, beta=cfg.train.beta if method.igr else 0.0, igr_order=method.igr_order, seed=train_seed
    )
    group = dataclasses.replace(cfg.group, strategy=method.groups)
    return dataclasses.replace(cfg, seed=int(seed), train=train, group=group)


# --- the grid --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """What to run: scenarios × seeds × methods under one run config.

    Attributes:
        cfg: the run config (preset, overrides; ``train.learner`` is the learner of every method).
        scenarios: the scenarios.
        seeds: one pool, recovery, meta-training and episode list per seed.
        methods: names from :data:`METHODS`.
        reference: the method every other one is compared with (paired).
    """

    cfg: RunConfig
    scenarios: tuple[Scenario, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    reference: str = "erm"

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ConfigError("give at least one scenario")
        if len({s.name for s in self.scenarios}) != len(self.scenarios):
            raise ConfigError("scenario names repeat", hint="list each scenario once")
        if not self.seeds or any(int(s) < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                f"seeds must be distinct non-negative integers, got {list(self.seeds)}", hint="e.g. --seeds 0,1,2"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}", hint=f"choose from {', '.join(METHODS)}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods repeat", hint="list each method once")
        if self.reference not in self.methods:
            raise ConfigError(
                f"the reference method {self.reference!r} is not among the methods",
                hint=f"add it to --methods or choose --reference from {', '.join(self.methods)}",
            )
        if self.cfg.train.beta == 0 and any(METHODS[m].igr for m in self.methods):
            raise ConfigError(
                "train.beta is 0, so the IGR methods would be ERM", hint="set train.beta > 0 or drop the IGR methods"
            )
        for scenario in self.scenarios:  # a data.domains at odds with a scenario's, refused before any work
            scenario_config(self.cfg, scenario)


@dataclass(frozen=True)
class Cell:
    """One (scenario, seed, method) of the grid."""

    scenario: Scenario
    seed: int
    method: Method

    @property
    def key(self) -> str:
        return f"{self.scenario.name}/seed-{self.seed}/{self.method.name}"


def plan_cells(spec: BenchmarkSpec) -> list[Cell]:
    """Every cell, in grid order: scenario, then seed, then method (the order shards count in)."""
    return [
        Cell(scenario, int(seed), METHODS[name])
        for scenario in spec.scenarios
        for seed in spec.seeds
        for name in spec.methods
    ]


def _cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.scenario.name / f"seed-{cell.seed}" / f"{cell.method.name}.json"


def _seed_dir(out: Path, scenario: Scenario, seed: int) -> Path:
    return out / scenario.name / f"seed-{seed}"


def _settings(cfg: RunConfig, scenario: Scenario) -> dict[str, Any]:
    """What a cell's result depends on besides its seed and method (the scenario's config: its data.domains)."""
    return {"config": _config_without_seed(scenario_config(cfg, scenario)), "scenario": scenario.describe()}


def _config_without_seed(cfg: RunConfig) -> dict[str, Any]:
    config = cfg.to_dict()
    config.pop("seed")
    return config


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- episodes --------------------------------------------------------------------------------------


class EpisodeList(Sequence[Episode]):
    """The fixed list of ``count`` episodes every method of one seed is scored on.

    Episode ``i`` is ``EpisodeSampler(split, way, shot, query, seed).episode(i)`` (a pure function
    of the seed and ``i``); images are materialised on access, so the list costs no memory.
    """

    def __init__(self, split: ImageSplit, *, way: int, shot: int, query: int, seed: int, count: int) -> None:
        if count < 1:
            raise ConfigError(f"eval.episodes must be >= 1, got {count}")
        self.sampler = EpisodeSampler(split, way, shot, query, seed=seed)
        self._count = int(count)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        if not 0 <= index < self._count:
            raise IndexError(f"episode {index} out of range 0..{self._count - 1}")
        return self.sampler.episode(index)

    def fingerprint(self) -> str:
        """sha256 of every episode's classes and support / query image indices."""
        digest = hashlib.sha256()
        for index in range(self._count):
            classes, support, query = self.sampler.indices(index)
            digest.update(np.asarray(classes, dtype=np.int64).tobytes())
            digest.update(support.numpy().astype(np.int64).tobytes())
            digest.update(query.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()


class _Witness(Sequence[Episode]):
    """Hands out a list's episodes and hashes exactly what it handed out (images and labels)."""

    def __init__(self, episodes: Sequence[Episode]) -> None:
        self._episodes = episodes
        self._hash = hashlib.sha256()
        self.served = 0

    def __len__(self) -> int:
        return len(self._episodes)

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        episode = self._episodes[index]
        for tensor in (episode.support_x, episode.support_y, episode.query_x, episode.query_y):
            self._hash.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.served += 1
        return episode

    def digest(self) -> str:
        return self._hash.hexdigest()


# --- running cells ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes preparing the same (scenario, seed) (POSIX ``flock``)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Runner:
    """Runs cells of one benchmark, preparing each (scenario, seed) once and caching the episode lists."""

    def __init__(self, spec: BenchmarkSpec, out: Path, progress: bool) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.cfg = spec.cfg
        # per meta-test domains (a scenario's data.domains; None: every domain): the split, and per
        # seed the episode lists and their fingerprints
        self._tests: dict[tuple[str, ...] | None, ImageSplit] = {}
        self._episodes: dict[tuple[tuple[str, ...] | None, int], dict[int, EpisodeList]] = {}
        self._fingerprints: dict[tuple[tuple[str, ...] | None, int], dict[int, str]] = {}
        self._device: torch.device | None = None

    def config(self, scenario: Scenario) -> RunConfig:
        """The run config of the scenario's cells (:func:`scenario_config`)."""
        return scenario_config(self.cfg, scenario)

    def _domains_key(self, scenario: Scenario) -> tuple[str, ...] | None:
        domains = self.config(scenario).data.domains
        return tuple(domains) if domains is not None else None

    @property
    def device(self) -> torch.device:
        """Accelerate's device (a GPU when one is visible): teachers train there and every method is scored
        there, the baselines included, as the trained methods' runs (run_tgr) train there."""
        if self._device is None:
            self._device = choose_device()
        return self._device

    # the meta-test split and the per-seed episode lists, built once per meta-test domains
    def test_split(self, scenario: Scenario) -> ImageSplit:
        """The meta-test split of the scenario's cells (restricted to its ``data.domains``)."""
        key = self._domains_key(scenario)
        if key not in self._tests:
            cfg = self.config(scenario)
            self._tests[key] = split_of(cfg.data, cfg.eval.split)
        return self._tests[key]

    def episodes(self, scenario: Scenario, seed: int) -> dict[int, EpisodeList]:
        """``{shot: episode list}`` every method of (scenario, seed) is scored on."""
        key = (self._domains_key(scenario), seed)
        if key not in self._episodes:
            cfg = self.cfg
            test = self.test_split(scenario)
            self._episodes[key] = {
                int(shot): EpisodeList(
                    test, way=cfg.eval.way, shot=int(shot), query=cfg.eval.query, seed=seed, count=cfg.eval.episodes
                )
                for shot in cfg.eval.shots
            }
            self._fingerprints[key] = {shot: lst.fingerprint() for shot, lst in self._episodes[key].items()}
        return self._episodes[key]

    def fingerprints(self, scenario: Scenario, seed: int) -> dict[int, str]:
        """``{shot: EpisodeList.fingerprint()}`` of :meth:`episodes`."""
        self.episodes(scenario, seed)
        return self._fingerprints[(self._domains_key(scenario), seed)]

    def pool_list(self, scenario: Scenario, seed: int) -> Path:
        """The repo list of (scenario, seed), building the teachers first if needed (``pool-build.json``: done)."""
        if scenario.pool_list is not None:
            return Path(scenario.pool_list)
        from .teachers import make_pool

        cfg = self.cfg
        folder = _seed_dir(self.out, scenario, seed) / "pool"
        repo_list = folder / "repo-list.txt"
        record = _seed_dir(self.out, scenario, seed) / "pool-build.json"
        with _locked(_seed_dir(self.out, scenario, seed) / ".pool.lock"):
            if record.exists():
                return repo_list
            start = time.perf_counter()
            pool = scenario_pool(cfg, scenario)
            make_pool(folder, pool, seed=seed, data=cfg.data, progress=self.progress, device=self.device)
            write_json_atomic(
                record, {"timings_s": {"make-pool": time.perf_counter() - start}, "teachers": pool.teachers}
            )
            return repo_list

    def prepared(self, scenario: Scenario, seed: int) -> tuple[Path, Path]:
        """``(repo list, shared folder)``: the pool recovered, embedded and grouped once per (scenario, seed)."""
        from .pipeline import prepare_pool

        folder = _seed_dir(self.out, scenario, seed)
        record = folder / "prepare.json"
        repo_list = self.pool_list(scenario, seed)
        with _locked(folder / ".prepare.lock"):
            if not record.exists():
                cfg = method_config(self.config(scenario), METHODS["tgr"], seed)
                prepared = prepare_pool(repo_list, folder / "shared", cfg, progress=self.progress)
                write_json_atomic(
                    record, {"timings_s": prepared.timings, "teachers": [m.name for m in prepared.members]}
                )
        return repo_list, folder / "shared"

    def check_episodes_unchanged(self, cell: Cell) -> None:
        """Refuse to run a cell whose episodes would differ from its finished neighbours' (same scenario
        and seed): other episode indices, another dataset commit (a Hub branch that moved) or another
        class split. Found before training, not when the report compares the cells' image hashes."""
        test = self.test_split(cell.scenario)
        mine = {f"{shot}shot": fingerprint for shot, fingerprint in self.fingerprints(cell.scenario, cell.seed).items()}
        folder = _cell_path(self.out, cell).parent
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = _read_cell(path)
            then = record.get("data_source") or {}
            theirs = {shot: entry["list"] for shot, entry in record.get("episodes", {}).items()}
            same_data = (then.get("revision"), then.get("class_split")) == (test.revision, test.class_split)
            if theirs != mine or not same_data:
                raise BenchmarkError(
                    f"the meta-test episodes of {cell.scenario.name} seed {cell.seed} differ from those of the "
                    f"finished cell {path} (it was scored on {then.get('dataset')}@{then.get('revision')}, "
                    f"class split {then.get('class_split')}; now {self.cfg.data.dataset}@{test.revision}, "
                    f"class split {test.class_split})",
                    hint="pin the dataset to the commit the folder used (NAME@COMMIT), or use another --out",
                )

    def run(self, cell: Cell) -> dict[str, Any]:
        """Train (if needed) and score one cell; returns its record (not yet written)."""
        from .evaluate import average_baseline, eval_settings, evaluate_model, random_baseline

        cfg, method, seed = self.config(cell.scenario), cell.method, cell.seed
        self.check_episodes_unchanged(cell)
        timings: dict[str, float] = {}
        extra: dict[str, Any] = {}
        # building / preparing the pool is timed apart: only the first cell of a (scenario, seed) pays for it
        start = time.perf_counter()
        if method.kind == "average":
            repo_list = self.pool_list(cell.scenario, seed)
        elif method.kind == "trained":
            repo_list, shared = self.prepared(cell.scenario, seed)
        timings["prepare"] = time.perf_counter() - start

        start = time.perf_counter()
        if method.kind == "random":
            model = random_baseline(cfg.train.arch, cfg.data.image_size, seed=seed)
        elif method.kind == "average":
            from .pool import load_pool

            model = average_baseline(load_pool(repo_list))
        else:
            from .pipeline import run_tgr

            run_dir = _seed_dir(self.out, cell.scenario, seed) / method.name
            run_dir.mkdir(parents=True, exist_ok=True)
            # the method starts from the pseudo-tasks (and embeddings) recovered once for this pool and seed
            for name in ("recovered", "embeddings.safetensors"):
                if (shared / name).exists() and not (run_dir / name).exists():
                    copy_atomic(shared / name, run_dir / name)
            result = run_tgr(
                repo_list,
                run_dir,
                method_config(cfg, method, seed),
                evaluate_test=False,
                progress=self.progress,
                resume=True,
            )
            model = result.model
            extra = {
                "val": result.metrics.get("val"),
                "groups": [[int(i) for i in g] for g in result.groups],
                "run_folder": str(run_dir.relative_to(self.out)),
                "recover_agreement": _mean_recover_agreement(run_dir),
            }
        timings["train"] = time.perf_counter() - start

        start = time.perf_counter()
        episodes = self.episodes(cell.scenario, seed)
        fingerprints = self.fingerprints(cell.scenario, seed)
        test = self.test_split(cell.scenario)
        witnesses = {shot: _Witness(lst) for shot, lst in episodes.items()}
        model = model.to(self.device).eval()  # run_tgr hands its model back on the CPU
        # the run's eval section (eval.method, the fine-tuning schedule) for every method, baselines
        # included, as run_tgr's final test; way / shots / query / episodes come from the episode lists
        metrics = evaluate_model(
            model,
            test,
            **eval_settings(cfg.eval, cfg.train.learner),
            progress=self.progress,
            keep_accuracies=True,
            episode_lists=witnesses,
        )
        timings["evaluate"] = time.perf_counter() - start
        return {
            "format": CELL_FORMAT,
            "version": 1,
            "scenario": cell.scenario.name,
            "seed": seed,
            "method": method.name,
            "learner": cfg.train.learner,
            "settings_digest": _digest(_settings(cfg, cell.scenario)),
            "accuracies": {f"{shot}shot": metrics[f"{shot}shot"]["accuracies"] for shot in episodes},
            "episodes": {
                f"{shot}shot": {
                    "count": witnesses[shot].served,
                    "list": fingerprints[shot],
                    "seen": witnesses[shot].digest(),
                }
                for shot in episodes
            },
            "adaptation": metrics[f"{next(iter(episodes))}shot"]["method"],
            # the meta-test data as resolved: a Hub dataset's commit and the class split used (as in a run record)
            "data_source": {"dataset": cfg.data.dataset, "revision": test.revision, "class_split": test.class_split},
            "timings_s": timings,
            "device": str(self.device),
            **extra,
        }


def _mean_recover_agreement(run_dir: Path) -> float | None:
    """Mean of meta-training's ``recover_agreement`` history in the run record of ``run_dir``.

    How often the teacher predicted the intended label of the images online recovery made
    (over every recovery of the run); None without online recovery (no such history) or record.
    """
    from .metamodel import TGR_CONFIG_NAME
    from .run_record import RunRecord

    path = run_dir / TGR_CONFIG_NAME
    if not path.is_file():
        return None
    points = RunRecord.read(path).history.get("recover_agreement") or []
    values = [float(value) for _, value in points]
    return float(np.mean(values)) if values else None


def _read_cell(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkError(
            f"cannot read the benchmark cell {path}: {error}", hint="delete that file to run the cell again"
        ) from None
    if record.get("format") != CELL_FORMAT:
        raise BenchmarkError(f"{path} is not a benchmark cell", hint="delete that file to run the cell again")
    return record


def _check_settings(spec: BenchmarkSpec, out: Path) -> None:
    """Refuse a folder whose finished cells (or bench.json) were made with other settings."""
    for scenario in spec.scenarios:
        digest = _digest(_settings(spec.cfg, scenario))
        folder = out / "cells" / scenario.name
        for path in sorted(folder.glob("seed-*/*.json")) if folder.is_dir() else []:
            if _read_cell(path).get("settings_digest") != digest:
                raise BenchmarkError(
                    f"{out} holds results of scenario {scenario.name!r} made with other settings ({path})",
                    hint="use another --out for new settings (the preset, --set overrides, learner and "
                    "evaluation must match a folder's; seeds and methods may be added)",
                )


def _write_settings(spec: BenchmarkSpec, out: Path) -> None:
    path = out / "bench.json"
    # the config as given; a scenario's own data.domains is in its description (eval_domains)
    data: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "config": _config_without_seed(spec.cfg),
        "scenarios": {s.name: s.describe() for s in spec.scenarios},
        "seeds": list(spec.seeds),
        "methods": list(spec.methods),
        "reference": spec.reference,
    }
    if path.exists():  # keep the union of what was asked of this folder
        old = json.loads(path.read_text())
        data["scenarios"] = {**old.get("scenarios", {}), **data["scenarios"]}
        data["seeds"] = sorted(set(old.get("seeds", [])) | set(data["seeds"]))
        data["methods"] = list(dict.fromkeys([*old.get("methods", []), *data["methods"]]))
    write_json_atomic(path, data)


def run_benchmark(
    spec: BenchmarkSpec,
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the unfinished cells of this shard, then write the report of every finished cell.

    Args:
        spec: scenarios × seeds × methods and the run config.
        out: the benchmark folder (see the module docstring); reused and resumed when it exists.
        shard: ``(i, n)``: run only the cells whose grid position is ``i`` modulo ``n``.
        progress: tqdm bars (cells, and the stages inside them).
        on_cell: called with each cell and its record once it is written.

    Returns:
        The report (:func:`summarize`), also written as ``results.json`` / ``.md`` / ``.png``.

    Raises:
        ConfigError: a bad shard, or launched as several Accelerate processes.
        BenchmarkError: the folder holds cells of other settings.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every process would train and write every cell: the grid is shared out by --shard instead
        raise ConfigError(
            "the benchmark does not run under accelerate launch / torchrun",
            hint="start one plain process per shard: --shard 0/N ... --shard N-1/N",
        )
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard must be i/n with 0 <= i < n, got {index}/{count}", hint="e.g. --shard 0/2")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(spec, out)
    _write_settings(spec, out)
    cells = plan_cells(spec)
    mine = [cell for position, cell in enumerate(cells) if position % count == index]
    todo = [cell for cell in mine if not _cell_path(out, cell).exists()]
    logger.info(
        "benchmark: %d cells in the grid, %d in shard %d/%d, %d already done, %d to run",
        len(cells),
        len(mine),
        index,
        count,
        len(mine) - len(todo),
        len(todo),
    )
    runner = _Runner(spec, out, progress)
    bar = progress_bar(
        total=len(mine), initial=len(mine) - len(todo), desc="benchmark cells", unit="cell", disable=not progress
    )
    try:
        for cell in todo:
            bar.set_postfix_str(cell.key)
            start = time.perf_counter()
            record = runner.run(cell)
            path = _cell_path(out, cell)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, record)
            bar.update(1)
            done = bar.n
            logger.info(
                "cell %s done in %.0f s (%s); %d of %d done, %d left",
                cell.key,
                time.perf_counter() - start,
                ", ".join(f"{k} {100 * float(np.mean(v)):.2f}%" for k, v in record["accuracies"].items()),
                done,
                len(mine),
                len(mine) - done,
            )
            if on_cell is not None:
                on_cell(cell, record)
    finally:
        bar.close()
    return write_report(spec, out)


# --- statistics and report --------------------------------------------------------------------------


def _interval(values: Sequence[float]) -> dict[str, Any]:
    mean, ci95 = stats.episode_interval(values)
    return {"mean": mean, "ci95": ci95, "episodes": len(values)}


def _paired(
    records: dict[tuple[int, str], dict[str, Any]],
    method: str,
    reference: str,
    seeds: Sequence[int],
    shots: Sequence[str],
) -> dict[str, Any] | None:
    """``method − reference`` on the seeds that have both cells (None: no such seed).

    Returns:
        ``{"seeds": [...], SHOT: {"per_seed": {seed: paired t over the episodes}, "across_seeds":
        t-interval over the seeds' mean differences}}`` (each a :meth:`stats.TInterval.to_dict`).
    """
    both = [s for s in seeds if (s, method) in records and (s, reference) in records]
    if not both:
        return None
    diff: dict[str, Any] = {"seeds": both}
    for shot in shots:
        per_seed = {
            s: stats.paired_difference(
                records[(s, method)]["accuracies"][shot], records[(s, reference)]["accuracies"][shot]
            )
            for s in both
        }
        diff[shot] = {
            "per_seed": {str(s): d.to_dict() for s, d in per_seed.items()},
            "across_seeds": stats.across_seeds([d.mean for d in per_seed.values()]).to_dict(),
        }
    return diff


def summarize(spec: BenchmarkSpec, out: str | Path) -> dict[str, Any]:
    """Statistics of every finished cell of ``spec`` in ``out`` (see :mod:`tgr_hub.stats`).

    Per scenario, method and shot: ``per_seed[seed]`` (mean and episode CI), ``pooled`` (all
    episodes of all seeds, episode CI; ``seeds``: t-interval over the seed means, with ≥ 2 seeds).
    Per method against the reference: ``per_seed[seed]`` (paired t over the identical episodes)
    and ``across_seeds`` (t-interval over the seeds' mean paired differences, ≥ 2 seeds).
    ``noise_floor`` (None unless both ``erm-replicate`` and ``erm`` have cells): ``erm-replicate −
    erm`` in the same form (``seeds``, then per shot ``per_seed`` and ``across_seeds``), the
    spread of ERM trained again with another training seed on the same pool, tasks and episodes.
    Per trained method, ``selection[seed]`` (the meta-validation result, group sizes and mean
    online-recovery agreement) and ``recover_agreement`` (its mean over the seeds; None: n/a).

    Raises:
        BenchmarkError: the methods of one seed were not scored on identical episodes.
    """
    out = Path(out)
    report: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "reference": spec.reference,
        "learner": spec.cfg.train.learner,
        "eval": dataclasses.asdict(spec.cfg.eval),
        "preset": spec.cfg.preset,
        "scenarios": {},
        "missing_cells": [],
    }
    data_sources: dict[str, Any] = {}  # every distinct resolved meta-test source the cells were scored on
    devices: set[str] = set()  # where the cells were scored
    shots = [f"{int(s)}shot" for s in spec.cfg.eval.shots]
    for scenario in spec.scenarios:
        records: dict[tuple[int, str], dict[str, Any]] = {}
        for cell in plan_cells(dataclasses.replace(spec, scenarios=(scenario,))):
            path = _cell_path(out, cell)
            if path.exists():
                record = _read_cell(path)
                records[(cell.seed, cell.method.name)] = record
                if record.get("device"):
                    devices.add(str(record["device"]))
                if record.get("data_source") is not None:
                    data_sources[json.dumps(record["data_source"], sort_keys=True)] = record["data_source"]
            else:
                report["missing_cells"].append(cell.key)
        for seed in spec.seeds:  # the invariant the paired statistics rest on
            seen = {name: rec["episodes"] for (s, name), rec in records.items() if s == seed}
            if len({json.dumps(v, sort_keys=True) for v in seen.values()}) > 1:
                raise BenchmarkError(
                    f"{scenario.name}, seed {seed}: the methods were not scored on identical "
                    f"episodes ({', '.join(sorted(seen))})",
                    hint="delete the cells of that seed and run them again",
                )
        methods: dict[str, Any] = {}
        paired: dict[str, Any] = {}
        for name in spec.methods:
            seeds = [s for s in spec.seeds if (s, name) in records]
            if not seeds:
                continue
            entry: dict[str, Any] = {"label": METHODS[name].label, "seeds": seeds}
            for shot in shots:
                per_seed = {str(s): _interval(records[(s, name)]["accuracies"][shot]) for s in seeds}
                pooled = _interval([a for s in seeds for a in records[(s, name)]["accuracies"][shot]])
                pooled["seeds"] = stats.across_seeds([per_seed[str(s)]["mean"] for s in seeds]).to_dict()
                entry[shot] = {"per_seed": per_seed, "pooled": pooled}
            entry["timings_s"] = {str(s): records[(s, name)]["timings_s"] for s in seeds}
            # trained methods: the checkpoint meta-validation chose, the groups it trained with, and how
            # often the teachers agreed with the labels online recovery intended (None: no online recovery)
            entry["selection"] = {
                str(s): {
                    "val": records[(s, name)].get("val"),
                    "group_sizes": [len(g) for g in records[(s, name)].get("groups") or []],
                    "recover_agreement": records[(s, name)].get("recover_agreement"),
                }
                for s in seeds
                if records[(s, name)].get("val") is not None
            }
            agreements = [
                c["recover_agreement"] for c in entry["selection"].values() if c["recover_agreement"] is not None
            ]
            entry["recover_agreement"] = float(np.mean(agreements)) if agreements else None
            methods[name] = entry
            if name != spec.reference:
                diff = _paired(records, name, spec.reference, spec.seeds, shots)
                if diff is not None:
                    paired[name] = diff
        replicate, original = NOISE_FLOOR
        noise_floor = _paired(records, replicate, original, spec.seeds, shots)
        prepare: dict[str, Any] = {}  # make-pool, then recovery / embedding / grouping, per seed
        for seed in spec.seeds:
            timings: dict[str, float] = {}
            for name in ("pool-build.json", "prepare.json"):
                path = _seed_dir(out, scenario, seed) / name
                if path.exists():
                    timings.update(json.loads(path.read_text())["timings_s"])
            if timings:
                prepare[str(seed)] = {"timings_s": timings}
        report["scenarios"][scenario.name] = {
            "scenario": scenario.describe(),
            "seeds": list(spec.seeds),
            "methods": methods,
            "paired": paired,
            "noise_floor": noise_floor,
            "prepare": prepare,
        }
    report["data_sources"] = list(data_sources.values())
    report["devices"] = sorted(devices)
    return report


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _pair_interval(pair: dict[str, Any], shot: str) -> dict[str, Any]:
    """The interval a paired difference is read with: across seeds with ≥ 2 seeds, else the one seed's paired t."""
    return pair[shot]["across_seeds"] if len(pair["seeds"]) > 1 else pair[shot]["per_seed"][str(pair["seeds"][0])]


def _difference(d: dict[str, Any]) -> str:
    return f"{_pct(d['mean'], True)} [{_pct(d['low'], True)}, {_pct(d['high'], True)}], p {_p(d['p'])}"


def _noise_floor_lines(sc: dict[str, Any], shots: Sequence[str]) -> list[str]:
    """The ERM − ERM spread (``erm-replicate − erm``) every method difference is to be read against."""
    floor = sc.get("noise_floor")
    if not floor:
        return []
    seeds = floor["seeds"]
    over = (
        f"95% t-interval over {len(seeds)} seeds (df = {len(seeds) - 1})"
        if len(seeds) > 1
        else f"one seed ({seeds[0]}): 95% paired-t interval over its episodes, which covers episode sampling only; "
        f"run more seeds for the spread across training seeds"
    )
    parts = "; ".join(f"{shot[:-4]}-shot {_difference(_pair_interval(floor, shot))}" for shot in shots)
    return [
        f"**Noise floor** (ERM − ERM), {METHODS[NOISE_FLOOR[0]].label} − {METHODS[NOISE_FLOOR[1]].label} in "
        f"points: {parts}. That is ERM meta-trained again with training seed = seed + {REPLICATE_SEED_OFFSET} on "
        f"the same pool, recovered tasks and meta-test episodes ({over}). A difference between methods must "
        f"exceed this spread to mean anything: one inside it is what training ERM again with another seed "
        f"already gives.",
        "",
    ]


def _agreement(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _selection_and_cost_lines(sc: dict[str, Any]) -> list[str]:
    """Per trained method and seed: the step meta-validation chose, its meta-val accuracy, the group
    sizes, the mean online-recovery agreement and the cell's times; then each seed's shared preparation times."""
    rows = []
    for entry in sc["methods"].values():
        for seed, chosen in entry.get("selection", {}).items():
            val = chosen["val"]
            scores = ", ".join(f"{k[:-4]}-shot {_pct(v)}" for k, v in val.items() if k.endswith("shot"))
            if val.get("selection_noise") is not None:  # the standard error of the mean it was chosen on
                scores += f" (± {_pct(val['selection_noise'])})"
            times = entry["timings_s"][seed]
            rows.append(
                f"| {entry['label']} | {seed} | {val.get('best_step')} | {scores} | "
                f"{'+'.join(map(str, chosen['group_sizes']))} | {_agreement(chosen.get('recover_agreement'))} | "
                f"{times.get('train', 0):.0f} | {times.get('evaluate', 0):.0f} |"
            )
    if not rows:
        return []
    means = "; ".join(
        f"{entry['label']} {_agreement(entry.get('recover_agreement'))}"
        for entry in sc["methods"].values()
        if entry.get("selection")
    )
    lines = [
        "Checkpoints are chosen on meta-validation only (on the mean accuracy over the validation shots; "
        "± its standard error over the validation episodes: the selection noise); the step chosen, its "
        "meta-val accuracy, the group "
        "sizes each method trained with, the mean online-recovery agreement (how often a teacher predicts the "
        "label its recovered image was made for, over the run's online recoveries; n/a: no online recovery), "
        "and the cell's times (seconds):",
        "",
        "| method | seed | step chosen | meta-val accuracy | groups | recovery agreement | train s | evaluate s |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Mean online-recovery agreement over the seeds: {means}.",
        "",
    ]
    prepare = sc.get("prepare", {})
    if prepare:
        lines += [
            "Shared per seed (seconds): "
            + "; ".join(
                f"seed {seed}: " + ", ".join(f"{k} {v:.0f}" for k, v in p["timings_s"].items())
                for seed, p in prepare.items()
            ),
            "",
        ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables (results.md)."""
    ref = report["reference"]
    ev = report["eval"]
    lines = [
        f"# Benchmark: {ev['way']}-way meta-test accuracy (%), learner {report['learner']}, preset {report['preset']}",
        "",
    ]
    for name, sc in report["scenarios"].items():
        desc = sc["scenario"]
        where = (
            f"pool {desc['pool_list']}"
            if desc.get("pool_list")
            else f"domains {', '.join(desc['domains'])} × archs {', '.join(desc['archs'])}"
        )
        if desc.get("min_teachers") or desc.get("way"):
            where += (
                f" (at least {desc.get('min_teachers') or 1} teachers"
                + (f", {desc['way']} classes each" if desc.get("way") else "")
                + ")"
            )
        if desc.get("eval_domains"):
            where += f"; meta-validation and meta-test on {', '.join(desc['eval_domains'])} only"
        seeds = sc["seeds"]
        lines += [
            f"## {name}: {where}; seeds {', '.join(map(str, seeds))}; {ev['episodes']} episodes per seed, "
            f"{ev['query']} queries per class",
            "",
        ]
        shots = [f"{s}shot" for s in ev["shots"]]
        ref_label = METHODS[ref].label
        header = (
            "| method | " + " | ".join(f"{s[:-4]}-shot accuracy | {s[:-4]}-shot − {ref_label}" for s in shots) + " |"
        )
        lines += [header, "|---|" + "---|---|" * len(shots)]
        for method, entry in sc["methods"].items():
            cells = []
            for shot in shots:
                pooled = entry[shot]["pooled"]
                acc = f"{_pct(pooled['mean'])} ± {_pct(pooled['ci95'])}"
                if len(entry["seeds"]) > 1:
                    acc += f" (seeds ± {_pct(pooled['seeds']['half'])})"
                if method == ref:
                    delta = "reference"
                elif method in sc["paired"]:
                    delta = _difference(_pair_interval(sc["paired"][method], shot))
                else:
                    delta = "n/a"
                cells += [acc, delta]
            lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += _noise_floor_lines(sc, shots)  # beside the differences it is the yardstick of
        lines.append(
            f"Accuracy: mean over all episodes of the seeds listed ± 1.96·std/√n over those episodes "
            f"(episode sampling only); '(seeds ± h)': 95% t-interval over the seed means (covers the pool, "
            f"recovery, training and episode set of each seed). − {ref_label}: the paired difference on "
            f"identical episodes, in points; "
            + (
                "95% t-interval and p-value over the seeds' mean paired differences (df = seeds − 1)."
                if len(seeds) > 1
                else "95% paired-t interval and p-value over the episodes (df = episodes − 1)."
            )
        )
        lines.append("")
        if len(seeds) > 1:
            lines += [
                f"Per seed: accuracy ± 1.96·std/√n over that seed's episodes, and the paired difference "
                f"− {ref_label} on them (95% paired-t interval, p-value; df = episodes − 1):",
                "",
                "| method | seed | "
                + " | ".join(f"{s[:-4]}-shot accuracy | {s[:-4]}-shot − {ref_label}" for s in shots)
                + " |",
                "|---|---|" + "---|---|" * len(shots),
            ]
            for method, entry in sc["methods"].items():
                for seed in entry["seeds"]:
                    cells = []
                    for shot in shots:
                        acc = entry[shot]["per_seed"][str(seed)]
                        cells.append(f"{_pct(acc['mean'])} ± {_pct(acc['ci95'])}")
                        pair = sc["paired"].get(method)
                        if method == ref:
                            cells.append("reference")
                        elif pair is not None and seed in pair["seeds"]:
                            cells.append(_difference(pair[shot]["per_seed"][str(seed)]))
                        else:
                            cells.append("n/a")
                    lines.append(f"| {entry['label']} | {seed} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += _selection_and_cost_lines(sc)
    if report["missing_cells"]:
        lines += [f"Not finished yet ({len(report['missing_cells'])} cells): " + ", ".join(report["missing_cells"]), ""]
    return "\n".join(lines)


def write_report(spec: BenchmarkSpec, out: str | Path) -> dict[str, Any]:
    """Write results.json, results.md and results.png from the finished cells; returns the report."""
    from .figures import plot_benchmark

    out = Path(out)
    report = summarize(spec, out)
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", render_markdown(report) + "\n")
    if any(sc["methods"] for sc in report["scenarios"].values()):
        plot_benchmark(report, out / "results.png")
    if report["missing_cells"]:
        logger.warning(
            "benchmark report covers the finished cells only; %d cells are not done (other shards, or "
            "rerun the same command): %s",
            len(report["missing_cells"]),
            ", ".join(report["missing_cells"]),
        )
    return report
