"""Generated blocks from the project's JSON files that are not benchmark reports.

``tgr-hub docs`` (:func:`regenerate_blocks`) refills every generated block
of a markdown document from the JSON its opening comment names. A benchmark report's sections are
:data:`tgr_hub.benchmark.report.SECTIONS`; this module holds the others, :data:`DOCUMENT_SECTIONS`,
one per kind of JSON file the project keeps in ``docs/``:

``val-curve`` and ``val-sweep``
    what ``bench/bench_val_sweep.py`` writes (``{"settings", "rows"}``, a row per variant and seed).
    ``val-curve``: the meta-validation curve of each seed, the variants' curves joined by step (a
    variant that only trains longer continues the same run, so where two curves overlap they must
    agree). ``val-sweep``: the accuracy meta-validation chose, per method, variant and seed, with
    the settings each variant changes (its overrides; a setting it leaves alone is the ``quick``
    preset's default, marked so). The block's scenario is the sweep's (``settings.scenario``).
``task-conflict``
    what ``bench/bench_task_conflict.py`` writes: the task gradients' relative spread per task loss.
``analysis-gain`` and ``analysis-gradients``
    what ``tgr-hub analyze gain`` and ``tgr-hub analyze gradients`` write
    (:class:`tgr_hub.analyze.GainResult`, :class:`tgr_hub.analyze.GradientsResult`).

``task-conflict``, ``analysis-gain`` and ``analysis-gradients`` take the scenario ``all``. Every section
here reads one file or several (``SOURCE`` a comma-separated list), in the order given.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark.grid import METHODS, RESULTS_FORMAT
from .benchmark.report import ALL_SCENARIOS, SECTIONS, _pct
from .errors import BenchmarkError

#: a JSON file a block names: (the name the block gives it, its content)
Source = tuple[str, dict[str, Any]]

#: column heads of the settings a sweep's variants change (any other setting is shown by its key)
SETTING_LABELS = {"train.igr_loss": "task loss", "train.distill_weight": "distillation weight"}

#: the benchmark method each of ``tgr-hub analyze gradients``' methods is (for its label)
GRADIENT_METHOD_NAMES = {"erm": "erm", "tgr": "tgr", "igr": "igr-no-groups", "groups": "groups-no-igr"}


def _has(data: dict[str, Any], keys: Sequence[str], settings: Sequence[str] = (), rows: Sequence[str] = ()) -> bool:
    """Whether ``data`` has the top-level ``keys``, the ``settings`` keys and rows (a list) with the ``rows`` keys."""
    if not all(key in data for key in keys):
        return False
    if settings and not (isinstance(data.get("settings"), dict) and all(k in data["settings"] for k in settings)):
        return False
    found = data.get("rows")
    return not rows or (
        isinstance(found, list) and all(isinstance(r, dict) and all(k in r for k in rows) for r in found)
    )


def _defaults() -> dict[str, Any]:
    """The ``quick`` preset's settings by ``section.key``, in the config's order (what a variant without
    overrides ran with)."""
    from .config import load_config

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return out

    return flat(load_config().to_dict())


# --- bench/bench_val_sweep.py ----------------------------------------------------------------------------


def _val_curve_lines(sources: list[Source]) -> list[str]:
    """One row per seed: meta-val accuracy (%) at every step any variant measured, the curves joined."""
    curves: dict[int, dict[int, float]] = {}
    for name, data in sources:
        for row in data["rows"]:
            curve = curves.setdefault(int(row["seed"]), {})
            for step, accuracy in row["val_curve"]:
                if int(step) in curve and not math.isclose(curve[int(step)], accuracy, abs_tol=1e-9):
                    raise BenchmarkError(
                        f"{name}: seed {row['seed']}'s curves disagree at step {step}, so its variants are not "
                        "one run continued",
                        hint="a val-curve block joins variants that differ only in length; use val-sweep for others",
                    )
                curve[int(step)] = accuracy
    steps = sorted({step for curve in curves.values() for step in curve})
    lines = ["| step | " + " | ".join(map(str, steps)) + " |", "|" + "---|" * (len(steps) + 1)]
    for seed, curve in sorted(curves.items()):
        label = "meta-val (%)" if len(curves) == 1 else f"meta-val (%), seed {seed}"
        lines.append(f"| {label} | " + " | ".join(_pct(curve.get(step)) for step in steps) + " |")
    return lines


def _variant_names(data: dict[str, Any]) -> list[str]:
    """A sweep's variants: those its settings list (``NAME=OVERRIDES``), in order, then any other its rows hold."""
    listed = [text.partition("=")[0] for text in data["settings"]["variant"]]
    return list(dict.fromkeys([*listed, *(row["variant"] for row in data["rows"])]))


