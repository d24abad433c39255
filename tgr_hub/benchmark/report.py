"""The benchmark's report: paired statistics over identical episodes, results.md and the figure."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..errors import BenchmarkError
from ..io import write_json_atomic, write_text_atomic
from .grid import (
    METHODS,
    NOISE_FLOOR,
    ONE_SWITCH,
    REPLICATE_SEED_OFFSET,
    RESULTS_FORMAT,
    BenchmarkSpec,
    cell_path,
    last_step,
    plan_cells,
    read_cell,
    seed_dir,
)

logger = logging.getLogger(__name__)

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
    ``decomposition``: the same for each pair of :data:`~tgr_hub.benchmark.grid.ONE_SWITCH` in the
    grid (two methods that differ in IGR alone or in grouping alone), with its ``switch`` and ``context``.
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
            path = cell_path(out, cell)
            if path.exists():
                record = read_cell(path)
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
                    "val_curve": records[(s, name)].get("val_curve"),
                }
                for s in seeds
                if records[(s, name)].get("val") is not None
            }
            # a run still improving when it ends keeps its last step: how often meta-val chose an earlier one
            last = last_step(spec.cfg, METHODS[name])
            chosen_steps = [c["val"].get("best_step") for c in entry["selection"].values()]
            if last is not None and chosen_steps:
                entry["chose_before_last"] = {
                    "cells": sum(step is not None and step < last for step in chosen_steps),
                    "of": len(chosen_steps),
                    "last_step": last,
                }
            agreements = [
                c["recover_agreement"] for c in entry["selection"].values() if c["recover_agreement"] is not None
            ]
            entry["recover_agreement"] = float(np.mean(agreements)) if agreements else None
            # train.analysis_every: the task gradients' P / cosine / spread on the seed's fixed probe
            curves = {str(s): records[(s, name)]["gradients"] for s in seeds if records[(s, name)].get("gradients")}
            if curves:
                entry["gradients"] = curves
            methods[name] = entry
            if name != spec.reference:
                diff = _paired(records, name, spec.reference, spec.seeds, shots)
                if diff is not None:
                    paired[name] = diff
        replicate, original = NOISE_FLOOR
        noise_floor = _paired(records, replicate, original, spec.seeds, shots)
        # TGR's parts: each pair of methods that differ in one switch, on the seeds that have both
        decomposition = [
            {"switch": switch, "context": context, "method": method, "versus": versus, **diff}
            for switch, context, method, versus in ONE_SWITCH
            if method in spec.methods
            and versus in spec.methods
            and (diff := _paired(records, method, versus, spec.seeds, shots)) is not None
        ]
        prepare: dict[str, Any] = {}  # make-pool, then recovery / embedding / grouping, per seed
        for seed in spec.seeds:
            timings: dict[str, float] = {}
            for name in ("pool-build.json", "prepare.json"):
                path = seed_dir(out, scenario, seed) / name
                if path.exists():
                    timings.update(json.loads(path.read_text())["timings_s"])
            if timings:
                prepare[str(seed)] = {"timings_s": timings}
        report["scenarios"][scenario.name] = {
            "scenario": scenario.describe(),
            "last_interval": _last_interval(methods),
            "seeds": list(spec.seeds),
            "methods": methods,
            "paired": paired,
            "noise_floor": noise_floor,
            "decomposition": decomposition,
            "prepare": prepare,
        }
    report["across_scenarios"] = _across_scenarios(report["scenarios"], spec.reference, shots)
    report["data_sources"] = list(data_sources.values())
    report["devices"] = sorted(devices)
    return report


def _across_scenarios(scenarios: dict[str, Any], reference: str, shots: Sequence[str]) -> list[dict[str, Any]]:
    """Each comparison that two or more scenarios hold (a method against the reference, the noise floor,
    each one-switch pair), pooled: a t-interval over the mean paired differences of every (scenario,
    seed) that has it. Empty with one scenario.

    Returns:
        ``[{"method", "versus", "switch", "context", "pairs": [[scenario, seed], ...], SHOT: t-interval}]``
        (``switch`` / ``context``: None for a plain comparison with the reference).
    """
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    for scenario, sc in scenarios.items():
        held: list[tuple[str, str, str | None, str | None, dict[str, Any]]] = [
            (name, reference, None, None, diff) for name, diff in sc["paired"].items()
        ]
        if sc["noise_floor"]:
            held.append((*NOISE_FLOOR, "noise floor", "another training seed", sc["noise_floor"]))
        held += [(d["method"], d["versus"], d["switch"], d["context"], d) for d in sc["decomposition"]]
        for method, versus, switch, context, diff in held:
            entry = pooled.setdefault(
                (method, versus), {"method": method, "versus": versus, "switch": None, "context": None, "means": {}}
            )
            entry["switch"], entry["context"] = entry["switch"] or switch, entry["context"] or context
            for seed in diff["seeds"]:  # the same pair twice in one scenario (paired and decomposition) counts once
                entry["means"][(scenario, int(seed))] = {
                    shot: diff[shot]["per_seed"][str(seed)]["mean"] for shot in shots
                }
    rows = []
    for entry in pooled.values():
        means = entry.pop("means")
        if len({scenario for scenario, _ in means}) < 2:
            continue
        entry["pairs"] = [[scenario, seed] for scenario, seed in means]
        for shot in shots:
            entry[shot] = stats.across_seeds([m[shot] for m in means.values()]).to_dict()
        rows.append(entry)
    return rows


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


def _differences_head(columns: Sequence[str], shots: Sequence[str], count: str) -> list[str]:
    """A table's head and rule: ``columns``, one difference column per shot, then ``count``."""
    names = [*columns, *(f"{shot[:-4]}-shot" for shot in shots), count]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def _decomposition_lines(report: dict[str, Any], name: str) -> list[str]:
    """TGR taken apart: each switch's paired difference between two methods that differ in it alone,
    beside the noise floor."""
    sc = report["scenarios"][name]
    parts = sc.get("decomposition") or []
    if not parts:
        return []
    shots = _shots(report)

    def row(switch: str, context: str, method: str, versus: str, pair: dict[str, Any]) -> str:
        differences = " | ".join(_difference(_pair_interval(pair, shot)) for shot in shots)
        label = f"{METHODS[method].label} − {METHODS[versus].label}"
        return f"| {switch} | {context} | {label} | {differences} | {len(pair['seeds'])} |"

    rows = [row(p["switch"], p["context"], p["method"], p["versus"], p) for p in parts]
    if sc.get("noise_floor"):
        rows.append(row("noise floor", "another training seed", *NOISE_FLOOR, sc["noise_floor"]))
    return [
        "TGR taken apart: each row compares two methods that differ in one switch only, paired on identical "
        "episodes (points; 95% t-interval and p-value over the seeds' mean differences, or over one seed's "
        "episodes with one seed):",
        "",
        *_differences_head(["switch", "context", "difference"], shots, "seeds"),
        *rows,
        "",
    ]


