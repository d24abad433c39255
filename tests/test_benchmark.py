"""`tgr-hub benchmark`: paired statistics, identical episodes, resume, shards, and the quickstart on top."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tgr_hub import benchmark as bm
from tgr_hub import stats
from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.docs_blocks import regenerate_blocks
from tgr_hub.errors import BenchmarkError, ConfigError, DatasetError
from tgr_hub.evaluate import evaluate_model, random_baseline
from tgr_hub.run_record import RunRecord

# --- statistics against hand computations ------------------------------------------------------------


def test_paired_difference_matches_a_hand_computation_with_two_degrees_of_freedom() -> None:
    # d = (0.2, 0.1, 0.3): mean 0.2, sd (ddof 1) 0.1, se 0.1/sqrt(3), t = 2 sqrt(3)
    d = stats.paired_difference([0.8, 0.6, 0.9], [0.6, 0.5, 0.6])
    se = 0.1 / math.sqrt(3)
    t = 0.2 / se
    # Student t with 2 df in closed form: quantile (2q-1)/sqrt(2q(1-q)), two-sided p = 1 - t/sqrt(2+t^2)
    q = 0.975
    t_crit = (2 * q - 1) / math.sqrt(2 * q * (1 - q))
    assert t_crit == pytest.approx(4.302653, abs=1e-6)  # the printed table value
    assert d.n == 3 and d.mean == pytest.approx(0.2) and d.sd == pytest.approx(0.1)
    assert d.t == pytest.approx(t)
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert d.half == pytest.approx(t_crit * se)
    assert (d.low, d.high) == (pytest.approx(0.2 - t_crit * se), pytest.approx(0.2 + t_crit * se))


def test_paired_difference_with_one_degree_of_freedom_and_the_sign_convention() -> None:
    # method - reference = (-0.1, -0.3): mean -0.2, sd sqrt(0.02), se 0.1, t = -2; Cauchy: p = 1 - (2/pi) atan(2)
    d = stats.paired_difference([0.5, 0.4], [0.6, 0.7])
    assert d.mean == pytest.approx(-0.2) and d.t == pytest.approx(-2.0)
    assert d.p == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    assert d.half == pytest.approx(math.tan(math.pi * (0.975 - 0.5)) * 0.1)


def test_degenerate_and_bad_inputs() -> None:
    same = stats.paired_difference([0.75, 0.5, 1.0], [0.5, 0.25, 0.75])  # every difference is exactly 0.25
    assert same.mean == 0.25 and same.half == 0.0 and same.p == 0.0 and same.t == math.inf
    tie = stats.paired_difference([0.6, 0.7], [0.6, 0.7])
    assert tie.mean == 0.0 and tie.p == 1.0
    single = stats.across_seeds([0.03])
    assert single.mean == 0.03 and math.isnan(single.half) and single.to_dict()["p"] is None
    with pytest.raises(stats.StatsError, match="same episodes"):
        stats.paired_difference([0.5, 0.6, 0.7], [0.5, 0.6])
    with pytest.raises(stats.StatsError):
        stats.t_interval([])


def test_episode_interval_is_the_literature_convention() -> None:
    mean, half = stats.episode_interval([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert half == pytest.approx(1.96 * math.sqrt(0.08 / 3) / math.sqrt(3))  # population std


def _fake_cell(out: Path, scenario: str, seed: int, method: str, accuracies: list[float], digest: str,
               seen: str = "same", **extra) -> None:
    path = out / "cells" / scenario / f"seed-{seed}" / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "format": bm.CELL_FORMAT, "scenario": scenario, "seed": seed, "method": method, "settings_digest": digest,
        "accuracies": {"1shot": accuracies},
        "episodes": {"1shot": {"count": len(accuracies), "list": f"list-{seed}", "seen": f"{seen}-{seed}"}},
        "timings_s": {"train": 1.0, "evaluate": 1.0},
        **extra,
    }))


def test_the_report_pools_each_comparison_over_every_scenario_and_seed_that_holds_it(tmp_path: Path) -> None:
    from scipy import stats as sps

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenarios = (bm.Scenario("multi-domain", ("latin",), ("conv4",)), bm.Scenario("multi-arch", ("latin",), ("conv4",)))
    methods = ("erm", "erm-replicate", "tgr", "igr-no-groups")
    spec = bm.BenchmarkSpec(cfg, scenarios, (0, 1), methods)
    rng = np.random.default_rng(0)
    accuracies = {}
    for scenario in scenarios:
        digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
        for seed in (0, 1):
            for method in methods:
                if (scenario.name, seed, method) == ("multi-arch", 1, "igr-no-groups"):
                    continue  # a missing cell: that pair is left out of its comparisons
                values = [float(a) for a in rng.uniform(0.3, 0.9, size=4)]
                accuracies[(scenario.name, seed, method)] = values
                _fake_cell(tmp_path, scenario.name, seed, method, values, digest)
    report = bm.summarize(spec, tmp_path)
    rows = {(r["method"], r["versus"]): r for r in report["across_scenarios"]}
    # every comparison once: the reference's (with the noise floor and the one-switch pair tgr − igr-no-groups)
    assert set(rows) == {("erm-replicate", "erm"), ("tgr", "erm"), ("igr-no-groups", "erm"), ("tgr", "igr-no-groups")}
    assert (rows[("erm-replicate", "erm")]["switch"], rows[("tgr", "erm")]["switch"]) == ("noise floor", None)
    assert rows[("tgr", "igr-no-groups")]["switch"] == "spectral grouping"

    def by_hand(method: str, versus: str) -> tuple[list, float, float, float]:
        pairs = [(sc, seed) for sc in ("multi-domain", "multi-arch") for seed in (0, 1)
                 if (sc, seed, method) in accuracies and (sc, seed, versus) in accuracies]
        d = np.array([np.mean(accuracies[(*p, method)]) - np.mean(accuracies[(*p, versus)]) for p in pairs])
        half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return [list(p) for p in pairs], d.mean(), half, sps.ttest_1samp(d, 0).pvalue

    for (method, versus), row in rows.items():
        pairs, mean, half, p = by_hand(method, versus)
        assert row["pairs"] == pairs
        assert row["1shot"]["mean"] == pytest.approx(mean) and row["1shot"]["half"] == pytest.approx(half)
        assert row["1shot"]["p"] == pytest.approx(p)
    assert len(rows[("igr-no-groups", "erm")]["pairs"]) == 3  # the missing cell's pair is left out
    markdown = bm.render_markdown(report)
    assert "## Across scenarios" in markdown and "| TGR − IGR, no groups | spectral grouping, with IGR |" in markdown
    # one scenario: nothing to pool
    single = bm.summarize(dataclasses.replace(spec, scenarios=scenarios[:1]), tmp_path)
    assert single["across_scenarios"] == [] and "Across scenarios" not in bm.render_markdown(single)


def test_summarize_pairs_each_seed_and_takes_a_t_interval_over_seed_means(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr"))
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    erm = {0: [0.5, 0.6, 0.7], 1: [0.4, 0.4, 0.5], 2: [0.6, 0.6, 0.6]}
    tgr = {0: [0.7, 0.6, 0.8], 1: [0.5, 0.4, 0.6], 2: [0.6, 0.7, 0.6]}  # differences: mean 0.1, 0.0667, 0.0333
    for seed in erm:
        _fake_cell(tmp_path, "multi-domain", seed, "erm", erm[seed], digest)
        _fake_cell(tmp_path, "multi-domain", seed, "tgr", tgr[seed], digest)
    report = bm.summarize(spec, tmp_path)
    sc = report["scenarios"]["multi-domain"]
    seed1 = sc["paired"]["tgr"]["1shot"]["per_seed"]["1"]
    # seed 1: d = (0.1, 0, 0.1): mean 1/15, sd sqrt(1/300), t = mean / (sd / sqrt 3)
    assert seed1["mean"] == pytest.approx(1 / 15)
    assert seed1["t"] == pytest.approx((1 / 15) / (math.sqrt(1 / 300) / math.sqrt(3)))
    across = sc["paired"]["tgr"]["1shot"]["across_seeds"]
    means = np.array([0.1, 1 / 15, 1 / 30])  # the seeds' mean differences; sd = 1/30 exactly
    assert across["n"] == 3 and across["mean"] == pytest.approx(means.mean())
    assert across["half"] == pytest.approx(4.302653 * (1 / 30) / math.sqrt(3), rel=1e-6)
    pooled = sc["methods"]["tgr"]["1shot"]["pooled"]
    assert pooled["episodes"] == 9
    assert pooled["mean"] == pytest.approx(np.mean([a for s in tgr for a in tgr[s]]))
    assert report["missing_cells"] == []
    assert "erm" not in sc["paired"]  # the reference is not compared with itself

    # methods of one seed scored on different episodes: refused
    _fake_cell(tmp_path, "multi-domain", 2, "tgr", tgr[2], digest, seen="other")
    with pytest.raises(BenchmarkError, match="identical episodes"):
        bm.summarize(spec, tmp_path)


def test_method_configs_are_the_ablations() -> None:
    cfg = load_config("smoke")
    assert cfg.train.beta > 0
    expected = {
        "erm": (0.0, "none", "first"), "tgr": (cfg.train.beta, "spectral", "first"),
        "groups-no-igr": (0.0, "spectral", "first"), "igr-no-groups": (cfg.train.beta, "none", "first"),
        "igr-random-groups": (cfg.train.beta, "random", "first"),
        "tgr-second-order": (cfg.train.beta, "spectral", "second"), "erm-replicate": (0.0, "none", "first"),
    }
    for name, (beta, strategy, order) in expected.items():
        run = bm.method_config(cfg, bm.METHODS[name], seed=7)
        assert (run.train.beta, run.group.strategy, run.train.igr_order, run.seed) == (beta, strategy, order, 7), name
    with pytest.raises(ConfigError, match="reference"):
        bm.BenchmarkSpec(cfg, (bm.scenario_from_name("multi-domain", cfg),), (0,), ("tgr",), reference="erm")
    with pytest.raises(ConfigError, match="unknown scenario"):
        bm.scenario_from_name("multi-everything", cfg)


def _leaves(tree: dict, prefix: str = "") -> dict:
    """``{"train.seed": value, ...}``: every leaf of a nested dict by its dotted name."""
    flat: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_erm_replicate_differs_from_erm_in_the_training_seed_only() -> None:
    cfg = load_config("smoke")
    assert cfg.train.seed is None  # the methods' own training seed is the run seed unless a method sets one
    for seed in (0, 7):
        erm = bm.method_config(cfg, bm.METHODS["erm"], seed)
        replicate = bm.method_config(cfg, bm.METHODS["erm-replicate"], seed)
        a, b = _leaves(erm.to_dict()), _leaves(replicate.to_dict())
        assert a.keys() == b.keys()
        assert {key for key in a if a[key] != b[key]} == {"train.seed"}
        assert erm.seed == replicate.seed == seed  # the run seed: pool, recovered tasks, episodes
        assert erm.train.seed is None and replicate.train.seed == seed + bm.REPLICATE_SEED_OFFSET == seed + 1000
    assert bm.METHODS["erm-replicate"].label == "ERM, another seed"
    # a training seed set in the config is kept by the other methods, replaced by the replicate's
    fixed = load_config("smoke", overrides=["train.seed=3"])
    assert bm.method_config(fixed, bm.METHODS["erm"], 0).train.seed == 3
    assert bm.method_config(fixed, bm.METHODS["erm-replicate"], 0).train.seed == 1000


def test_the_standard_scenario_builds_overlapping_five_class_conv4_teachers_from_one_domain(tmp_path, monkeypatch):
    """The pool the runner hands make_pool, planned as make_pool plans it (plan_teachers), without training."""
    import itertools

    import tgr_hub.teachers as teachers

    class Stop(Exception):
        pass

    seen: dict = {}

    def fake_make_pool(folder, pool, **kwargs):
        seen["pool"], seen["data"] = pool, kwargs["data"]
        raise Stop

    monkeypatch.setattr(teachers, "make_pool", fake_make_pool)
    cfg = load_config("smoke")
    assert cfg.pool.teachers < 24 and cfg.pool.domains != ["cyrillic"]  # the scenario decides, not the preset
    scenario = bm.scenario_from_name("standard", cfg)
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0,), ("erm",))
    with pytest.raises(Stop):
        bm.run._Runner(spec, tmp_path / "bench", progress=False).pool_list(scenario, 0)
    pool, data = seen["pool"], seen["data"]
    assert (pool.domains, pool.archs, pool.way, pool.teachers) == (["cyrillic"], ["conv4"], 5, 24)
    train = load_split(data.dataset, "train", domains=pool.domains, image_size=data.image_size, seed=data.seed)
    assert train.num_classes == 55 and set(train.class_domains) == {"cyrillic"}
    specs = teachers.plan_teachers(train.class_names, train.class_domains, domains=pool.domains, archs=pool.archs,
                                   teachers=pool.teachers, way=pool.way, seed=0, epochs=pool.epochs,
                                   batch_size=pool.batch_size, lr=pool.lr, image_size=data.image_size,
                                   dataset=data.dataset, data_seed=data.seed)
    assert len(specs) >= 24
    assert all(s.architecture == "conv4" and s.domain == "cyrillic" for s in specs)
    assert all(len(set(s.classes)) == len(s.classes) == 5 for s in specs)
    assert all(name.startswith("cyrillic/") for s in specs for name in s.label_names)
    sets = [frozenset(s.label_names) for s in specs]
    assert any(a & b for a, b in itertools.combinations(sets, 2))  # teachers overlap...
    assert len(set(sets)) > 1  # ...by chance, not by being one teacher repeated
    # a larger configured pool is kept
    assert bm.scenario_pool(load_config("smoke", overrides=["pool.teachers=30"]), scenario).teachers == 30


def test_the_standard_scenario_is_scored_on_its_domain_and_the_others_are_unchanged(tmp_path) -> None:
    cfg = load_config("smoke")
    standard, multi = bm.scenario_from_name("standard", cfg), bm.scenario_from_name("multi-domain", cfg)
    assert bm.scenario_config(cfg, standard).data.domains == ["cyrillic"]
    assert bm.scenario_config(cfg, multi) is cfg
    # the settings digest sees the scenario's data.domains; the other scenarios' settings are as before
    settings = bm.grid.settings_of(cfg, standard)
    assert settings["config"]["data"]["domains"] == ["cyrillic"] and settings["scenario"]["eval_domains"] == ["cyrillic"]
    config = json.loads(json.dumps(cfg.to_dict()))  # as JSON (tuples are lists), without what cells may change:
    config.pop("seed")  # each cell's seed
    for peer in ("purer", "free", "bidf_mkd"):  # a peer's own section: only its cells carry it (grid.method_settings)
        config.pop(peer)
    for key in ("analysis_every", "analysis_groups"):  # and whether it measured the gradients
        config["train"].pop(key)
    config["train"].pop("replay_reduction")  # added later, at the value of the code before it (config.ADDED_LATER)
    assert bm.grid.settings_of(cfg, multi) == {"config": config, "scenario": {
        "name": "multi-domain", "domains": ["latin", "greek", "cyrillic", "symbols"], "archs": ["conv4"],
        "pool_list": None}}
    # the episode lists of each scenario come from its own meta-test classes
    spec = bm.BenchmarkSpec(cfg, (standard, multi), (0,), ("random",), reference="random")
    runner = bm.run._Runner(spec, tmp_path / "bench", progress=False)
    assert set(runner.test_split(standard).class_domains) == {"cyrillic"}
    assert set(runner.test_split(multi).class_domains) == {"latin", "greek", "cyrillic", "symbols"}
    test = runner.test_split(standard)
    classes = {int(c) for i in range(cfg.eval.episodes) for c in runner.episodes(standard, 0)[1].sampler.indices(i)[0]}
    assert {test.class_domains[c] for c in classes} == {"cyrillic"}
    assert runner.fingerprints(standard, 0) != runner.fingerprints(multi, 0)
    # a data.domains at odds with the scenario's is refused up front; a domain the dataset lacks is a DatasetError
    with pytest.raises(ConfigError, match="data.domains"):
        bm.BenchmarkSpec(load_config("smoke", overrides=["data.domains=[latin]"]), (standard,), (0,), ("erm",))
    lacking = bm.Scenario("lacking", ("latin",), ("conv4",), eval_domains=("klingon",))
    odd = bm.run._Runner(bm.BenchmarkSpec(cfg, (lacking,), (0,), ("random",), reference="random"), tmp_path, False)
    with pytest.raises(DatasetError, match="klingon"):
        odd.episodes(lacking, 0)


def test_data_domains_restricts_the_meta_validation_and_meta_test_classes(tmp_path, monkeypatch) -> None:
    everything = load_split("glyphs", "test")
    cyrillic = load_split("glyphs", "test", domains=["cyrillic"])
    assert set(everything.class_domains) == {"latin", "greek", "cyrillic", "symbols"}
    assert set(cyrillic.class_domains) == {"cyrillic"} and 0 < cyrillic.num_classes < everything.num_classes
    assert set(cyrillic.class_names) == {n for n, d in zip(everything.class_names, everything.class_domains)
                                         if d == "cyrillic"}
    # a domain the dataset lacks is a DatasetError, also beside one it has (not silently dropped)
    from PIL import Image

    for c in range(5):
        (tmp_path / "colours" / f"class_{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(tmp_path / "colours" / f"class_{c}" / f"{i}.png")
    folder = str(tmp_path / "colours")  # no domain column: its classes' domain is the dataset's name
    assert set(load_split(folder, "test", domains=["colours"], cache_dir=tmp_path / "cache").class_domains) == {"colours"}
    with pytest.raises(DatasetError, match="klingon"):
        load_split(folder, "test", domains=["colours", "klingon"], cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="klingon"):
        load_split("glyphs", "test", domains=["cyrillic", "klingon"])

    # run_tgr's meta-validation split, and tgr-hub evaluate's split, take the config's data.domains
    import tgr_hub.data as data_mod
    import tgr_hub.pipeline as pipeline
    from tgr_hub.cli.main import main

    class Stop(Exception):
        pass

    asked: list = []

    def fake_load_split(dataset, split, **kwargs):
        asked.append((split, kwargs.get("domains")))
        raise Stop

    cfg = load_config("smoke", overrides=["data.domains=[cyrillic]"])
    monkeypatch.setattr(pipeline, "prepare_pool", lambda *a, **k: pipeline.PreparedPool([], None, np.zeros((0, 0)),
                                                                                      [], {}))
    monkeypatch.setattr(data_mod, "load_split", fake_load_split)  # what data.split_of, the one loader, calls
    with pytest.raises(Stop):
        pipeline.run_tgr(tmp_path / "list.txt", tmp_path / "run", cfg, progress=False)
    with pytest.raises(Stop):
        main(["evaluate", "--baseline", "random", "--preset", "smoke", "--set", "data.domains=[cyrillic]"])
    with pytest.raises(Stop):
        main(["evaluate", "--baseline", "random", "--preset", "smoke", "--domains", "greek,latin"])
    assert asked == [("val", ["cyrillic"]), ("test", ["cyrillic"]), ("test", ["greek", "latin"])]


def test_the_report_counts_the_cells_whose_checkpoint_is_before_the_last_step(tmp_path: Path) -> None:
    """Issue 20's convergence check: a run still rising when it ends keeps its last step (train.iterations,
    or a peer's own iterations), so the report counts per method the cells meta-val chose earlier."""
    cfg = load_config("smoke", overrides=["eval.shots=[1]", "train.iterations=4", "free.iterations=6"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("random", "erm", "tgr", "free"), reference="random")
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    chosen = {"erm": [4, 2, 4], "tgr": [0, 4, 2], "free": [6, 4, 6]}  # ERM's last step is 4, FREE's 6
    for seed in (0, 1, 2):
        _fake_cell(tmp_path, "multi-domain", seed, "random", [0.2, 0.3], digest)
        for method, steps in chosen.items():
            _fake_cell(tmp_path, "multi-domain", seed, method, [0.4, 0.5], digest,
                       val={"best_step": steps[seed], "1shot": 0.5}, groups=[[0, 1]])
    sc = bm.summarize(spec, tmp_path)["scenarios"]["multi-domain"]
    assert "chose_before_last" not in sc["methods"]["random"]  # nothing trained, nothing chosen
    assert {m: sc["methods"][m]["chose_before_last"] for m in chosen} == {
        "erm": {"cells": 1, "of": 3, "last_step": 4},
        "tgr": {"cells": 2, "of": 3, "last_step": 4},
        "free": {"cells": 1, "of": 3, "last_step": 6},  # step 4 is before FREE's last, not at TGR's
    }
    md = bm.render_markdown(bm.summarize(spec, tmp_path))
    assert "Meta-validation chose a step before the last in 4 of 9 cells (ERM 1 of 3, TGR 2 of 3, FREE 1 of 3)." in md


def test_the_noise_floor_is_erm_replicate_minus_erm_across_seeds(tmp_path: Path) -> None:
    from scipy import stats as sps

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    methods = ("erm", "erm-replicate", "tgr")
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), methods)
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    acc = {
        "erm": {0: [0.5, 0.6, 0.7, 0.4], 1: [0.4, 0.4, 0.5, 0.6], 2: [0.6, 0.6, 0.6, 0.5]},
        "erm-replicate": {0: [0.6, 0.6, 0.6, 0.4], 1: [0.4, 0.3, 0.5, 0.5], 2: [0.7, 0.6, 0.8, 0.5]},
        "tgr": {0: [0.7, 0.6, 0.8, 0.5], 1: [0.5, 0.4, 0.6, 0.6], 2: [0.6, 0.7, 0.6, 0.6]},
    }
    agreement = {0: 0.5, 1: 0.7, 2: None}  # seed 2's run had no online recovery
    for method, per_seed in acc.items():
        for seed, values in per_seed.items():
            _fake_cell(tmp_path, "multi-domain", seed, method, values, digest,
                       val={"best_step": 2, "1shot": 0.5}, groups=[[0, 1]], recover_agreement=agreement[seed])
    report = bm.summarize(spec, tmp_path)
    sc = report["scenarios"]["multi-domain"]
    floor = sc["noise_floor"]
    assert floor["seeds"] == [0, 1, 2]
    # by hand: per seed, a paired t over the episodes; across seeds, a t-interval over the seeds' mean differences
    diffs = {s: np.array(acc["erm-replicate"][s]) - np.array(acc["erm"][s]) for s in (0, 1, 2)}
    for s, d in diffs.items():
        got = floor["1shot"]["per_seed"][str(s)]
        assert got["mean"] == pytest.approx(d.mean()) and got["n"] == 4
        assert got["p"] == pytest.approx(sps.ttest_rel(acc["erm-replicate"][s], acc["erm"][s]).pvalue)
    means = np.array([d.mean() for d in diffs.values()])  # 0.025, -0.05, 0.075
    half = sps.t.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3)
    across = floor["1shot"]["across_seeds"]
    assert across["mean"] == pytest.approx(means.mean())
    assert (across["low"], across["high"]) == (pytest.approx(means.mean() - half), pytest.approx(means.mean() + half))
    assert across["p"] == pytest.approx(sps.ttest_1samp(means, 0.0).pvalue)
    # the same numbers beside the method differences in results.md, named and explained
    md = bm.render_markdown(report)
    shown = f"1-shot {100 * means.mean():+.2f} [{100 * (means.mean() - half):+.2f}, {100 * (means.mean() + half):+.2f}]"
    line = next(line for line in md.splitlines() if line.startswith("**Noise floor**"))
    assert shown in line and "must exceed" in line and "seed + 1000" in line
    assert md.index("| TGR |") < md.index("**Noise floor**") < md.index("Accuracy: mean")
    # the mean online-recovery agreement per trained method: per seed, n/a where absent, and over the seeds
    erm = sc["methods"]["erm"]
    assert [erm["selection"][str(s)]["recover_agreement"] for s in (0, 1, 2)] == [0.5, 0.7, None]
    assert erm["recover_agreement"] == pytest.approx(0.6)
    assert "| ERM | 0 | 2 | 1-shot 50.00 | 2 | 50.0% |" in md and "| ERM | 2 | 2 | 1-shot 50.00 | 2 | n/a |" in md
    assert "Mean online-recovery agreement over the seeds: ERM 60.0%; ERM, another seed 60.0%; TGR 60.0%." in md
    bm.write_report(spec, tmp_path)  # the figure draws the band
    assert (tmp_path / "results.png").stat().st_size > 0

    # without the replicate there is no noise floor, and the report says none
    without = bm.summarize(bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr")), tmp_path)
    assert without["scenarios"]["multi-domain"]["noise_floor"] is None
    assert "Noise floor" not in bm.render_markdown(without)


def test_tgr_is_taken_apart_into_one_switch_differences_beside_the_noise_floor(tmp_path: Path) -> None:
    from scipy import stats as sps

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    methods = ("erm", "erm-replicate", "tgr", "igr-no-groups", "groups-no-igr")
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    rng = np.random.default_rng(3)
    acc = {m: {s: list(np.round(rng.uniform(0.3, 0.7, 6) * 25) / 25) for s in (0, 1, 2)} for m in methods}
    for method, per_seed in acc.items():
        for seed, values in per_seed.items():
            _fake_cell(tmp_path, "multi-domain", seed, method, values, digest)
    report = bm.summarize(bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), methods), tmp_path)
    parts = report["scenarios"]["multi-domain"]["decomposition"]
    assert [(p["switch"], p["method"], p["versus"]) for p in parts] == [
        ("IGR", "tgr", "groups-no-igr"),
        ("IGR", "igr-no-groups", "erm"),
        ("spectral grouping", "tgr", "igr-no-groups"),
        ("spectral grouping", "groups-no-igr", "erm"),
    ]
    for part in parts:  # by hand: a t-interval over the seeds' mean paired differences
        means = [np.mean(np.array(acc[part["method"]][s]) - np.array(acc[part["versus"]][s])) for s in (0, 1, 2)]
        across = part["1shot"]["across_seeds"]
        assert across["mean"] == pytest.approx(np.mean(means))
        assert across["p"] == pytest.approx(sps.ttest_1samp(means, 0.0).pvalue)
    md = bm.render_markdown(report)
    table = md[md.index("TGR taken apart"):md.index("Per seed")]
    assert "| IGR | without groups | IGR, no groups − ERM | " in table
    assert "| noise floor | another training seed | ERM, another seed − ERM | " in table
    # the IGR switch's two rows and the grouping switch's two add up to the same total, TGR − ERM
    total = np.mean([np.mean(np.array(acc["tgr"][s]) - np.array(acc["erm"][s])) for s in (0, 1, 2)])
    by = {(p["method"], p["versus"]): p["1shot"]["across_seeds"]["mean"] for p in parts}
    assert by[("tgr", "groups-no-igr")] + by[("groups-no-igr", "erm")] == pytest.approx(total)
    assert by[("tgr", "igr-no-groups")] + by[("igr-no-groups", "erm")] == pytest.approx(total)
    # a grid without the ablations has no decomposition, and the report shows none
    plain = bm.summarize(bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr")), tmp_path)
    assert plain["scenarios"]["multi-domain"]["decomposition"] == []
    assert "TGR taken apart" not in bm.render_markdown(plain)


def test_the_report_reads_whether_runs_were_still_rising_over_their_last_interval(tmp_path: Path) -> None:
    from scipy import stats as sps

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))

    def report(curves: dict[tuple[int, str], list[list[float]]]) -> tuple[dict, str]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        for (seed, method), curve in curves.items():
            _fake_cell(folder, "multi-domain", seed, method, [0.5, 0.6], digest,
                       val={"best_step": 200, "1shot": 0.5, "selection_noise": 0.004}, val_curve=curve)
        spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr"))
        summary = bm.summarize(spec, folder)
        return summary["scenarios"]["multi-domain"]["last_interval"], bm.render_markdown(summary)

    # the last checks of six runs: each change is last - second-last, whatever came before
    rising = {(0, "erm"): [[0, 0.3], [100, 0.50], [200, 0.55]], (1, "erm"): [[0, 0.3], [100, 0.52], [200, 0.56]],
              (2, "erm"): [[0, 0.3], [100, 0.60], [200, 0.62]], (0, "tgr"): [[0, 0.3], [100, 0.40], [200, 0.47]],
              (1, "tgr"): [[0, 0.3], [100, 0.45], [200, 0.48]], (2, "tgr"): [[0, 0.3], [100, 0.58], [200, 0.63]]}
    changes = np.array([0.05, 0.04, 0.02, 0.07, 0.03, 0.05])
    last, md = report(rising)
    assert last["steps"] == [[100, 200]] and last["change"]["n"] == 6
    assert last["change"]["mean"] == pytest.approx(changes.mean())
    half = sps.t.ppf(0.975, 5) * changes.std(ddof=1) / math.sqrt(6)
    assert last["change"]["low"] == pytest.approx(changes.mean() - half)
    assert last["selection_noise"] == pytest.approx(0.004)
    assert last["by_method"] == {"ERM": pytest.approx(changes[:3].mean()), "TGR": pytest.approx(changes[3:].mean())}
    assert f"mean by method: ERM {100 * changes[:3].mean():+.2f}, TGR {100 * changes[3:].mean():+.2f}" in md
    assert "still rising on average" in md and f"{100 * changes.mean():+.2f} points" in md
    # level on average: the interval holds 0
    level = {key: [[0, 0.3], [100, 0.5], [200, 0.5 + d]] for key, d in zip(rising, (0.03, -0.04, 0.01, -0.02, 0.02, -0.01))}
    last, md = report(level)
    assert last["change"]["low"] < 0 < last["change"]["high"] and "not told apart from the swings" in md
    # past the peak, and no curves at all (older cells): no reading
    falling = {key: [[0, 0.3], [100, 0.6], [200, 0.6 - d]] for key, d in zip(rising, changes)}
    assert "past their peak" in report(falling)[1]
    last, md = report({key: [[0, 0.3]] for key in rising})
    assert last is None and "second-last" not in md


