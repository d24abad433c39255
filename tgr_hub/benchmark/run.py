"""Running the grid: preparing each (scenario, seed) once, training and scoring each cell, resuming."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import split_of
from ..data.episodes import ImageSplit
from ..distributed import choose_device
from ..errors import BenchmarkError, ConfigError
from ..io import copy_atomic, write_json_atomic
from ..progress import progress_bar
from .grid import (
    CELL_FORMAT,
    METHODS,
    BenchmarkSpec,
    Cell,
    EpisodeList,
    Scenario,
    _Witness,
    cell_path,
    check_settings,
    json_digest,
    method_config,
    method_settings,
    plan_cells,
    read_cell,
    scenario_config,
    scenario_pool,
    seed_dir,
    settings_of,
    write_settings,
)
from .report import write_report

logger = logging.getLogger(__name__)

# --- running cells ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock between processes (POSIX ``flock``): preparing the same (scenario, seed),
    or running the same cell. The system releases it when its holder dies, so no lock goes stale.

    Yields whether this process holds the lock: always with ``wait``; without it, False at once
    when another process holds it.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
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
        from ..teachers import make_pool

        cfg = self.cfg
        folder = seed_dir(self.out, scenario, seed) / "pool"
        repo_list = folder / "repo-list.txt"
        record = seed_dir(self.out, scenario, seed) / "pool-build.json"
        with _locked(seed_dir(self.out, scenario, seed) / ".pool.lock"):
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
        from ..pipeline import prepare_pool

        folder = seed_dir(self.out, scenario, seed)
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
        folder = cell_path(self.out, cell).parent
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = read_cell(path)
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
        from ..evaluate import average_baseline, eval_settings, evaluate_model, random_baseline

        cfg, method, seed = self.config(cell.scenario), cell.method, cell.seed
        self.check_episodes_unchanged(cell)
        timings: dict[str, float] = {}
        extra: dict[str, Any] = {}
        # building / preparing the pool is timed apart: only the first cell of a (scenario, seed) pays for it
        start = time.perf_counter()
        if method.kind in ("average", "peer"):
            repo_list = self.pool_list(cell.scenario, seed)
        elif method.kind == "trained":
            repo_list, shared = self.prepared(cell.scenario, seed)
        timings["prepare"] = time.perf_counter() - start

        start = time.perf_counter()
        if method.kind == "random":
            model = random_baseline(cfg.train.arch, cfg.data.image_size, seed=seed)
        elif method.kind == "average":
            from ..pool import load_pool

            model = average_baseline(load_pool(repo_list))
        elif method.kind == "peer":
            from ..peers import run_peer

            run_dir = seed_dir(self.out, cell.scenario, seed) / method.name
            peer = run_peer(method.name, repo_list, run_dir, cfg, seed=seed, progress=self.progress)
            model = peer.model
            extra = {
                "val": peer.val(),
                "val_curve": _as_curve(peer.history.get("val_acc")),
                "run_folder": str(run_dir.relative_to(self.out)),
            }
        else:
            from ..pipeline import run_tgr

            run_dir = seed_dir(self.out, cell.scenario, seed) / method.name
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
                **_from_history(run_dir),
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
            "settings_digest": json_digest(settings_of(cfg, cell.scenario)),
            **(
                {"method_settings_digest": json_digest(own)}
                if (own := method_settings(cfg, method)) is not None
                else {}
            ),
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


def _from_history(run_dir: Path) -> dict[str, Any]:
    """What a cell records of its run's meta-training history (the run record in ``run_dir``).

    ``recover_agreement``: the mean of ``recover_agreement`` over the run's online recoveries (how
    often the teacher predicted the label its recovered image was made for); None without online
    recovery. ``gradients``: the ``train.analysis_every`` curves ``{name: [[step, value], ...]}``
    (P, cosine and relative spread of the task gradients on the fixed probe); None without them.
    ``val_curve``: meta-val accuracy (the mean over the validation shots) at each check, ``[[step, value], ...]``;
    None without a run record.
    """
    from ..metamodel import TGR_CONFIG_NAME
    from ..probe import GRADIENT_HISTORY
    from ..run_record import RunRecord

    path = run_dir / TGR_CONFIG_NAME
    history = RunRecord.read(path).history if path.is_file() else {}
    agreement = [float(value) for _, value in history.get("recover_agreement") or []]
    curves = {name: _as_curve(history[name]) for name in GRADIENT_HISTORY if history.get(name)}
    return {
        "recover_agreement": float(np.mean(agreement)) if agreement else None,
        "gradients": curves or None,
        "val_curve": _as_curve(history.get("val_acc")),
    }


def _as_curve(history: list[tuple[int, float]] | None) -> list[list[int | float]] | None:
    """A run history's ``[(step, value), ...]`` as JSON ``[[step, value], ...]``; None when empty."""
    return [[int(step), float(value)] for step, value in history] if history else None


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
    check_settings(spec, out)
    write_settings(spec, out)
    cells = plan_cells(spec)
    mine = [cell for position, cell in enumerate(cells) if position % count == index]
    todo = [cell for cell in mine if not cell_path(out, cell).exists()]
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
            path = cell_path(out, cell)
            # processes sharing the folder (with or without --shard) each run the cells no other one holds
            with _locked(path.with_suffix(".lock"), wait=False) as ours:
                if not ours or path.exists():  # running elsewhere, or finished there since this run listed it
                    why = "another process is running it" if not ours else "another process finished it"
                    logger.info("cell %s: %s; skipped", cell.key, why)
                    continue
                bar.set_postfix_str(cell.key)
                start = time.perf_counter()
                record = runner.run(cell)
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
