"""`tgr-hub benchmark`: paired statistics, identical episodes, resume, shards, and the quickstart on top."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tgr_hub import benchmark as bm
from tgr_hub import stats
from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.evaluate import evaluate_model, random_baseline

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
               seen: str = "same") -> None:
    path = out / "cells" / scenario / f"seed-{seed}" / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "format": bm.CELL_FORMAT, "scenario": scenario, "seed": seed, "method": method, "settings_digest": digest,
        "accuracies": {"1shot": accuracies},
        "episodes": {"1shot": {"count": len(accuracies), "list": f"list-{seed}", "seen": f"{seen}-{seed}"}},
        "timings_s": {"train": 1.0, "evaluate": 1.0},
    }))


def test_summarize_pairs_each_seed_and_takes_a_t_interval_over_seed_means(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=["eval.shots=[1]"])
    scenario = bm.Scenario("multi-domain", ("latin",), ("conv4",))
    spec = bm.BenchmarkSpec(cfg, (scenario,), (0, 1, 2), ("erm", "tgr"))
    digest = bm._digest(bm._settings(cfg, scenario))
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
    with pytest.raises(bm.BenchmarkError, match="identical episodes"):
        bm.summarize(spec, tmp_path)


def test_method_configs_are_the_ablations() -> None:
    cfg = load_config("smoke")
    assert cfg.train.beta > 0
    expected = {
        "erm": (0.0, "none", "first"), "tgr": (cfg.train.beta, "spectral", "first"),
        "groups-no-igr": (0.0, "spectral", "first"), "igr-no-groups": (cfg.train.beta, "none", "first"),
        "igr-random-groups": (cfg.train.beta, "random", "first"),
        "tgr-second-order": (cfg.train.beta, "spectral", "second"),
    }
    for name, (beta, strategy, order) in expected.items():
        run = bm.method_config(cfg, bm.METHODS[name], seed=7)
        assert (run.train.beta, run.group.strategy, run.train.igr_order, run.seed) == (beta, strategy, order, 7), name
    with pytest.raises(bm.ConfigError, match="reference"):
        bm.BenchmarkSpec(cfg, (bm.scenario_from_name("multi-domain", cfg),), (0,), ("tgr",), reference="erm")
    with pytest.raises(bm.ConfigError, match="unknown scenario"):
        bm.scenario_from_name("multi-everything", cfg)


# --- a real smoke benchmark ---------------------------------------------------------------------------

METHODS = ("random", "average", "erm", "tgr")
SEEDS = (0, 1)


def _spec(**overrides) -> bm.BenchmarkSpec:
    cfg = load_config("smoke")
    return bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), SEEDS, METHODS, **overrides)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """One smoke benchmark (config pool, 2 seeds, 4 methods), run once for the module; tests copy it."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    finished: list = []
    report = bm.run_benchmark(_spec(), out, progress=False, on_cell=lambda cell, rec: finished.append((cell.key, rec)))
    return out, report, finished


