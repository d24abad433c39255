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
run again, so an interruption loses at most the cell in flight. Processes (or machines) sharing the
folder share the grid on their own: a cell is locked while it runs (``cells/.../METHOD.lock``,
released when its process ends or dies), and a process skips the cells another one holds, so ``n``
copies of the same command each take the next free cell. ``shard=(i, n)`` instead runs only the
cells whose position in the grid is ``i`` modulo ``n``. Preparing a (scenario, seed) is serialised
by a file lock, and the report is written from whatever cells are finished (:func:`write_report`).

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

from ..errors import BenchmarkError
from .grid import (
    CELL_FORMAT,
    CONFIG_SCENARIO,
    METHODS,
    NOISE_FLOOR,
    ONE_SWITCH,
    QUICKSTART_METHODS,
    REPLICATE_SEED_OFFSET,
    RESULTS_FORMAT,
    SCENARIOS,
    BenchmarkSpec,
    Cell,
    EpisodeList,
    Method,
    Scenario,
    method_config,
    plan_cells,
    scenario_config,
    scenario_from_name,
    scenario_from_pool,
    scenario_pool,
)
from .report import render_markdown, summarize, write_report
from .run import run_benchmark

__all__ = [
    "BenchmarkError",
    "BenchmarkSpec",
    "CELL_FORMAT",
    "CONFIG_SCENARIO",
    "RESULTS_FORMAT",
    "Cell",
    "EpisodeList",
    "METHODS",
    "Method",
    "QUICKSTART_METHODS",
    "SCENARIOS",
    "Scenario",
    "NOISE_FLOOR",
    "ONE_SWITCH",
    "REPLICATE_SEED_OFFSET",
    "method_config",
    "plan_cells",
    "render_markdown",
    "run_benchmark",
    "scenario_config",
    "scenario_from_name",
    "scenario_from_pool",
    "scenario_pool",
    "summarize",
    "write_report",
]