def test_a_cell_records_the_mean_online_recovery_agreement_gradient_and_val_curves_of_its_run(tmp_path: Path) -> None:
    cfg = load_config("smoke")
    nothing = {"recover_agreement": None, "gradients": None, "val_curve": None}
    assert bm.run._from_history(tmp_path) == nothing  # no run record
    RunRecord(config=cfg.to_dict(), history={"task_loss": [[1, 2.0]]}).write(tmp_path / "tgr_config.json")
    assert bm.run._from_history(tmp_path) == nothing  # none recorded
    history = {"recover_agreement": [[1, 0.25], [2, 0.5], [3, 1.0]], "grad_P": [[0, 4.0], [2, 1.5]],
               "grad_cosine": [[0, 0.1], [2, 0.3]], "val_acc": [[0, 0.4], [2, 0.55]]}
    RunRecord(config=cfg.to_dict(), history=history).write(tmp_path / "tgr_config.json")
    recorded = bm.run._from_history(tmp_path)
    assert recorded["recover_agreement"] == pytest.approx(1.75 / 3)
    assert recorded["gradients"] == {"grad_P": [[0, 4.0], [2, 1.5]], "grad_cosine": [[0, 0.1], [2, 0.3]]}
    assert recorded["val_curve"] == [[0, 0.4], [2, 0.55]]