def _copy(bench_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bench"
    shutil.copytree(bench_dir, target)
    return target


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


def test_trained_methods_share_the_recovered_tasks_and_differ_only_in_their_settings(bench) -> None:
    out, report, _ = bench
    for seed in SEEDS:
        folder = out / "config" / f"seed-{seed}"
        shared = (folder / "shared" / "recovered" / "bank.safetensors").read_bytes()
        for method in ("erm", "tgr"):
            assert (folder / method / "recovered" / "bank.safetensors").read_bytes() == shared
        erm = json.loads((folder / "erm" / "tgr_config.json").read_text())
        tgr = json.loads((folder / "tgr" / "tgr_config.json").read_text())
        assert erm["seed"] == tgr["seed"] == seed
        assert erm["train"]["beta"] == 0.0 and erm["group"]["strategy"] == "none" and len(erm["groups"]) == 1
        assert tgr["train"]["beta"] > 0 and tgr["group"]["strategy"] == "spectral"
    sc = report["scenarios"]["config"]
    assert set(sc["paired"]) == {"random", "average", "tgr"}
    d = sc["paired"]["tgr"]["5shot"]
    assert d["across_seeds"]["n"] == 2
    assert d["across_seeds"]["mean"] == pytest.approx(np.mean([d["per_seed"][str(s)]["mean"] for s in SEEDS]))
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "| TGR |" in md and "− ERM" in md and "seeds ± " in md


def test_resume_skips_finished_cells_and_an_interruption_loses_only_the_cell_in_flight(bench, tmp_path, monkeypatch):
    out = _copy(bench[0], tmp_path)
    ran: list[str] = []
    real_run = bm._Runner.run

    def counting_run(self, cell):
        ran.append(cell.key)
        return real_run(self, cell)

    monkeypatch.setattr(bm._Runner, "run", counting_run)
    bm.run_benchmark(_spec(), out, progress=False)
    assert ran == []  # everything finished: nothing runs again

    cells = bm.plan_cells(_spec())
    lost = [cells[0], cells[2]]  # seed 0: random and erm
    before = {c.key: json.loads(bm._cell_path(out, c).read_text()) for c in lost}
    for cell in lost:
        bm._cell_path(out, cell).unlink()

    def interrupted_run(self, cell):  # Ctrl-C while the second missing cell is being computed
        ran.append(cell.key)
        if len(ran) == 2:
            raise KeyboardInterrupt
        return real_run(self, cell)

    monkeypatch.setattr(bm._Runner, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(_spec(), out, progress=False)
    assert ran == [lost[0].key, lost[1].key]
    assert bm._cell_path(out, lost[0]).exists() and not bm._cell_path(out, lost[1]).exists()

    ran.clear()
    monkeypatch.setattr(bm._Runner, "run", counting_run)
    report = bm.run_benchmark(_spec(), out, progress=False)
    assert ran == [lost[1].key]
    assert report["missing_cells"] == []
    for cell in lost:  # recomputed cells give the same accuracies
        assert json.loads(bm._cell_path(out, cell).read_text())["accuracies"] == before[cell.key]["accuracies"]


def test_shards_share_the_grid_and_the_report_merges_them(bench, tmp_path, monkeypatch):
    out = _copy(bench[0], tmp_path)
    cells = bm.plan_cells(_spec())
    for cell in cells[:2]:  # seed 0: random (position 0) and average (position 1)
        bm._cell_path(out, cell).unlink()
    ran: list[str] = []
    real_run = bm._Runner.run
    monkeypatch.setattr(bm._Runner, "run", lambda self, cell: (ran.append(cell.key), real_run(self, cell))[1])
    partial = bm.run_benchmark(_spec(), out, shard=(1, 2), progress=False)
    assert ran == [cells[1].key]
    assert partial["missing_cells"] == [cells[0].key]
    assert "Not finished yet" in (out / "results.md").read_text()
    merged = bm.run_benchmark(_spec(), out, shard=(0, 2), progress=False)
    assert ran == [cells[1].key, cells[0].key]
    assert merged["missing_cells"] == []
    with pytest.raises(bm.ConfigError, match="shard"):
        bm.run_benchmark(_spec(), out, shard=(2, 2), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch every process would run every cell
    with pytest.raises(bm.ConfigError, match="accelerate launch"):
        bm.run_benchmark(_spec(), out, progress=False)


def test_a_folder_of_other_settings_is_refused(bench, tmp_path) -> None:
    out = _copy(bench[0], tmp_path)
    cfg = load_config("smoke", overrides=["eval.episodes=12"])
    spec = bm.BenchmarkSpec(cfg, (bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg),), SEEDS, METHODS)
    with pytest.raises(bm.BenchmarkError, match="other settings"):
        bm.run_benchmark(spec, out, progress=False)


def test_a_cell_whose_episodes_or_data_would_differ_from_its_finished_neighbours_is_refused_before_training(
        bench, tmp_path, monkeypatch) -> None:
    out = _copy(bench[0], tmp_path)
    cells = bm.plan_cells(_spec())
    bm._cell_path(out, cells[2]).unlink()  # seed 0, erm: to be run again
    neighbour = bm._cell_path(out, cells[0])  # seed 0, random: finished
    original = json.loads(neighbour.read_text())
    monkeypatch.setattr(bm._Runner, "prepared", lambda *a: pytest.fail("trained although the data changed"))

    moved = json.loads(json.dumps(original))
    moved["data_source"]["revision"] = "0" * 40  # as if the dataset's branch had moved since
    neighbour.write_text(json.dumps(moved))
    with pytest.raises(bm.BenchmarkError, match=r"differ from those of the finished cell .*random\.json.*@0000"):
        bm.run_benchmark(_spec(), out, progress=False)

    other = json.loads(json.dumps(original))
    other["episodes"]["1shot"]["list"] = "f" * 64  # other episode indices (e.g. another class split)
    neighbour.write_text(json.dumps(other))
    with pytest.raises(bm.BenchmarkError, match="meta-test episodes of"):
        bm.run_benchmark(_spec(), out, progress=False)
    assert not bm._cell_path(out, cells[2]).exists()

    neighbour.write_text(json.dumps(original))  # the control: unchanged neighbours let it run
    monkeypatch.undo()
    assert bm.run_benchmark(_spec(), out, progress=False)["missing_cells"] == []


def test_the_report_shows_the_checkpoint_meta_validation_chose_and_the_groups(bench) -> None:
    out, report, finished = bench
    markdown = (out / "results.md").read_text()
    methods = report["scenarios"][bm.CONFIG_SCENARIO]["methods"]
    for key, record in finished:
        chosen = methods[record["method"]].get("selection", {}).get(str(record["seed"]))
        if record["method"] in ("random", "average"):
            assert chosen is None  # nothing was selected for the baselines
            continue
        assert chosen == {"val": record["val"], "group_sizes": [len(g) for g in record["groups"]]}
        label = bm.METHODS[record["method"]].label
        assert f"| {label} | {record['seed']} | {record['val']['best_step']} | " in markdown


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
    monkeypatch.setattr(bm._Runner, "run", lambda self, cell: pytest.fail(f"{cell.key} was finished already"))
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
    monkeypatch.setattr(bm, "load_split", fake_load_split)
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
        bm._Runner(spec, tmp_path / "bench", progress=False).pool_list(spec.scenarios[0], 0)
    data = seen["make_pool"]["data"]
    assert data.image_size == 20 and data.class_split == str(split_file)


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
    runner = bm._Runner(spec, tmp_path / "bench", progress=False)
    record = runner.run(bm.plan_cells(spec)[0])
    assert len(calls) == 1
    assert (calls[0]["learner"], calls[0]["inner_steps"], calls[0]["inner_lr"]) == ("finetune", 2, 0.05)
    assert record["adaptation"] == "finetune" and len(record["accuracies"]["1shot"]) == 3
