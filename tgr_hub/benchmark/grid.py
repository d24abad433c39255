"""The benchmark's grid: scenarios, methods, cells, where each lives in the folder, and its settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import PoolBuildConfig, RunConfig, comparable
from ..data.episodes import Episode, EpisodeSampler, ImageSplit
from ..errors import BenchmarkError, ConfigError
from ..io import write_json_atomic

logger = logging.getLogger(__name__)

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
        kind: ``random`` / ``average`` (baselines, not trained), ``trained`` (TGR and its ablations,
            :func:`tgr_hub.pipeline.run_tgr`) or ``peer`` (another DFML method, :mod:`tgr_hub.peers`).
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
    kind: Literal["random", "average", "trained", "peer"]
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
        Method("purer", "PURER", "peer"),
        Method("free", "FREE", "peer"),
        Method("bidf-mkd", "BiDf-MKD", "peer"),
    )
}
#: TGR taken apart: (what changes, with what else, method, the method it differs from in that switch alone).
ONE_SWITCH = (
    ("IGR", "with spectral groups", "tgr", "groups-no-igr"),
    ("IGR", "without groups", "igr-no-groups", "erm"),
    ("spectral grouping", "with IGR", "tgr", "igr-no-groups"),
    ("spectral grouping", "without IGR", "groups-no-igr", "erm"),
)

#: The quickstart's four methods.
QUICKSTART_METHODS = ("random", "average", "erm", "tgr")


def method_config(cfg: RunConfig, method: Method, seed: int) -> RunConfig:
    """The run config of a trained method at ``seed``: β, grouping, IGR order and training seed from the method.

    The run seed is ``seed`` for every method; ``train.seed`` is ``seed + method.train_seed_offset``
    for a method with an offset (``erm-replicate``), else the config's.

    A cell keeps a resumable checkpoint at every meta-validation (``train.eval_every``) unless the config
    sets its own ``train.checkpoint_every``, so an interrupted grid loses at most that many steps of a
    cell. Resuming is exact, so this changes no result (and is left out of every settings digest).
    """
    train_seed = cfg.train.seed if method.train_seed_offset is None else int(seed) + method.train_seed_offset
    train = dataclasses.replace(
        cfg.train,
        beta=cfg.train.beta if method.igr else 0.0,
        igr_order=method.igr_order,
        seed=train_seed,
        checkpoint_every=cfg.train.checkpoint_every or cfg.train.eval_every,
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


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.scenario.name / f"seed-{cell.seed}" / f"{cell.method.name}.json"


def seed_dir(out: Path, scenario: Scenario, seed: int) -> Path:
    return out / scenario.name / f"seed-{seed}"


def settings_of(cfg: RunConfig, scenario: Scenario) -> dict[str, Any]:
    """What a cell's result depends on besides its seed and method (the scenario's config: its data.domains)."""
    return {
        "config": comparable(scenario_config(cfg, scenario).to_dict(), "benchmark"),
        "scenario": scenario.describe(),
    }


def method_settings(cfg: RunConfig, method: Method) -> dict[str, Any] | None:
    """A peer method's own config section (its cells depend on it besides :func:`settings_of`); None for
    the others."""
    if method.kind != "peer":
        return None
    section, settings = _peer_section(cfg, method)
    return {section: json.loads(json.dumps(dataclasses.asdict(settings)))}


def last_step(cfg: RunConfig, method: Method) -> int | None:
    """The outer step a trained method's run ends at, where it is always meta-validated (TGR's and the
    peers' loops check at every ``eval_every`` steps and at the last); None for untrained methods."""
    if method.kind == "peer":
        return int(_peer_section(cfg, method)[1].iterations)
    return int(cfg.train.iterations) if method.kind == "trained" else None


def _peer_section(cfg: RunConfig, method: Method) -> tuple[str, Any]:
    """A peer method's config section: its name and its settings."""
    from ..peers import PEER_SECTIONS

    section = PEER_SECTIONS[method.name]
    return section, getattr(cfg, section)


def json_digest(data: Any) -> str:
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


def read_cell(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkError(
            f"cannot read the benchmark cell {path}: {error}", hint="delete that file to run the cell again"
        ) from None
    if record.get("format") != CELL_FORMAT:
        raise BenchmarkError(f"{path} is not a benchmark cell", hint="delete that file to run the cell again")
    return record


def check_settings(spec: BenchmarkSpec, out: Path) -> None:
    """Refuse a folder whose finished cells (or bench.json) were made with other settings."""
    for scenario in spec.scenarios:
        expected = json_digest(settings_of(spec.cfg, scenario))
        folder = out / "cells" / scenario.name
        for path in sorted(folder.glob("seed-*/*.json")) if folder.is_dir() else []:
            cell = read_cell(path)
            own = method_settings(spec.cfg, METHODS[cell["method"]]) if cell.get("method") in METHODS else None
            if cell.get("settings_digest") != expected or (
                own is not None and cell.get("method_settings_digest") != json_digest(own)
            ):
                raise BenchmarkError(
                    f"{out} holds results of scenario {scenario.name!r} made with other settings ({path})",
                    hint="use another --out for new settings (the preset, --set overrides, learner and "
                    "evaluation must match a folder's; seeds and methods may be added)",
                )


def write_settings(spec: BenchmarkSpec, out: Path) -> None:
    path = out / "bench.json"
    # the config as given; a scenario's own data.domains is in its description (eval_domains)
    data: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "config": comparable(spec.cfg.to_dict(), "benchmark"),
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
