"""`tgr-hub docs` blocks that read sweeps, task-conflict measurements and analyses (tgr_hub.docs_blocks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tgr_hub.docs_blocks import regenerate_blocks
from tgr_hub.errors import BenchmarkError


def _write(folder: Path, name: str, data: dict[str, Any]) -> str:
    (folder / name).write_text(json.dumps(data))
    return name


def _block(folder: Path, source: str, section: str, scenario: str) -> str:
    """The body ``tgr-hub docs`` writes into a block naming ``source``, ``section`` and ``scenario``."""
    opening = f"<!-- tgr-hub docs: {source} {section} {scenario} -->\n"
    text = regenerate_blocks(f"Prose.\n\n{opening}stale\n<!-- end tgr-hub docs -->\n\nMore prose.\n", folder)
    assert text.startswith(f"Prose.\n\n{opening}") and text.endswith("\n<!-- end tgr-hub docs -->\n\nMore prose.\n")
    return text[len(f"Prose.\n\n{opening}") : -len("\n<!-- end tgr-hub docs -->\n\nMore prose.\n")]


def _sweep_row(variant: str, seed: int, accuracy: float, curve: list[list[float]], overrides=()) -> dict[str, Any]:
    return {
        "variant": variant,
        "overrides": list(overrides),
        "seed": seed,
        "run_folder": f"runs/x/{variant}",
        "trained_now": True,
        "val_curve": curve,
        "best_step": 0,
        "accuracy": accuracy,
        "1shot": accuracy,
        "5shot": accuracy,
        "selection_noise": 0.004,
    }


def _sweep(method: str, variants: list[str], rows: list[dict[str, Any]], scenario: str = "standard") -> dict:
    settings = {"bench": "runs/b", "scenario": scenario, "method": method, "seeds": "0", "variant": variants}
    return {"settings": settings, "rows": rows}


TASK_CONFLICT = {
    "settings": {"pool": "p/repo-list.txt", "m": 4, "trials": 10},
    "rows": [
        {"loss": "head, CE only", "4 teachers": {"mean": 1.51557, "std": 0.07473},
         "1 teacher": {"mean": 0.46288, "std": 0.03785}, "ratio": 3.27420},
        {"loss": "episodic, CE only", "4 teachers": {"mean": 1.65381, "std": 0.09112},
         "1 teacher": {"mean": 1.51910, "std": 0.09219}, "ratio": 1.08868},
    ],
}


def test_val_curve_joins_the_variants_curves_of_one_run_by_step(tmp_path: Path) -> None:
    short = [[0, 0.51747], [100, 0.66943], [200, 0.64583]]
    long = [*short, [300, 0.61237], [400, 0.682467]]
    rows = [_sweep_row("long", 3, 0.68, short, ["train.iterations=200"]),
            _sweep_row("longer", 3, 0.68, long, ["train.iterations=400"])]
    source = _write(tmp_path, "sweep.json", _sweep("erm", ["long=train.iterations=200"], rows, "multi-domain"))
    assert _block(tmp_path, source, "val-curve", "multi-domain") == (
        "| step | 0 | 100 | 200 | 300 | 400 |\n"
        "|---|---|---|---|---|---|\n"
        "| meta-val (%) | 51.75 | 66.94 | 64.58 | 61.24 | 68.25 |"
    )
    # two files chain as well; several seeds get a row each
    other = _write(tmp_path, "seed-4.json", _sweep("erm", [], [_sweep_row("long", 4, 0.7, [[0, 0.5], [500, 0.7]])],
                                                   "multi-domain"))
    body = _block(tmp_path, f"{source},{other}", "val-curve", "multi-domain")
    assert "| step | 0 | 100 | 200 | 300 | 400 | 500 |" in body
    assert "| meta-val (%), seed 3 | 51.75 | 66.94 | 64.58 | 61.24 | 68.25 | n/a |" in body
    assert "| meta-val (%), seed 4 | 50.00 | n/a | n/a | n/a | n/a | 70.00 |" in body
    # curves that disagree where they overlap are not one run continued
    rows[1]["val_curve"][1] = [100, 0.6]
    _write(tmp_path, "sweep.json", _sweep("erm", [], rows, "multi-domain"))
    with pytest.raises(BenchmarkError, match="disagree at step 100"):
        _block(tmp_path, source, "val-curve", "multi-domain")


def test_val_sweep_shows_each_variants_settings_and_chosen_accuracy_per_seed(tmp_path: Path) -> None:
    tgr = _sweep(
        "tgr",
        ["head-ce=", "head-kd1=train.distill_weight=1", "episodic-ce=train.igr_loss=episodic"],
        [
            _sweep_row("head-ce", 0, 0.574867, []),
            _sweep_row("episodic-ce", 0, 0.655433, [], ["train.igr_loss=episodic"]),
            _sweep_row("head-kd1", 0, 0.506033, [], ["train.distill_weight=1"]),
            _sweep_row("head-ce", 1, 0.597067, []),
            _sweep_row("episodic-ce", 1, 0.630967, [], ["train.igr_loss=episodic"]),
            _sweep_row("head-kd1", 1, 0.601767, [], ["train.distill_weight=1"]),
        ],
    )
    erm = [_sweep("erm", ["head-ce=", "episodic-ce=train.igr_loss=episodic"],
                  [_sweep_row("head-ce", seed, accuracy, []),
                   _sweep_row("episodic-ce", seed, 0.7, [], ["train.igr_loss=episodic"])])
           for seed, accuracy in ((0, 0.608733), (1, 0.561867))]
    names = [_write(tmp_path, "tgr.json", tgr), _write(tmp_path, "erm-0.json", erm[0]),
             _write(tmp_path, "erm-1.json", erm[1])]
    assert _block(tmp_path, ",".join(names), "val-sweep", "standard") == (
        "| method | task loss | distillation weight | seed 0 | seed 1 | mean |\n"
        "|---|---|---|---|---|---|\n"
        "| TGR | `head` (default) | 0 (default) | 57.49 | 59.71 | 58.60 |\n"
        "| TGR | `head` (default) | 1 | 50.60 | 60.18 | 55.39 |\n"
        "| TGR | `episodic` | 0 (default) | 65.54 | 63.10 | 64.32 |\n"
        "| ERM | `head` (default) | 0 (default) | 60.87 | 56.19 | 58.53 |\n"
        "| ERM | `episodic` | 0 (default) | 70.00 | 70.00 | 70.00 |"
    )
    # a seed missing from a variant: no mean over fewer seeds than the others have
    assert "| ERM | `head` (default) | 0 (default) | 60.87 | n/a | n/a |" in _block(
        tmp_path, f"{names[0]},{names[1]}", "val-sweep", "standard"
    )
    # the same seed in two files, and a block naming another scenario than the sweep's
    with pytest.raises(BenchmarkError, match="seed 0 twice"):
        _block(tmp_path, f"{names[1]},{names[1]}", "val-sweep", "standard")
    with pytest.raises(BenchmarkError, match="made on scenario 'standard'"):
        _block(tmp_path, names[0], "val-sweep", "multi-domain")


def test_task_conflict_shows_the_spreads_and_their_ratio(tmp_path: Path) -> None:
    source = _write(tmp_path, "init.json", TASK_CONFLICT)
    assert _block(tmp_path, source, "task-conflict", "all") == (
        "| task loss | 4 teachers | 1 teacher | ratio |\n"
        "|---|---|---|---|\n"
        "| head, CE only | 1.516 ± 0.075 | 0.463 ± 0.038 | 3.27 |\n"
        "| episodic, CE only | 1.654 ± 0.091 | 1.519 ± 0.092 | 1.09 |"
    )
    with pytest.raises(BenchmarkError, match="takes the scenario 'all'"):
        _block(tmp_path, source, "task-conflict", "standard")


def _gain_row(kind: str, shared: int, basic: str, seed: int, one: tuple[float, float, float, float, float], five: float):
    alone, joint, mean, low, high = one
    return {
        "kind": kind, "shared": shared, "overlap": shared / 5, "basic": basic, "aux": basic[:-1] + "b", "seed": seed,
        "1shot": {"basic": alone, "joint": joint, "difference": {"mean": mean, "low": low, "high": high, "p": 0.001}},
        "5shot": {"basic": 0.8, "joint": 0.8 + five, "difference": {"mean": five, "low": five, "high": five}},
    }


def test_analysis_gain_shows_each_pairs_accuracies_and_gain(tmp_path: Path) -> None:
    gain = {
        "rows": [
            _gain_row("overlap", 0, "ov0of5-r0-a", 0, (0.659733, 0.540222, -0.119511, -0.130166, -0.108856), -0.108178),
            _gain_row("overlap", 2, "ov2of5-r1-a", 1, (0.582311, 0.65, 0.067689, 0.057904, 0.077474), 0.0748),
            _gain_row("architecture", 5, "arch-conv4-vs-resnet10t-r0-a", 0, (0.6492, 0.627111, -0.022089, -0.031661,
                                                                             -0.012517), -0.016622),
        ],
        "by_overlap": {}, "architecture": {}, "method": "erm", "shots": [1, 5], "seconds": {},
    }
    source = _write(tmp_path, "gain.json", gain)
    assert _block(tmp_path, source, "analysis-gain", "all") == (
        "| pair | shared classes | seed | 1-shot, basic alone | with the auxiliary | AG 1-shot (95% CI over episodes) "
        "| AG 5-shot |\n"
        "|---|---|---|---|---|---|---|\n"
        "| ov0of5 | 0 of 5 | 0 | 65.97 | 54.02 | -11.95 [-13.02, -10.89] | -10.82 |\n"
        "| ov2of5, repeat 1 | 2 of 5 | 1 | 58.23 | 65.00 | +6.77 [+5.79, +7.75] | +7.48 |\n"
        "| conv4 + resnet10t | 5 of 5 | 0 | 64.92 | 62.71 | -2.21 [-3.17, -1.25] | -1.66 |"
    )


def _trace(method: str, beta: float, p_last: float, cosine_last: float, val_last: float) -> dict[str, Any]:
    return {
        "method": method, "beta": beta, "groups": [], "steps": [0, 75, 150], "P": [13.114, 5.0, p_last],
        "cosine": [0.341075, 0.3, cosine_last], "val_acc": [[0, 0.5], [150, val_last]], "seconds": 1.0,
    }


def test_analysis_gradients_shows_each_run_from_first_to_last_measurement(tmp_path: Path) -> None:
    def result(*traces: dict[str, Any]) -> dict[str, Any]:
        return {"methods": {t["method"]: t for t in traces}, "probe": {}, "every": 75, "iterations": 150}

    reference = _write(tmp_path, "gradients.json", result(_trace("erm", 0.0, 2.446323, 0.289902, 0.6866),
                                                          _trace("tgr", 0.001, 2.547265, 0.282423, 0.670233)))
    strong = _write(tmp_path, "beta.json", result(_trace("tgr", 0.03, 1.516078, 0.327645, 0.696767)))
    assert _block(tmp_path, f"{reference},{strong}", "analysis-gradients", "all") == (
        "| run | P at step 0 → 150 | cosine at 0 → 150 | meta-val at 150 |\n"
        "|---|---|---|---|\n"
        "| ERM (β = 0) | 13.11 → 2.45 | 0.341 → 0.290 | 68.7% |\n"
        "| TGR (β = 0.001, the default) | 13.11 → 2.55 | 0.341 → 0.282 | 67.0% |\n"
        "| TGR (β = 0.03) | 13.11 → 1.52 | 0.341 → 0.328 | 69.7% |"
    )
    shorter = result(_trace("igr", 0.001, 1.0, 0.3, 0.6))
    shorter["methods"]["igr"]["steps"] = [0, 100]
    _write(tmp_path, "shorter.json", shorter)
    with pytest.raises(BenchmarkError, match="measured at different steps"):
        _block(tmp_path, f"{reference},shorter.json", "analysis-gradients", "all")


@pytest.mark.parametrize(
    ("section", "scenario"),
    [("val-curve", "standard"), ("val-sweep", "standard"), ("task-conflict", "all"), ("analysis-gain", "all"),
     ("analysis-gradients", "all")],
)
def test_a_file_of_another_kind_is_refused_with_what_writes_the_right_one(tmp_path: Path, section, scenario) -> None:
    wrong = {
        "val-curve": TASK_CONFLICT,
        "val-sweep": {"format": "tgr-hub-benchmark", "scenarios": {}},
        "task-conflict": _sweep("tgr", [], []),
        "analysis-gain": TASK_CONFLICT,
        "analysis-gradients": {"rows": [], "by_overlap": {}, "architecture": {}, "shots": [1]},
    }[section]
    source = _write(tmp_path, "wrong.json", wrong)
    with pytest.raises(BenchmarkError, match=f"wrong.json is not .*section '{section}'") as error:
        _block(tmp_path, source, section, scenario)
    assert "wrote" in str(error.value)  # the hint names the command that writes the right kind


def test_a_benchmark_section_refuses_other_files_and_several_files(tmp_path: Path) -> None:
    source = _write(tmp_path, "init.json", TASK_CONFLICT)
    with pytest.raises(BenchmarkError, match="not a tgr-hub benchmark report"):
        _block(tmp_path, source, "accuracy", "standard")
    with pytest.raises(BenchmarkError, match="names 2 files"):
        _block(tmp_path, f"{source},{source}", "accuracy", "standard")
    with pytest.raises(BenchmarkError, match="unknown section 'nonsense'.*val-sweep"):
        _block(tmp_path, source, "nonsense", "all")