# --- a real smoke benchmark ---------------------------------------------------------------------------

METHODS = ("random", "average", "erm", "tgr", "erm-replicate")
SEEDS = (0, 1)


def _spec(**overrides) -> bm.BenchmarkSpec:
    cfg = load_config("smoke")
    return bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), SEEDS, METHODS, **overrides)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """One smoke benchmark (config pool, 2 seeds, 5 methods), run once for the module; tests copy it."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    finished: list = []
    report = bm.run_benchmark(_spec(), out, progress=False, on_cell=lambda cell, rec: finished.append((cell.key, rec)))
    return out, report, finished


def _copy(bench_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bench"
    shutil.copytree(bench_dir, target)
    return target


@pytest.mark.slow
def test_every_method_sees_the_identical_episodes(bench) -> None:
    out, report, finished = bench
    assert [key for key, _ in finished] == [c.key for c in bm.plan_cells(_spec())]
    cfg = _spec().cfg
    test = load_split(cfg.data.dataset, cfg.eval.split, image_size=cfg.data.image_size, seed=cfg.data.seed)
    for seed in SEEDS:
        records = {rec["method"]: rec for key, rec in finished if rec["seed"] == seed}
        assert set(records) == set(METHODS)
        for shot in cfg.eval.shots:
            key = f"{shot}shot"
            # what each method's evaluation was handed, hashed as it was handed: identical for all methods
            seen = {m: rec["episodes"][key]["seen"] for m, rec in records.items()}
            assert len(set(seen.values())) == 1, seen
            assert all(rec["episodes"][key]["count"] == cfg.eval.episodes for rec in records.values())
            assert all(len(rec["accuracies"][key]) == cfg.eval.episodes for rec in records.values())
            # ...and it is the sampler's episode list of this seed, image for image
            expected = hashlib.sha256()
            listed = bm.EpisodeList(test, way=cfg.eval.way, shot=shot, query=cfg.eval.query, seed=seed,
                                    count=cfg.eval.episodes)
            for episode in listed:
                for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y):
                    expected.update(t.numpy().tobytes())
            assert seen["tgr"] == expected.hexdigest()
    other = {rec["episodes"]["1shot"]["seen"] for _, rec in finished}
    assert len(other) == len(SEEDS)  # one episode list per seed, different between seeds
    # every cell names the meta-test data as it was resolved (dataset, commit, class split), as a run record does
    source = {"dataset": cfg.data.dataset, "revision": test.revision, "class_split": test.class_split}
    assert all(rec["data_source"] == source for _, rec in finished)
    assert report["data_sources"] == [source]

    # the Random cell's accuracies are those of the ordinary evaluation on the seed's episode stream
    seed0 = {rec["method"]: rec for _, rec in finished if rec["seed"] == 0}
    plain = evaluate_model(random_baseline(cfg.train.arch, cfg.data.image_size, seed=0), test, way=cfg.eval.way,
                           shots=cfg.eval.shots, query=cfg.eval.query, episodes=cfg.eval.episodes,
                           learner=cfg.train.learner, seed=0, progress=False, keep_accuracies=True)
    for shot in cfg.eval.shots:
        assert seed0["random"]["accuracies"][f"{shot}shot"] == plain[f"{shot}shot"]["accuracies"]


@pytest.mark.slow
def test_trained_methods_share_the_recovered_tasks_and_differ_only_in_their_settings(bench) -> None:
    out, report, _ = bench
    for seed in SEEDS:
        folder = out / "config" / f"seed-{seed}"
        shared = (folder / "shared" / "recovered" / "bank.safetensors").read_bytes()
        for method in ("erm", "tgr", "erm-replicate"):
            assert (folder / method / "recovered" / "bank.safetensors").read_bytes() == shared
        erm = json.loads((folder / "erm" / "tgr_config.json").read_text())
        tgr = json.loads((folder / "tgr" / "tgr_config.json").read_text())
        assert erm["seed"] == tgr["seed"] == seed
        assert erm["train"]["beta"] == 0.0 and erm["group"]["strategy"] == "none" and len(erm["groups"]) == 1
        assert tgr["train"]["beta"] > 0 and tgr["group"]["strategy"] == "spectral"
        # the replicate: ERM's run config but for meta-training's seed; the same run seed (pool, tasks, episodes)
        replicate = RunRecord.read(folder / "erm-replicate" / "tgr_config.json").config
        a, b = _leaves(RunRecord.read(folder / "erm" / "tgr_config.json").config), _leaves(replicate)
        assert {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)} == {"train.seed"}
        assert replicate["seed"] == seed and replicate["train"]["seed"] == seed + bm.REPLICATE_SEED_OFFSET
    sc = report["scenarios"]["config"]
    assert set(sc["paired"]) == {"random", "average", "tgr", "erm-replicate"}
    # ... and trained with it: another model on the same episodes, whose difference from ERM is the noise floor
    cells = {(rec["seed"], rec["method"]): rec for _, rec in bench[2]}
    assert all(cells[(s, "erm-replicate")]["episodes"] == cells[(s, "erm")]["episodes"] for s in SEEDS)
    assert any(cells[(s, "erm-replicate")]["accuracies"] != cells[(s, "erm")]["accuracies"] for s in SEEDS)
    assert sc["noise_floor"] == sc["paired"]["erm-replicate"] and sc["noise_floor"]["seeds"] == list(SEEDS)
    d = sc["paired"]["tgr"]["5shot"]
    assert d["across_seeds"]["n"] == 2
    assert d["across_seeds"]["mean"] == pytest.approx(np.mean([d["per_seed"][str(s)]["mean"] for s in SEEDS]))
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "| TGR |" in md and "− ERM" in md and "seeds ± " in md and "**Noise floor**" in md


@pytest.mark.slow
def test_resume_skips_finished_cells_and_an_interruption_loses_only_the_cell_in_flight(bench, tmp_path, monkeypatch):
    out = _copy(bench[0], tmp_path)
    ran: list[str] = []
    real_run = bm.run._Runner.run

    def counting_run(self, cell):
        ran.append(cell.key)
        return real_run(self, cell)

    monkeypatch.setattr(bm.run._Runner, "run", counting_run)
    bm.run_benchmark(_spec(), out, progress=False)
    assert ran == []  # everything finished: nothing runs again

    cells = bm.plan_cells(_spec())
    lost = [cells[0], cells[2]]  # seed 0: random and erm
    before = {c.key: json.loads(bm.grid.cell_path(out, c).read_text()) for c in lost}
    for cell in lost:
        bm.grid.cell_path(out, cell).unlink()

    def interrupted_run(self, cell):  # Ctrl-C while the second missing cell is being computed
        ran.append(cell.key)
        if len(ran) == 2:
            raise KeyboardInterrupt
        return real_run(self, cell)

    monkeypatch.setattr(bm.run._Runner, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(_spec(), out, progress=False)
    assert ran == [lost[0].key, lost[1].key]
    assert bm.grid.cell_path(out, lost[0]).exists() and not bm.grid.cell_path(out, lost[1]).exists()

    ran.clear()
    monkeypatch.setattr(bm.run._Runner, "run", counting_run)
    report = bm.run_benchmark(_spec(), out, progress=False)
    assert ran == [lost[1].key]
    assert report["missing_cells"] == []
    for cell in lost:  # recomputed cells give the same accuracies
        assert json.loads(bm.grid.cell_path(out, cell).read_text())["accuracies"] == before[cell.key]["accuracies"]


@pytest.mark.slow
def test_a_trained_cell_killed_mid_run_resumes_from_its_checkpoint_to_the_same_result(bench, tmp_path, monkeypatch):
    import tgr_hub.train as train_module
    from tgr_hub.distributed import checkpoint_name

    out = _copy(bench[0], tmp_path)
    cell = bm.plan_cells(_spec())[3]  # seed 0, tgr
    assert cell.method.name == "tgr" and cell.seed == 0
    before = json.loads(bm.grid.cell_path(out, cell).read_text())
    bm.grid.cell_path(out, cell).unlink()
    shutil.rmtree(bm.grid.seed_dir(out, cell.scenario, 0) / "tgr")  # the run folder too: train again from step 0
    cfg = _spec().cfg
    assert cfg.train.checkpoint_every == 0 < cfg.train.eval_every < cfg.train.iterations  # the cell's own cadence
    real_checkpoint = train_module._MetaTrainer.checkpoint

    def killed_after_first_checkpoint(self, step):  # the machine goes down right after the mid-run checkpoint
        real_checkpoint(self, step)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module._MetaTrainer, "checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(_spec(), out, progress=False)
    folder = bm.grid.seed_dir(out, cell.scenario, 0) / "tgr" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == [checkpoint_name(cfg.train.eval_every)]

    resumed_from: list[int] = []
    real_restore = train_module._MetaTrainer.restore

    def recording_restore(self, *args, **kwargs):
        resumed_from.append(real_restore(self, *args, **kwargs))
        return resumed_from[-1]

    monkeypatch.setattr(train_module._MetaTrainer, "checkpoint", real_checkpoint)
    monkeypatch.setattr(train_module._MetaTrainer, "restore", recording_restore)
    bm.run_benchmark(_spec(), out, progress=False)
    assert resumed_from == [cfg.train.eval_every]
    after = json.loads(bm.grid.cell_path(out, cell).read_text())
    assert after["accuracies"] == before["accuracies"] and after["val"] == before["val"]


@pytest.mark.slow
def test_shards_share_the_grid_and_the_report_merges_them(bench, tmp_path, monkeypatch):
    out = _copy(bench[0], tmp_path)
    cells = bm.plan_cells(_spec())
    for cell in cells[:2]:  # seed 0: random (position 0) and average (position 1)
        bm.grid.cell_path(out, cell).unlink()
    ran: list[str] = []
    real_run = bm.run._Runner.run
    monkeypatch.setattr(bm.run._Runner, "run", lambda self, cell: (ran.append(cell.key), real_run(self, cell))[1])
    partial = bm.run_benchmark(_spec(), out, shard=(1, 2), progress=False)
    assert ran == [cells[1].key]
    assert partial["missing_cells"] == [cells[0].key]
    assert "Not finished yet" in (out / "results.md").read_text()
    merged = bm.run_benchmark(_spec(), out, shard=(0, 2), progress=False)
    assert ran == [cells[1].key, cells[0].key]
    assert merged["missing_cells"] == []
    with pytest.raises(ConfigError, match="shard"):
        bm.run_benchmark(_spec(), out, shard=(2, 2), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch every process would run every cell
    with pytest.raises(ConfigError, match="accelerate launch"):
        bm.run_benchmark(_spec(), out, progress=False)


@pytest.mark.slow
def test_processes_sharing_a_folder_each_run_the_cells_no_other_one_holds(bench, tmp_path, monkeypatch):
    out = _copy(bench[0], tmp_path)
    cells = bm.plan_cells(_spec())
    for cell in cells[:2]:  # seed 0: random and average
        bm.grid.cell_path(out, cell).unlink()
    ran: list[str] = []
    real_run = bm.run._Runner.run
    monkeypatch.setattr(bm.run._Runner, "run", lambda self, cell: (ran.append(cell.key), real_run(self, cell))[1])

    # another process is running the first cell: it holds the cell's lock until it dies
    lock = bm.grid.cell_path(out, cells[0]).with_suffix(".lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        partial = bm.run_benchmark(_spec(), out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert ran == [cells[1].key]
    assert partial["missing_cells"] == [cells[0].key]

    # its holder died, so the lock is free: the next run takes the cell
    ran.clear()
    assert bm.run_benchmark(_spec(), out, progress=False)["missing_cells"] == []
    assert ran == [cells[0].key]

    # a cell another process finishes after this one listed the work is not run twice
    saved = bm.grid.cell_path(out, cells[1]).read_text()
    for cell in cells[:2]:
        bm.grid.cell_path(out, cell).unlink()
    ran.clear()
    finish_second = lambda cell, record: bm.grid.cell_path(out, cells[1]).write_text(saved)  # noqa: E731
    bm.run_benchmark(_spec(), out, progress=False, on_cell=finish_second)
    assert ran == [cells[0].key]


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_folder_of_other_settings_is_refused(bench, tmp_path) -> None:
    out = _copy(bench[0], tmp_path)
    cfg = load_config("smoke", overrides=["eval.episodes=12"])
    spec = bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), SEEDS, METHODS)
    with pytest.raises(BenchmarkError, match="other settings"):
        bm.run_benchmark(spec, out, progress=False)


@pytest.mark.slow
def test_a_cell_whose_episodes_or_data_would_differ_from_its_finished_neighbours_is_refused_before_training(
        bench, tmp_path, monkeypatch) -> None:
    out = _copy(bench[0], tmp_path)
    cells = bm.plan_cells(_spec())
    bm.grid.cell_path(out, cells[2]).unlink()  # seed 0, erm: to be run again
    neighbour = bm.grid.cell_path(out, cells[0])  # seed 0, random: finished
    original = json.loads(neighbour.read_text())
    monkeypatch.setattr(bm.run._Runner, "prepared", lambda *a: pytest.fail("trained although the data changed"))

    moved = json.loads(json.dumps(original))
    moved["data_source"]["revision"] = "0" * 40  # as if the dataset's branch had moved since
    neighbour.write_text(json.dumps(moved))
    with pytest.raises(BenchmarkError, match=r"differ from those of the finished cell .*random\.json.*@0000"):
        bm.run_benchmark(_spec(), out, progress=False)

    other = json.loads(json.dumps(original))
    other["episodes"]["1shot"]["list"] = "f" * 64  # other episode indices (e.g. another class split)
    neighbour.write_text(json.dumps(other))
    with pytest.raises(BenchmarkError, match="meta-test episodes of"):
        bm.run_benchmark(_spec(), out, progress=False)
    assert not bm.grid.cell_path(out, cells[2]).exists()

    neighbour.write_text(json.dumps(original))  # the control: unchanged neighbours let it run
    monkeypatch.undo()
    assert bm.run_benchmark(_spec(), out, progress=False)["missing_cells"] == []


@pytest.mark.slow
def test_the_report_shows_the_checkpoint_meta_validation_chose_and_the_groups(bench) -> None:
    out, report, finished = bench
    markdown = (out / "results.md").read_text()
    methods = report["scenarios"][bm.CONFIG_SCENARIO]["methods"]
    for key, record in finished:
        chosen = methods[record["method"]].get("selection", {}).get(str(record["seed"]))
        if record["method"] in ("random", "average"):
            assert chosen is None  # nothing was selected for the baselines
            continue
        assert chosen == {"val": record["val"], "group_sizes": [len(g) for g in record["groups"]],
                          "recover_agreement": record["recover_agreement"], "val_curve": record["val_curve"]}
        # smoke recovers online every step: the record holds the mean of the run's recover_agreement history
        run_history = RunRecord.read(out / record["run_folder"] / "tgr_config.json").history
        history = run_history["recover_agreement"]
        assert history and record["recover_agreement"] == pytest.approx(np.mean([v for _, v in history]))
        # and the run's meta-val curve, whose chosen step scores what meta-validation chose
        assert record["val_curve"] == [[s, v] for s, v in run_history["val_acc"]]
        assert dict(record["val_curve"])[record["val"]["best_step"]] == record["val"]["accuracy"]
        label = bm.METHODS[record["method"]].label
        assert f"| {label} | {record['seed']} | {record['val']['best_step']} | " in markdown
        assert f"| {100 * record['recover_agreement']:.1f}% |" in markdown


@pytest.mark.slow
def test_quickstart_prints_its_table_from_the_benchmark(bench, tmp_path, monkeypatch, capsys) -> None:
    """The quickstart is the benchmark's special case: seed 0 of the module's benchmark is its whole grid."""
    from tgr_hub.cli import cmd_quickstart
    from tgr_hub.cli.main import main

    out = _copy(bench[0], tmp_path)
    calls: list = []
    real = bm.run_benchmark

    def spy(spec, folder, **kwargs):
        calls.append(spec)
        return real(spec, folder, **kwargs)

    monkeypatch.setattr(bm, "run_benchmark", spy)
    monkeypatch.setattr(bm.run._Runner, "run", lambda self, cell: pytest.fail(f"{cell.key} was finished already"))
    assert main(["quickstart", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(calls) == 1 and calls[0].methods == bm.QUICKSTART_METHODS and calls[0].seeds == (0,)
    assert [s.name for s in calls[0].scenarios] == [bm.CONFIG_SCENARIO]
    report = json.loads((out / "results.json").read_text())
    assert report["format"] == bm.RESULTS_FORMAT
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "1-shot", "5-shot"]
    rows = lines[header + 1:header + 5]
    for row, (name, label) in zip(rows, [("random", "Random"), ("average", "Average"), ("erm", "ERM"), ("tgr", "TGR")]):
        entry = report["scenarios"]["config"]["methods"][name]
        cells = " ".join(f"{100 * entry[f'{s}shot']['per_seed']['0']['mean']:.2f} ± "
                         f"{100 * entry[f'{s}shot']['per_seed']['0']['ci95']:.2f}" for s in (1, 5))
        assert row.split() == [label, *cells.split()], row
    assert "total time" in printed
    assert cmd_quickstart.__doc__ and "benchmark" in cmd_quickstart.__doc__


def test_quickstart_hands_the_image_size_and_class_split_to_the_pool_and_the_test_split(tmp_path, monkeypatch):
    """The benchmark path (the quickstart's too) keeps the data settings: make-pool and the meta-test split get them."""
    import tgr_hub.data as data_mod
    import tgr_hub.teachers as teachers
    from tgr_hub.cli.main import main

    class Stop(Exception):
        pass

    seen: dict = {}

    def fake_make_pool(folder, pool, **kwargs):
        seen["make_pool"] = kwargs
        raise Stop

    def fake_load_split(dataset, split, **kwargs):
        seen["load_split"] = (split, kwargs)
        raise Stop

    monkeypatch.setattr(teachers, "make_pool", fake_make_pool)
    monkeypatch.setattr(data_mod, "load_split", fake_load_split)  # behind data.split_of
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["a", "b", "c"], "validation": ["d", "e", "f"], "test": ["g", "h", "i"]}))
    overrides = ["--set", "data.image_size=20", "--set", f"data.class_split={split_file}"]
    with pytest.raises(Stop):  # the first cell (random) is scored first: it loads the meta-test split
        main(["quickstart", "--preset", "smoke", "--out", str(tmp_path / "qs"), *overrides])
    split, kwargs = seen["load_split"]
    assert split == "test" and kwargs["image_size"] == 20 and kwargs["class_split"] == str(split_file)

    cfg = load_config("smoke", overrides=["data.image_size=20", f"data.class_split={split_file}"])
    spec = bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), (0,), bm.QUICKSTART_METHODS)
    with pytest.raises(Stop):
        bm.run._Runner(spec, tmp_path / "bench", progress=False).pool_list(spec.scenarios[0], 0)
    data = seen["make_pool"]["data"]
    assert data.image_size == 20 and data.class_split == str(split_file)