def _setting_value(value: Any) -> str:
    """A setting as a table shows it: numbers plain (``1``, ``0``), anything else as code."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return f"`{value}`"


def _val_sweep_lines(sources: list[Source]) -> list[str]:
    """Per method and variant: the settings it changes, the accuracy meta-validation chose per seed, and their mean."""
    accuracy: dict[tuple[str, str], dict[int, float]] = {}
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for name, data in sources:
        method = data["settings"]["method"]
        for variant in _variant_names(data):
            for row in (r for r in data["rows"] if r["variant"] == variant):
                key, seed = (method, variant), int(row["seed"])
                changed = dict(text.split("=", 1) for text in row["overrides"])
                if overrides.setdefault(key, changed) != changed:
                    raise BenchmarkError(f"{name}: {method}'s variant {variant!r} names two sets of overrides")
                if seed in accuracy.setdefault(key, {}):
                    raise BenchmarkError(
                        f"{name}: {method}'s variant {variant!r} has seed {seed} twice",
                        hint="name each sweep file once, and each seed in one of them",
                    )
                accuracy[key][seed] = row["accuracy"]
    defaults = _defaults()
    rank = {key: i for i, key in enumerate(defaults)}  # the settings in the config's order
    keys = sorted({k for changed in overrides.values() for k in changed}, key=lambda k: (rank.get(k, len(rank)), k))
    seeds = sorted({seed for per_seed in accuracy.values() for seed in per_seed})
    head = ["method", *(SETTING_LABELS.get(k, f"`{k}`") for k in keys), *(f"seed {s}" for s in seeds), "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, variant), per_seed in accuracy.items():
        settings = []
        for k in keys:
            if k in overrides[(method, variant)]:
                settings.append(_setting_value(overrides[(method, variant)][k]))
            else:
                settings.append(f"{_setting_value(defaults.get(k, 'n/a'))} (default)")
        values = [_pct(per_seed.get(s)) for s in seeds]
        mean = _pct(float(np.mean(list(per_seed.values())))) if len(per_seed) == len(seeds) else "n/a"
        label = METHODS[method].label if method in METHODS else method
        lines.append("| " + " | ".join([label, *settings, *values, mean]) + " |")
    return lines


# --- bench/bench_task_conflict.py ------------------------------------------------------------------------


def _task_conflict_lines(sources: list[Source]) -> list[str]:
    """Per task loss: the mean ± std over draws of each draw's spread (tasks of m teachers, of one), and their ratio."""
    rows = [row for _, data in sources for row in data["rows"]]
    columns = [key for key, value in rows[0].items() if isinstance(value, dict)] if rows else []
    head = ["task loss", *columns, "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        spreads = [f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}" if c in row else "n/a" for c in columns]
        lines.append("| " + " | ".join([row["loss"], *spreads, f"{row['ratio']:.2f}"]) + " |")
    return lines


# --- tgr-hub analyze gain and gradients -------------------------------------------------------------------

_LADDER_PAIR = re.compile(r"^(?:arch-(?P<a>.+)-vs-(?P<b>.+)|(?P<name>.+))-r(?P<repeat>\d+)-a$")


def _pair_label(row: dict[str, Any]) -> str:
    """A ladder pair as its basic teacher's name says: ``ov2of5``, ``conv4 + resnet10t`` (and its repeat, past
    the first)."""
    match = _LADDER_PAIR.match(row["basic"])
    if match is None:
        return f"{row['basic']} + {row['aux']}"
    label = f"{match['a']} + {match['b']}" if match["a"] else match["name"]
    return label if match["repeat"] == "0" else f"{label}, repeat {match['repeat']}"


def _ladder_way(rows: Sequence[dict[str, Any]]) -> int | None:
    """The ladder's way: shared classes over the overlap fraction, on any row that shares classes."""
    ways = {round(row["shared"] / row["overlap"]) for row in rows if row["overlap"]}
    return ways.pop() if len(ways) == 1 else None