def _agreement(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _last_interval(methods: dict[str, Any]) -> dict[str, Any] | None:
    """Was training still improving when it stopped? Over every cell with a meta-val curve of two
    checks or more, the change from its second-last check to its last (in accuracy, not points): the
    mean with a t-interval over cells, each method's mean, and the mean selection noise. None: no
    cell has such a curve."""
    rises: dict[str, list[float]] = {}  # method label -> one change per cell
    noises, intervals = [], set()
    for entry in methods.values():
        for chosen in entry.get("selection", {}).values():
            curve = chosen.get("val_curve") or []
            if len(curve) >= 2:
                (before, a), (last, b) = curve[-2], curve[-1]
                rises.setdefault(entry["label"], []).append(b - a)
                intervals.add((int(before), int(last)))
                if chosen["val"].get("selection_noise") is not None:
                    noises.append(chosen["val"]["selection_noise"])
    if not rises:
        return None
    return {
        "steps": [list(steps) for steps in sorted(intervals)],
        "change": stats.t_interval([r for per_method in rises.values() for r in per_method]).to_dict(),
        "by_method": {label: float(np.mean(values)) for label, values in rises.items()},
        "selection_noise": float(np.mean(noises)) if noises else None,
    }


def _last_interval_lines(sc: dict[str, Any]) -> list[str]:
    """The reading of :func:`_last_interval`: still rising, falling, or level at the end."""
    last = sc.get("last_interval")
    if not last:
        return []
    change = last["change"]
    steps = ", ".join(f"{a} to {b}" for a, b in last["steps"])
    if change["n"] < 2 or change["low"] is None:
        verdict = "one cell: no interval"
    elif change["low"] > 0:
        verdict = "above 0: the runs were still rising on average when they stopped"
    elif change["high"] < 0:
        verdict = "below 0: the runs were past their peak on average"
    else:
        verdict = (
            "it holds 0: the runs' rise at the end, if any, is not told apart from the swings between "
            "checks, so which of the last checks meta-validation chooses is largely chance"
        )
    # a report written before the per-method means has none to show
    means = [f"{label} {_pct(mean, True)}" for label, mean in last.get("by_method", {}).items()]
    by_method = f"; mean by method: {', '.join(means)}" if means else ""
    noise = (
        f"; one check's selection noise is about {_pct(last['selection_noise'])} points"
        if last["selection_noise"]
        else ""
    )
    return [
        f"From each run's second-last meta-validation to its last (steps {steps}), meta-val accuracy moved by "
        f"{_pct(change['mean'], True)} points on average over {change['n']} cells (95% t-interval over cells "
        f"[{_pct(change['low'], True)}, {_pct(change['high'], True)}]{noise}{by_method}): {verdict}.",
        "",
    ]


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
    counts = [
        (entry["label"], entry["chose_before_last"]) for entry in sc["methods"].values() if "chose_before_last" in entry
    ]
    if counts:
        before, total = sum(c["cells"] for _, c in counts), sum(c["of"] for _, c in counts)
        lines += [
            f"Meta-validation chose a step before the last in {before} of {total} cells ("
            + ", ".join(f"{label} {c['cells']} of {c['of']}" for label, c in counts)
            + "). A run still improving when it ends keeps its last step; an earlier step in most cells "
            "is the sign that training went on past where meta-validation stops rising.",
            "",
        ]
    lines += _last_interval_lines(sc)
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


def _scenario_heading(report: dict[str, Any], name: str) -> str:
    sc, ev = report["scenarios"][name], report["eval"]
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
    asked = [int(seed) for seed in sc["seeds"]]
    finished = sorted({int(seed) for entry in sc["methods"].values() for seed in entry["seeds"]})
    seeds = ", ".join(map(str, asked))
    if finished != asked:  # a report of unfinished cells says which seeds its numbers cover
        seeds = f"{', '.join(map(str, finished)) or 'none'} finished of {seeds}"
    return f"{name}: {where}; seeds {seeds}; {ev['episodes']} episodes per seed, {ev['query']} queries per class"


def _shots(report: dict[str, Any]) -> list[str]:
    return [f"{s}shot" for s in report["eval"]["shots"]]


def _shot_columns(shots: Sequence[str], ref_label: str) -> list[str]:
    return [f"{s[:-4]}-shot accuracy | {s[:-4]}-shot − {ref_label}" for s in shots]


def _accuracy_lines(report: dict[str, Any], name: str) -> list[str]:
    """The scenario's table: each method's accuracy and its paired difference from the reference,
    then the noise floor and how to read the intervals."""
    sc, ref = report["scenarios"][name], report["reference"]
    shots = _shots(report)
    ref_label = METHODS[ref].label
    lines = [
        "| method | " + " | ".join(_shot_columns(shots, ref_label)) + " |",
        "|---|" + "---|---|" * len(shots),
    ]
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
    lines += [
        f"Accuracy: mean over all episodes of the seeds listed ± 1.96·std/√n over those episodes "
        f"(episode sampling only); '(seeds ± h)': 95% t-interval over the seed means (covers the pool, "
        f"recovery, training and episode set of each seed). − {ref_label}: the paired difference on "
        f"identical episodes, in points; "
        + (
            "95% t-interval and p-value over the seeds' mean paired differences (df = seeds − 1)."
            if len(sc["seeds"]) > 1
            else "95% paired-t interval and p-value over the episodes (df = episodes − 1)."
        ),
        "",
    ]
    return lines


def _per_seed_lines(report: dict[str, Any], name: str) -> list[str]:
    """Per method and seed: accuracy and the paired difference from the reference on that seed's episodes."""
    sc, ref = report["scenarios"][name], report["reference"]
    if len(sc["seeds"]) < 2:
        return []
    shots = _shots(report)
    ref_label = METHODS[ref].label
    lines = [
        f"Per seed: accuracy ± 1.96·std/√n over that seed's episodes, and the paired difference "
        f"− {ref_label} on them (95% paired-t interval, p-value; df = episodes − 1):",
        "",
        "| method | seed | " + " | ".join(_shot_columns(shots, ref_label)) + " |",
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
    return [*lines, ""]


def _gradient_lines(report: dict[str, Any], name: str) -> list[str]:
    """Per method: the task gradients' statistics on the seed's fixed probe at the first and the last
    measurement (``train.analysis_every``), each the mean over the seeds that recorded them."""
    rows = []
    for entry in report["scenarios"][name]["methods"].values():
        curves = entry.get("gradients") or {}
        cells = []
        for key in ("grad_P", "grad_cosine", "grad_spread"):
            per_seed = [c[key] for c in curves.values() if c.get(key)]
            if not per_seed:
                cells.append("n/a")
                continue
            first, last = np.mean([c[0][1] for c in per_seed]), np.mean([c[-1][1] for c in per_seed])
            cells.append(f"{first:.4g} → {last:.4g} (steps {per_seed[0][0][0]} → {per_seed[0][-1][0]})")
        if curves:
            rows.append(f"| {entry['label']} | {', '.join(curves)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "Task-gradient statistics on each seed's fixed probe of pseudo-tasks (`train.analysis_every`; the same "
        "tasks and head for every method of a seed), first → last measurement, mean over the seeds: P = "
        "(1/2m) Σ‖g_i − ḡ‖², the mean pairwise cosine, and the relative spread (1/m) Σ‖g_i − ḡ‖ / ‖ḡ‖ "
        "(per-step curves in results.json):",
        "",
        "| method | seeds | P | cosine | relative spread |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


#: the scenario of a generated block that pools every scenario of a report (the ``across-scenarios`` section)
ALL_SCENARIOS = "all"


def _across_scenarios_lines(report: dict[str, Any], name: str = ALL_SCENARIOS) -> list[str]:
    """Each comparison several scenarios hold, pooled over their (scenario, seed) pairs."""
    rows = report.get("across_scenarios") or []
    if not rows:
        return []
    shots = _shots(report)
    lines = [
        "Across scenarios: each comparison that two or more scenarios hold, pooled over every (scenario, seed) "
        "pair (points; 95% t-interval and p-value over the pairs' mean paired differences, df = pairs − 1). "
        "Each pair compares independently trained models, so the interval covers training noise as an "
        "interval over seeds does. Pooling assumes one effect in every scenario: read it beside each "
        "scenario's own, and correct for the number of rows read.",
        "",
        *_differences_head(["comparison", "switch"], shots, "pairs"),
    ]
    for row in rows:
        label = f"{METHODS[row['method']].label} − {METHODS[row['versus']].label}"
        switch = f"{row['switch']}, {row['context']}" if row["switch"] else "against the reference"
        differences = " | ".join(_difference(row[shot]) for shot in shots)
        lines.append(f"| {label} | {switch} | {differences} | {len(row['pairs'])} |")
    return [*lines, ""]


# what each kind of generated block holds (results.md holds REPORT_SECTIONS, per scenario; `setup` is for documents;
# `across-scenarios` pools the scenarios, in a block whose scenario is ALL_SCENARIOS)
SECTIONS: dict[str, Callable[[dict[str, Any], str], list[str]]] = {
    "accuracy": _accuracy_lines,
    "decomposition": _decomposition_lines,
    "per-seed": _per_seed_lines,
    "selection": lambda report, name: _selection_and_cost_lines(report["scenarios"][name]),
    "gradients": _gradient_lines,
    "across-scenarios": _across_scenarios_lines,
}
REPORT_SECTIONS = (
    "accuracy",
    "decomposition",
    "per-seed",
    "selection",
    "gradients",
)  # results.md's, in order; `setup` is the heading


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables (results.md)."""
    ev = report["eval"]
    lines = [
        f"# Benchmark: {ev['way']}-way meta-test accuracy (%), learner {report['learner']}, preset {report['preset']}",
        "",
    ]
    for name in report["scenarios"]:
        lines += [f"## {_scenario_heading(report, name)}", ""]
        for section in REPORT_SECTIONS:
            lines += SECTIONS[section](report, name)
    if across := _across_scenarios_lines(report):
        lines += ["## Across scenarios", "", *across]
    if report["missing_cells"]:
        lines += [f"Not finished yet ({len(report['missing_cells'])} cells): " + ", ".join(report["missing_cells"]), ""]
    return "\n".join(lines)


def write_report(spec: BenchmarkSpec, out: str | Path) -> dict[str, Any]:
    """Write results.json, results.md and results.png from the finished cells; returns the report."""
    from ..figures import plot_benchmark

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


# --- generated blocks in the project's documents ------------------------------------------------------


def _setup_lines(report: dict[str, Any], name: str) -> list[str]:
    """Where and how the numbers were made: once per document, not in its prose."""
    ev = report["eval"]
    return [
        f"Setting: {_scenario_heading(report, name)}; {ev['way']}-way, preset {report['preset']}, learner "
        f"{report['learner']}, scored on {', '.join(report.get('devices') or ['n/a'])}.",
        "",
    ]


SECTIONS["setup"] = _setup_lines