@pytest.mark.slow
def test_benchmark_cli_merge_and_bad_input(bench, tmp_path, capsys) -> None:
    from tgr_hub.cli.main import main

    out = _copy(bench[0], tmp_path)
    (out / "results.md").unlink()
    argv = ["benchmark", "--scenario", "config", "--seeds", "0,1", "--methods", ",".join(METHODS), "--preset", "smoke",
            "--out", str(out)]
    assert main([*argv, "--merge"]) == 0
    printed = capsys.readouterr().out
    assert "| TGR |" in printed and (out / "results.md").exists()
    assert main([*argv, "--shard", "3"]) == 2
    assert "--shard must be I/N" in capsys.readouterr().err
    assert main([*argv[:-2], "--methods", "tgr,nonsense", "--out", str(out)]) == 2
    assert "unknown method(s) nonsense" in capsys.readouterr().err


def test_every_benchmark_evaluation_uses_the_run_eval_section(tmp_path, monkeypatch) -> None:
    """eval.method and the fine-tuning schedule reach the benchmark's (and so the quickstart's) evaluations.

    The Random cell is scored like every other cell (one evaluate_model call in ``_Runner.run``); a
    ProtoNet-trained config asked to evaluate by fine-tuning must be fine-tuned with its schedule.
    """
    import tgr_hub.evaluate as evaluate_mod

    calls: list[dict] = []
    real = evaluate_mod.evaluate_model

    def spy(model, split, **kwargs):
        calls.append(kwargs)
        return real(model, split, **kwargs)

    monkeypatch.setattr(evaluate_mod, "evaluate_model", spy)
    cfg = load_config("smoke", overrides=["train.learner=protonet", "eval.method=finetune", "eval.inner_steps=2",
                                          "eval.inner_lr=0.05", "eval.episodes=3", "eval.shots=[1]"])
    spec = bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), (0,), ("random",), reference="random")
    runner = bm.run._Runner(spec, tmp_path / "bench", progress=False)
    record = runner.run(bm.plan_cells(spec)[0])
    assert len(calls) == 1
    assert (calls[0]["learner"], calls[0]["inner_steps"], calls[0]["inner_lr"]) == ("finetune", 2, 0.05)
    assert record["adaptation"] == "finetune" and len(record["accuracies"]["1shot"]) == 3