def _gain_lines(sources: list[Source]) -> list[str]:
    """Per ladder pair and seed: the first shot's accuracy of the basic teacher's model alone and with the
    auxiliary, their paired difference (AG) with its 95% interval over the episodes, and AG at the other shots."""
    shots = [f"{shot}shot" for shot in sources[0][1]["shots"]]
    first, rest = shots[0][:-4], [shot[:-4] for shot in shots[1:]]
    head = [
        "pair",
        "shared classes",
        "seed",
        f"{first}-shot, basic alone",
        "with the auxiliary",
        f"AG {first}-shot (95% CI over episodes)",
        *(f"AG {shot}-shot" for shot in rest),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, data in sources:
        way = _ladder_way(data["rows"])
        for row in data["rows"]:
            shown, gain = row[shots[0]], row[shots[0]]["difference"]
            cells = [
                _pair_label(row),
                f"{row['shared']} of {way}" if way else str(row["shared"]),
                str(row["seed"]),
                _pct(shown["basic"]),
                _pct(shown["joint"]),
                f"{_pct(gain['mean'], True)} [{_pct(gain['low'], True)}, {_pct(gain['high'], True)}]",
                *(_pct(row[shot]["difference"]["mean"], True) if shot in row else "n/a" for shot in shots[1:]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _first_to_last(values: Sequence[float | None], spec: str) -> str:
    def one(value: float | None) -> str:
        return "n/a" if value is None else format(value, spec)

    return f"{one(values[0])} → {one(values[-1])}"


def _gradients_lines(sources: list[Source]) -> list[str]:
    """Per trained run (method and β): P and the cosine of the task gradients at the first and the last
    measurement, and its meta-val accuracy at the last."""
    traces = [trace for _, data in sources for trace in data["methods"].values()]
    ends = {(trace["steps"][0], trace["steps"][-1]) for trace in traces if trace["steps"]}
    if len(ends) != 1:
        raise BenchmarkError(
            f"the runs of an analysis-gradients block were measured at different steps: {sorted(ends)}",
            hint="compare runs of the same --set train.iterations and --every in one block",
        )
    first, last = ends.pop()
    default_beta = _defaults()["train.beta"]
    lines = [
        f"| run | P at step {first} → {last} | cosine at {first} → {last} | meta-val at {last} |",
        "|---|---|---|---|",
    ]
    for trace in traces:
        method = GRADIENT_METHOD_NAMES.get(trace["method"], trace["method"])
        label = METHODS[method].label if method in METHODS else method
        beta = f"β = {trace['beta']:g}" + (", the default" if trace["beta"] == default_beta else "")
        val = dict((int(step), accuracy) for step, accuracy in trace["val_acc"]).get(last)
        cells = [
            f"{label} ({beta})",
            _first_to_last(trace["P"], ".2f"),
            _first_to_last(trace["cosine"], ".3f"),
            "n/a" if val is None else f"{100 * val:.1f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- the sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentSection:
    """A generated block's section that renders JSON files of one kind (not a benchmark report).

    Attributes:
        kind: what the files are, for messages.
        writer: what writes them, for hints.
        is_kind: whether a file's content is of this kind.
        render: the block's lines from the files, in the order the block names them.
        per_scenario: the block's scenario is the files' ``settings.scenario`` (else ``all``).
    """

    kind: str
    writer: str
    is_kind: Callable[[dict[str, Any]], bool]
    render: Callable[[list[Source]], list[str]]
    per_scenario: bool = False


def _is_sweep(data: dict[str, Any]) -> bool:
    return _has(
        data,
        ["settings", "rows"],
        ["method", "scenario", "variant"],
        ["variant", "overrides", "seed", "val_curve", "accuracy"],
    )


_SWEEP = ("a meta-validation sweep", "bench/bench_val_sweep.py --json", _is_sweep)

#: the sections of :func:`tgr_hub.benchmark.report.regenerate_blocks` that do not read a benchmark report
DOCUMENT_SECTIONS: dict[str, DocumentSection] = {
    "val-curve": DocumentSection(*_SWEEP, _val_curve_lines, per_scenario=True),
    "val-sweep": DocumentSection(*_SWEEP, _val_sweep_lines, per_scenario=True),
    "task-conflict": DocumentSection(
        "a task-conflict measurement",
        "bench/bench_task_conflict.py --json",
        lambda data: _has(data, ["settings", "rows"], ["trials"], ["loss", "ratio"]),
        _task_conflict_lines,
    ),
    "analysis-gain": DocumentSection(
        "an accuracy-gain analysis",
        "tgr-hub analyze gain (gain.json)",
        lambda data: _has(data, ["rows", "by_overlap", "architecture", "shots"], rows=["basic", "aux", "seed"]),
        _gain_lines,
    ),
    "analysis-gradients": DocumentSection(
        "a gradient-dynamics analysis",
        "tgr-hub analyze gradients (gradients.json)",
        lambda data: _has(data, ["methods", "probe", "every", "iterations"]),
        _gradients_lines,
    ),
}


def render_document_block(section: str, sources: list[Source], scenario: str) -> list[str]:
    """The lines of a generated block of ``section`` (one of :data:`DOCUMENT_SECTIONS`) from ``sources``.

    Raises:
        BenchmarkError: a file is not of the section's kind, or the block names a scenario the files
            were not made in (``all`` where the section is not per scenario).
    """
    spec = DOCUMENT_SECTIONS[section]
    for name, data in sources:
        if not (isinstance(data, dict) and spec.is_kind(data)):
            raise BenchmarkError(
                f"{name} is not {spec.kind}, which a generated block of section {section!r} reads",
                hint=f"name a JSON file that {spec.writer} wrote",
            )
        if spec.per_scenario and data["settings"]["scenario"] != scenario:
            raise BenchmarkError(
                f"{name} was made on scenario {data['settings']['scenario']!r}, its generated block names {scenario!r}",
                hint="a block of this section names the scenario its files were made on",
            )
    if not spec.per_scenario and scenario != ALL_SCENARIOS:
        raise BenchmarkError(
            f"a generated block of section {section!r} names scenario {scenario!r}",
            hint=f"the section {section!r} takes the scenario {ALL_SCENARIOS!r}",
        )
    return spec.render(sources)


# --- filling the blocks of a document ---------------------------------------------------------------

_BLOCK = re.compile(
    r"(?P<open><!-- tgr-hub docs: (?P<source>\S+) (?P<section>[\w-]+) (?P<scenario>[\w-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- end tgr-hub docs -->)",
    re.S,
)


def regenerate_blocks(text: str, base: Path) -> str:
    """``text`` (markdown) with every generated block refilled from the JSON files it names.

    A block is two HTML comments, invisible when rendered::

        <!-- tgr-hub docs: SOURCE SECTION SCENARIO -->
        ... (replaced) ...
        <!-- end tgr-hub docs -->

    ``SOURCE`` is a JSON file relative to ``base`` (the document's folder), or several joined by commas
    (no spaces) for a section that combines files. ``SECTION`` picks the renderer, and the kind of file
    it reads:

    - one of :data:`tgr_hub.benchmark.report.SECTIONS`: a ``results.json`` that ``tgr-hub benchmark``
      wrote (one file), rendered exactly as results.md renders it (``setup``, ``accuracy``,
      ``decomposition``, ``per-seed``, ``selection``, ``gradients`` for one of its scenarios;
      ``across-scenarios`` with the scenario ``all``);
    - one of :data:`DOCUMENT_SECTIONS`: ``val-curve`` and ``val-sweep`` (sweeps that
      ``bench/bench_val_sweep.py`` wrote; the scenario is the sweep's), ``task-conflict``
      (``bench/bench_task_conflict.py``), ``analysis-gain`` and ``analysis-gradients`` (``tgr-hub analyze
      gain`` / ``gradients``); these three take the scenario ``all``.

    Raises:
        BenchmarkError: a block names a file that is missing or not JSON, or not of the kind its section
            reads, an unknown section, or a scenario the file lacks.
    """
    files: dict[Path, Any] = {}

    def read(name: str) -> Any:
        path = (base / name).resolve()
        if path not in files:
            if not path.is_file():
                raise BenchmarkError(
                    f"generated block names {name}, which does not exist (looked for {path})",
                    hint="run the benchmark, sweep or analysis that writes it, or fix the path",
                )
            try:
                files[path] = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise BenchmarkError(f"{path} is not JSON ({error})") from None
        return files[path]

    def fill(match: re.Match[str]) -> str:
        names, section, scenario = match["source"].split(","), match["section"], match["scenario"]
        if section in SECTIONS:
            if len(names) != 1:
                raise BenchmarkError(
                    f"a generated block of section {section!r} names {len(names)} files",
                    hint="a benchmark report's section reads one results.json",
                )
            lines = _report_block(read(names[0]), names[0], section, scenario)
        elif section in DOCUMENT_SECTIONS:
            lines = render_document_block(section, [(name, read(name)) for name in names], scenario)
        else:
            raise BenchmarkError(
                f"unknown section {section!r} in a generated block",
                hint=f"one of {sorted([*SECTIONS, *DOCUMENT_SECTIONS])}",
            )
        body = "\n".join(lines).strip("\n")
        return f"{match['open']}{body}\n{match['close']}"

    return _BLOCK.sub(fill, text)


def _report_block(report: Any, name: str, section: str, scenario: str) -> list[str]:
    """A benchmark report's ``section`` for ``scenario``, as results.md renders it."""
    if not isinstance(report, dict) or report.get("format") != RESULTS_FORMAT:
        raise BenchmarkError(
            f"{name} is not a tgr-hub benchmark report (format {RESULTS_FORMAT!r}), which section {section!r} reads",
            hint="name the results.json that tgr-hub benchmark wrote",
        )
    if (section == "across-scenarios") != (scenario == ALL_SCENARIOS):
        raise BenchmarkError(
            f"a generated block of section {section!r} names scenario {scenario!r}",
            hint=f"the across-scenarios section, and only it, takes the scenario {ALL_SCENARIOS!r}",
        )
    if scenario != ALL_SCENARIOS and scenario not in report["scenarios"]:
        raise BenchmarkError(f"{name} has no scenario {scenario!r}", hint=f"it has {sorted(report['scenarios'])}")
    return SECTIONS[section](report, scenario)
