"""Choose a setting on meta-validation, across seeds, on a benchmark folder's pools.

For each seed of a benchmark folder (its pool, and the pseudo-tasks recovered once for that seed)
this trains a method (``--method``, TGR by default) once per variant (a list of ``section.key=value``
overrides) and records the state meta-validation chose: its step, its meta-val accuracy per shot
and the selection noise, and the meta-val curve. It never touches the meta-test split. The variant
without overrides is the benchmark's own cell of that method: its run folder is read, not retrained
(the script checks that it was trained with exactly these settings). A variant with a longer
``train.iterations`` shows where meta-validation peaks (does ``quick`` train to convergence?). A
variant that differs from the cell only in what a checkpoint may change (its length) continues the
cell's own run from its newest checkpoint, where the cell kept one: that is exact, as resuming is
bitwise and no setting depends on the run's length, and it costs only the extra steps.

The summary gives each variant's meta-val accuracy (mean over seeds) and its paired difference from
the first variant, with a 95% t-interval over seeds (df = seeds − 1): the same reading as the
benchmark's, on meta-validation instead of meta-test.

Run (one process per shard of the runs; prints a table, writes JSON):
    .venv/bin/python bench/bench_val_sweep.py --bench runs/bench-faithful --scenario standard \\
        --seeds 0,1,2 --variant head-ce= --variant head-kd1=train.distill_weight=1 \\
        --variant episodic-ce=train.igr_loss=episodic --out runs/val-sweep --json runs/val-sweep.json
    .venv/bin/python bench/bench_val_sweep.py --bench runs/bench-faithful --method erm \
        --variant quick= --variant long=train.iterations=900 --out runs/val-long --json runs/val-long.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tgr_hub.benchmark.grid import METHODS, method_config, scenario_config, scenario_from_name, seed_dir
from tgr_hub.config import RunConfig, changed_settings, load_config
from tgr_hub.distributed import list_checkpoints
from tgr_hub.io import copy_atomic, write_json_atomic
from tgr_hub.metamodel import TGR_CONFIG_NAME
from tgr_hub.pipeline import CHECKPOINTS, run_tgr, training_done
from tgr_hub.run_record import RunRecord
from tgr_hub.stats import across_seeds


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value,key=value`` (or ``name=``: the benchmark's own settings) -> (name, overrides)."""
    name, _, overrides = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: give NAME=OVERRIDES (NAME= for the benchmark's own settings)")
    return name, [o for o in overrides.split(",") if o]


def variant_config(bench: Path, scenario_name: str, seed: int, method: str, overrides: list[str]) -> RunConfig:
    """The run config of ``method`` at ``seed`` in the benchmark folder, with ``overrides`` on top."""
    values = json.loads((bench / "bench.json").read_text())["config"]
    cfg = load_config(values=values, overrides=overrides)
    cfg = scenario_config(cfg, scenario_from_name(scenario_name, cfg))
    if METHODS[method].kind != "trained":
        raise SystemExit(f"--method {method}: only the TGR family trains from a seed's recovery")
    return method_config(cfg, METHODS[method], seed)


def chosen_state(
    bench: Path,
    out: Path,
    scenario_name: str,
    seed: int,
    name: str,
    overrides: list[str],
    method: str = "tgr",
    progress: bool = False,
) -> dict[str, Any]:
    """Meta-validation's choice for one variant and seed: read from a finished run, else trained."""
    cfg = variant_config(bench, scenario_name, seed, method, overrides)
    scenario = scenario_from_name(scenario_name, cfg)
    seed_folder = seed_dir(bench, scenario, seed)
    own = seed_folder / method
    if not overrides and (record := training_done(own, cfg)) is not None:
        return {
            "run_folder": str(own),
            "trained_now": False,
            "train_s": record.timings_s.get("meta-train"),
            "val_curve": record.history["val_acc"],
            **record.metrics["val"],
        }
    run_dir = seed_dir(out, scenario, seed) / method / name  # one --out may hold several methods' variants
    run_dir.mkdir(parents=True, exist_ok=True)
    for item in ("recovered", "embeddings.safetensors"):  # the seed's recovery, as the benchmark's cells start
        if (seed_folder / "shared" / item).exists() and not (run_dir / item).exists():
            copy_atomic(seed_folder / "shared" / item, run_dir / item)
    continued_from = None
    cell_cfg = variant_config(bench, scenario_name, seed, method, [])
    if not changed_settings(cell_cfg.to_dict(), cfg.to_dict(), "checkpoint"):  # only longer (or shorter)
        continued_from = continue_cell(own / CHECKPOINTS, run_dir / CHECKPOINTS, cfg.train.iterations)
    start = time.perf_counter()
    result = run_tgr(
        seed_folder / "pool" / "repo-list.txt", run_dir, cfg, evaluate_test=False, resume=True, progress=progress
    )
    return {
        "run_folder": str(run_dir),
        "trained_now": True,
        "continued_from": continued_from,  # the cell's step this run resumed from (train_s counts the rest)
        "train_s": time.perf_counter() - start,
        "val_curve": RunRecord.read(run_dir / TGR_CONFIG_NAME).history["val_acc"],
        **result.metrics["val"],
    }


def continue_cell(cell_checkpoints: Path, run_checkpoints: Path, iterations: int) -> int | None:
    """Start a run from the cell's newest checkpoint (copied in), if the cell kept one at or before
    ``iterations`` and the run has none of its own; returns that checkpoint's step, else None."""
    kept = list_checkpoints(cell_checkpoints)
    if list_checkpoints(run_checkpoints) or not kept:
        return None
    step, newest = kept[-1]
    if step > iterations:
        return None
    shutil.copytree(newest, run_checkpoints / newest.name)
    return step


def summarize(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Markdown lines: each variant's meta-val accuracy over seeds, and its paired difference from the first."""
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["variant"], r["seed"]): r for r in rows}
    complete = [s for s in seeds if all((n, s) in by for n in names)]
    lines = [
        f"meta-val accuracy (%, the mean over shots meta-validation chose on), seeds {complete}:",
        "",
        "| variant | per seed | mean | − " + names[0] + " (95% t over seeds) | steps chosen |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        values = np.array([100 * by[(name, s)]["accuracy"] for s in complete])
        if name == names[0]:
            versus = "reference"
        else:
            reference = np.array([100 * by[(names[0], s)]["accuracy"] for s in complete])
            t = across_seeds(values - reference)
            versus = f"{t.mean:+.2f} [{t.low:+.2f}, {t.high:+.2f}], p {t.p:.3f}"
        per_seed = ", ".join(f"{v:.2f}" for v in values)
        steps = ", ".join(str(by[(name, s)].get("best_step", "?")) for s in complete)
        lines.append(f"| {name} | {per_seed} | {values.mean():.2f} | {versus} | {steps} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, required=True, help="a benchmark folder whose seeds are prepared")
    parser.add_argument("--scenario", default="standard")
    parser.add_argument("--method", default="tgr", help="the trained method (tgr, erm, ...; default tgr)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", action="append", required=True, help="NAME=key=value,... (NAME=: the benchmark's)")
    parser.add_argument("--out", type=Path, required=True, help="where the variants' runs go")
    parser.add_argument("--shard", default="0/1", help="i/n: run only the runs at positions i modulo n")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", type=Path, help="write the rows and summary here (rows of other shards are kept)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    index, count = (int(x) for x in args.shard.split("/"))
    rows = json.loads(args.json.read_text())["rows"] if args.json and args.json.is_file() else []
    done = {(r["variant"], r["seed"]) for r in rows}
    runs = [(seed, name, overrides) for seed in seeds for name, overrides in variants]
    for position, (seed, name, overrides) in enumerate(runs):
        if position % count != index or (name, seed) in done:
            continue
        row = {"variant": name, "overrides": overrides, "seed": seed}
        row |= chosen_state(
            args.bench, args.out, args.scenario, seed, name, overrides, method=args.method, progress=not args.quiet
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after each run, so an interrupted sweep keeps what it finished
            fresh = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
            merged = {(r["variant"], r["seed"]): r for r in fresh + rows}
            rows = list(merged.values())
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            write_json_atomic(args.json, {"settings": settings, "rows": rows})
    lines = summarize(rows, [name for name, _ in variants])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