# --- paired statistics on strongly correlated accuracies -----------------------------------------------


def _correlated(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode accuracies of a reference and of a method ~2 points better on the same episodes.

    Episode difficulty spreads the accuracies over 0.2..0.9 and both methods share it (correlation
    ≈ 0.99), so the paired difference is sharp while two per-method intervals overlap widely. The
    method's gain varies from episode to episode (in steps of 1/25, a 5-way 5-query episode), so
    sorting either list, or both, pairs other episodes and changes the answer.
    """
    rng = np.random.default_rng([7, seed])
    reference = np.round(rng.uniform(0.2, 0.9, n) * 25) / 25
    gain = rng.choice([-1, 0, 1, 1, 2, 2], size=n) / 25
    return np.clip(reference + gain, 0, 1), reference


def _by_hand(method: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from scipy.stats import t as student

    d = method - reference
    n = d.size
    mean, sd = d.mean(), np.sqrt(((d - d.mean()) ** 2).sum() / (n - 1))
    se = sd / np.sqrt(n)
    half = student.ppf(0.975, n - 1) * se
    t = mean / se
    return {"mean": mean, "sd": sd, "t": t, "half": half, "low": mean - half, "high": mean + half,
            "p": 2 * student.sf(abs(t), n - 1), "n": n}


def test_paired_difference_on_strongly_correlated_accuracies_matches_a_hand_computation() -> None:
    from scipy import stats as sps

    method, reference = _correlated(0)
    assert np.corrcoef(method, reference)[0, 1] > 0.95
    got, want = stats.paired_difference(method, reference), _by_hand(method, reference)
    for key in ("mean", "sd", "t", "half", "low", "high", "p"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9, abs=1e-15), key
    assert got.n == 40
    # the pairing matters: the paired test is sure, the unpaired one (same data) is not
    assert got.p < 1e-6 and sps.ttest_ind(method, reference).pvalue > 0.3
    assert got.high - got.low < 0.25 * (2 * stats.episode_interval(method)[1])  # the per-method interval
    # and pairing is by episode: the same accuracies in another order give another answer
    for shuffled in (np.sort(method), method[::-1]):
        assert abs(stats.paired_difference(shuffled, reference).t - want["t"]) > 1.0
    assert abs(stats.paired_difference(np.sort(method), np.sort(reference)).sd - want["sd"]) > 0.005


def test_the_benchmark_pairs_each_episode_with_itself_and_takes_a_t_interval_over_the_seeds(tmp_path: Path) -> None:
    from scipy.stats import t as student

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr"))
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    data = {seed: _correlated(seed) for seed in (0, 1, 2)}
    for seed, (method, reference) in data.items():
        # the method's cell lists its episodes in the order they were scored: the reference's order
        _fake_cell(tmp_path, "multi-domain", seed, "erm", reference.tolist(), digest)
        _fake_cell(tmp_path, "multi-domain", seed, "tgr", method.tolist(), digest)
    paired = bm.summarize(spec, tmp_path)["scenarios"]["multi-domain"]["paired"]["tgr"]["1shot"]
    for seed, (method, reference) in data.items():
        got, want = paired["per_seed"][str(seed)], _by_hand(method, reference)
        for key in ("mean", "sd", "t", "half", "low", "high", "p"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-15), (seed, key)
        assert got["n"] == 40
    means = np.array([(m - r).mean() for m, r in data.values()])
    half = student.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3)
    across = paired["across_seeds"]
    assert across["n"] == 3 and across["mean"] == pytest.approx(means.mean(), rel=1e-12)
    assert (across["low"], across["high"]) == (pytest.approx(means.mean() - half, rel=1e-9),
                                               pytest.approx(means.mean() + half, rel=1e-9))
    t = means.mean() / (means.std(ddof=1) / np.sqrt(3))
    assert across["t"] == pytest.approx(t, rel=1e-9) and across["p"] == pytest.approx(2 * student.sf(abs(t), 2), rel=1e-9)


def test_generated_blocks_of_a_document_are_refilled_from_the_report_it_names(tmp_path: Path, capsys) -> None:
    from tgr_hub.cli.main import main

    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1), ("erm", "erm-replicate", "tgr"))
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    for seed in (0, 1):
        for method, shift in (("erm", 0.0), ("erm-replicate", 0.05), ("tgr", 0.1)):
            _fake_cell(tmp_path / "bench", "multi-domain", seed, method, [0.4 + shift, 0.5 + shift, 0.3 + seed / 10],
                       digest, val={"best_step": 2, "1shot": 0.5}, groups=[[0, 1]], recover_agreement=0.9)
    report = bm.write_report(spec, tmp_path / "bench")
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    source = "../bench/results.json"
    stale = "| TGR | 99.99 | stale |"
    doc.write_text(
        "# Results\n\nProse the command leaves alone.\n\n"
        f"<!-- tgr-hub docs: {source} accuracy multi-domain -->\n{stale}\n<!-- end tgr-hub docs -->\n\n"
        f"More prose.\n<!-- tgr-hub docs: {source} setup multi-domain -->\n<!-- end tgr-hub docs -->\n"
    )
    assert main(["docs", "--check", str(doc)]) == 1  # stale: reported, not changed
    assert stale in doc.read_text()
    assert main(["docs", str(doc)]) == 0
    text = doc.read_text()
    assert stale not in text and "Prose the command leaves alone." in text and "More prose." in text
    # the block holds exactly what results.md holds for that section
    accuracy = "\n".join(bm.report.SECTIONS["accuracy"](report, "multi-domain")).strip("\n")
    assert f"<!-- tgr-hub docs: {source} accuracy multi-domain -->\n{accuracy}\n<!-- end tgr-hub docs -->" in text
    assert accuracy in (tmp_path / "bench" / "results.md").read_text()
    # TGR: pooled mean (0.5 + 0.6 + 0.3 + 0.5 + 0.6 + 0.4) / 6; paired difference (0.1, 0.1, 0) on each seed
    assert "| TGR | 48.33 ± " in accuracy and "+6.67" in accuracy
    assert "Noise floor" in accuracy and "preset smoke" in text
    assert main(["docs", "--check", str(doc)]) == 0  # refilled: idempotent
    # one scenario: the across-scenarios block is empty rather than an error
    assert regenerate_blocks(f"<!-- tgr-hub docs: {source} across-scenarios all -->\nx\n<!-- end tgr-hub docs -->",
                             doc.parent) == f"<!-- tgr-hub docs: {source} across-scenarios all -->\n\n<!-- end tgr-hub docs -->"
    capsys.readouterr()
    # a block naming a missing report, an unknown section or scenario is an error, not a silent skip
    for bad, message in (("missing.json accuracy multi-domain", "does not exist"),
                         (f"{source} nonsense multi-domain", "unknown section"),
                         (f"{source} accuracy standard", "no scenario 'standard'"),
                         (f"{source} across-scenarios multi-domain", "takes the scenario 'all'"),
                         (f"{source} accuracy all", "takes the scenario 'all'")):
        doc.write_text(f"<!-- tgr-hub docs: {bad} -->\n<!-- end tgr-hub docs -->\n")
        with pytest.raises(BenchmarkError, match=message):
            regenerate_blocks(doc.read_text(), doc.parent)
    assert main(["docs", str(tmp_path / "nope.md")]) == 2
    assert "no such markdown file" in capsys.readouterr().err


def test_the_report_shows_each_methods_gradient_statistics_when_cells_recorded_them(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1), ("erm", "tgr"))
    digest = bm.grid.json_digest(bm.grid.settings_of(cfg, scenario))
    curves = {
        "erm": {0: [[0, 4.0], [10, 2.0]], 1: [[0, 6.0], [10, 3.0]]},
        "tgr": {0: [[0, 4.0], [10, 1.0]], 1: [[0, 6.0], [10, 2.0]]},
    }
    for method, per_seed in curves.items():
        for seed, points in per_seed.items():
            _fake_cell(tmp_path, "multi-domain", seed, method, [0.5, 0.6], digest, val={"best_step": 10},
                       gradients={"grad_P": points, "grad_cosine": [[0, 0.1], [10, 0.2 + seed / 10]]})
    _fake_cell(tmp_path, "multi-domain", 0, "erm", [0.5, 0.6], digest)  # no curves in this cell: left out
    report = bm.summarize(spec, tmp_path)
    assert report["scenarios"]["multi-domain"]["methods"]["tgr"]["gradients"]["1"]["grad_P"] == [[0, 6.0], [10, 2.0]]
    lines = bm.report.SECTIONS["gradients"](report, "multi-domain")
    assert "| ERM | 1 | 6 → 3 (steps 0 → 10) | 0.1 → 0.3 (steps 0 → 10) | n/a |" in lines
    assert "| TGR | 0, 1 | 5 → 1.5 (steps 0 → 10) | 0.1 → 0.25 (steps 0 → 10) | n/a |" in lines
    assert "\n".join(lines) in bm.render_markdown(report)
    # a report without curves renders as before
    plain = tmp_path / "plain"
    for method in ("erm", "tgr"):
        for seed in (0, 1):
            _fake_cell(plain, "multi-domain", seed, method, [0.5, 0.6], digest)
    assert bm.report.SECTIONS["gradients"](bm.summarize(spec, plain), "multi-domain") == []


def test_the_repository_documents_match_their_reports(capsys):
    """README.md and docs/results.md hold exactly what `tgr-hub docs` generates from the reports they name."""
    from tgr_hub.cli.main import main

    repo = Path(__file__).resolve().parents[1]
    documents = [repo / "README.md", repo / "docs" / "results.md"]
    assert all("<!-- tgr-hub docs:" in path.read_text() for path in documents)  # they do name reports
    assert main(["docs", "--check", *map(str, documents)]) == 0, capsys.readouterr().out


def test_the_quick_presets_settings_digest_is_pinned() -> None:
    """Every finished cell records this digest, and a folder whose cells carry another is refused. A new
    setting whose default changes nothing (or a new peer's section) must leave it alone, so existing
    benchmark folders stay valid; a change here must be a deliberate change of numbers, and stated.
    (The standard value is that of the cells in docs/benchmark/faithful, made on 2026-12-04 and -05.)"""
    cfg = load_config("quick")
    digests = {name: bm.grid.json_digest(bm.grid.settings_of(cfg, bm.scenario_from_name(name, cfg)))
               for name in ("standard", "multi-domain")}
    assert digests == {
        "standard": "d279abe137e0ea7eab2c872d0d0dd7780d6f70c0db99f4afe249322e191e2131",
        "multi-domain": "b4c1a8421cf850af988e5fec5f2defaa8917a629605aebe5b8712d29fa31dfb1",
    }


def test_the_default_methods_are_all_but_the_peers() -> None:
    """A plain ``tgr-hub benchmark`` runs TGR's methods and baselines; the peers, whose steps cost 8 to
    100 ERM steps, run only when named."""
    from cli.cmd_benchmark import spec_from_args
    from cli.main import build_parser

    spec = spec_from_args(build_parser().parse_args(["benchmark", "--preset", "smoke"]))
    assert set(spec.methods) == {name for name, method in bm.METHODS.items() if method.kind != "peer"}
    assert {"erm", "erm-replicate", "tgr", "igr-no-groups", "groups-no-igr"} <= set(spec.methods)
    named = spec_from_args(build_parser().parse_args(["benchmark", "--preset", "smoke", "--methods", "erm,free"]))
    assert named.methods == ("erm", "free")


@pytest.mark.slow
def test_the_val_sweep_trains_variants_on_a_benchmark_seed_and_reads_its_own_tgr_run(bench, tmp_path) -> None:
    """bench/bench_val_sweep.py: a variant trains TGR from the seed's pool and recovery with its overrides
    and reports meta-validation's choice; the variant without overrides is the benchmark's own cell."""
    import importlib.util

    from scipy import stats as sps

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_val_sweep.py"
    loader = importlib.util.spec_from_file_location("bench_val_sweep", path)
    sweep = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(sweep)

    out = _copy(bench[0], tmp_path)
    cell = json.loads((out / "cells" / "config" / "seed-0" / "tgr.json").read_text())
    own = sweep.chosen_state(out, tmp_path / "sweep", "config", 0, "default", [])
    assert own["trained_now"] is False and own["run_folder"].endswith("tgr") and own["val_curve"][0][0] == 0
    assert (own["best_step"], own["accuracy"]) == (cell["val"]["best_step"], cell["val"]["accuracy"])
    kd = sweep.chosen_state(out, tmp_path / "sweep", "config", 0, "kd", ["train.distill_weight=1"])
    assert kd["trained_now"] is True and 0 <= kd["accuracy"] <= 1
    record = RunRecord.read(Path(kd["run_folder"]) / "tgr_config.json")
    assert record.config["train"]["distill_weight"] == 1 and record.config["seed"] == 0
    assert set(record.metrics) == {"val"}  # meta-validation only: nothing scored on meta-test
    assert (Path(kd["run_folder"]) / "recovered").is_dir()  # it started from the seed's recovered tasks
    assert kd["continued_from"] is None  # another setting: trained from step 0
    assert Path(kd["run_folder"]).parent.name == "tgr"  # each method's variants in their own folder
    # a longer variant continues the cell's own run from its last checkpoint, to what training from step 0 gives
    longer = sweep.chosen_state(out, tmp_path / "sweep", "config", 0, "long", ["train.iterations=6"])
    assert longer["continued_from"] == 4 and [s for s, _ in longer["val_curve"]] == [0, 2, 4, 6]
    assert longer["val_curve"][:3] == own["val_curve"]
    no_checkpoints = out / "config" / "seed-0" / "tgr" / "checkpoints"
    shutil.rmtree(no_checkpoints)
    scratch = sweep.chosen_state(out, tmp_path / "sweep", "config", 0, "long-from-0", ["train.iterations=6"])
    assert scratch["continued_from"] is None
    assert (scratch["val_curve"], scratch["best_step"], scratch["accuracy"]) == (
        longer["val_curve"], longer["best_step"], longer["accuracy"])
    # the summary: the paired difference over seeds, by hand
    rows = [{"variant": v, "seed": s, "accuracy": a} for v, s, a in
            [("a", 0, 0.50), ("a", 1, 0.55), ("a", 2, 0.40), ("b", 0, 0.52), ("b", 1, 0.58), ("b", 2, 0.41)]]
    line = next(line for line in sweep.summarize(rows, ["a", "b"]) if line.startswith("| b |"))
    d = np.array([2.0, 3.0, 1.0])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}], p {sps.ttest_1samp(d, 0).pvalue:.3f}" in line
