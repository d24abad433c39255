"""``tgr_hub.analyze`` and ``tgr-hub analyze``: CKA against closed forms and a hand computation, the
overlap ladder's exact shared-class counts, the Fisher dissimilarity falling with class overlap,
and both analyses on a pool served by the test Hub over real HTTP."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tgr_hub.analyze import (
    _ladder_index,
    TeacherInfo,
    cka_matrix,
    fisher_validation,
    ladder_specs,
    linear_cka,
    plan_overlap_ladder,
    run_fisher,
)
from tgr_hub.config import PoolBuildConfig, load_config
from tgr_hub.errors import AnalysisError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_features(d, d, seed))
    return q


# --- CKA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(200, 12), (15, 40)])  # feature form (n > d) and Gram form (n < d)
def test_cka_is_one_for_identical_rotated_and_scaled_features(n: int, d: int) -> None:
    x = _features(n, d, 0) + 3.0  # an offset: CKA centres
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x, x @ _orthogonal(d, 1)) == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x.float(), (0.01 * x @ _orthogonal(d, 2)).float()) == pytest.approx(1.0, abs=1e-5)
    # not invariant to an anisotropic scale: the closed forms above are not vacuous
    assert linear_cka(x, x * torch.linspace(0.1, 10.0, d, dtype=torch.float64)) < 0.95


def test_cka_of_independent_features_is_near_zero() -> None:
    assert linear_cka(_features(4000, 8, 3), _features(4000, 6, 4)) < 0.1


def test_cka_by_hand_on_a_tiny_matrix() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1.0], [2.0], [4.0]])
    # centred: Yᵀ X = (1/3, 4/3), ‖XᵀX‖_F = √90 / 9, ‖YᵀY‖_F = 42 / 9  =>  CKA = (17/9) / (√90/9 · 42/9)
    assert linear_cka(x, y) == pytest.approx(153 / (42 * math.sqrt(90)), rel=1e-12)
    # and HSIC with explicit kernels and centring matrix
    h = np.eye(3) - 1 / 3
    k, l_ = (x @ x.T).numpy(), (y @ y.T).numpy()
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    assert linear_cka(x, y) == pytest.approx(hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_)), rel=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)


def test_cka_matrix_and_bad_inputs() -> None:
    x = _features(50, 4, 5)
    m = cka_matrix([x, 2 * x, _features(50, 3, 6)])
    assert m.shape == (3, 3) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(1.0, abs=1e-9) and m[0, 2] < 0.5
    assert math.isnan(linear_cka(torch.ones(5, 2), x[:5]))  # a constant representation: undefined
    with pytest.raises(AnalysisError, match="same examples"):
        linear_cka(x, x[:10])
    with pytest.raises(AnalysisError, match=r"\[n, d\]"):
        linear_cka(x.flatten(), x)
    with pytest.raises(AnalysisError, match="NaN"):
        linear_cka(torch.full((4, 2), float("nan")), x[:4])


# --- the overlap ladder ---------------------------------------------------------------------------


def test_overlap_ladder_shares_exactly_round_p_way_classes() -> None:
    classes = list(range(100, 118))
    fractions = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    pairs = plan_overlap_ladder(classes, way=5, fractions=fractions, seed=3, repeats=2)
    assert [shared for shared, _, _ in pairs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for shared, a, b in pairs:
        assert len(a) == len(set(a)) == 5 and len(b) == len(set(b)) == 5
        assert set(a) <= set(classes) and set(b) <= set(classes)
        assert len(set(a) & set(b)) == shared
    assert pairs == plan_overlap_ladder(classes, way=5, fractions=fractions, seed=3, repeats=2)
    assert pairs != plan_overlap_ladder(classes, way=5, fractions=fractions, seed=4, repeats=2)
    # 3-way teachers: round(P * 3) shared
    assert [s for s, a, b in plan_overlap_ladder(classes, way=3, fractions=[0.5, 0.9], seed=0)] == [2, 3]
    with pytest.raises(AnalysisError, match="needs 10 classes"):
        plan_overlap_ladder(range(9), way=5, fractions=[0.0], seed=0)
    with pytest.raises(AnalysisError, match=r"in \[0, 1\]"):
        plan_overlap_ladder(classes, way=5, fractions=[1.5], seed=0)


def test_ladder_specs_add_architecture_and_domain_pairs() -> None:
    names = [f"latin/{i}" for i in range(12)] + [f"greek/{i}" for i in range(6)]
    domains = ["latin"] * 12 + ["greek"] * 6
    pool = PoolBuildConfig(domains=["latin", "greek"], archs=["conv4", "resnet10t"], way=4, epochs=1)
    specs, pairs = ladder_specs(names, domains, pool, seed=0, fractions=[0.0, 0.5, 1.0], image_size=32,
                                dataset="glyphs", data_seed=0)
    by_name = {s.name: s for s in specs}
    assert [p.kind for p in pairs] == ["overlap"] * 3 + ["architecture", "domain"]
    assert len(specs) == 10 and len(by_name) == 10 and [s.index for s in specs] == list(range(10))
    for pair in pairs:
        a, b = by_name[pair.a], by_name[pair.b]
        assert len(set(a.classes) & set(b.classes)) == pair.shared
        assert a.label_names == [names[c] for c in a.classes]
    arch = next(p for p in pairs if p.kind == "architecture")
    assert by_name[arch.a].classes == by_name[arch.b].classes
    assert (by_name[arch.a].architecture, by_name[arch.b].architecture) == ("conv4", "resnet10t")
    dom = next(p for p in pairs if p.kind == "domain")
    assert (by_name[dom.a].domain, by_name[dom.b].domain) == ("latin", "greek")
    assert all(names[c].startswith("greek/") for c in by_name[dom.b].classes)


def test_ladder_names_stay_distinct_with_three_domains_and_three_architectures() -> None:
    names = [f"{d}/{i}" for d in ("latin", "greek", "symbols") for i in range(8)]
    domains = [n.split("/")[0] for n in names]
    pool = PoolBuildConfig(domains=["latin", "greek", "symbols"], archs=["conv4", "resnet10t", "resnet18"], way=4,
                           epochs=1)
    specs, pairs = ladder_specs(names, domains, pool, seed=0, fractions=[0.0, 1.0], repeats=2, image_size=32,
                                dataset="glyphs", data_seed=0)
    assert len({s.name for s in specs}) == len(specs)  # the ladder of the quick preset's pool failed here once
    assert sorted(p.kind for p in pairs).count("architecture") == 2 * 2 and sum(p.kind == "domain" for p in pairs) == 4


# --- Fisher validation ------------------------------------------------------------------------------


def test_fisher_validation_statistics_on_a_constructed_matrix() -> None:
    # two domains, teachers 0-3 on latin, 4-5 on greek; dissimilarity = 1 - overlap/2, cross domain 0.9
    labels = [["l/a", "l/b"], ["l/a", "l/c"], ["l/d", "l/e"], ["l/a", "l/b"], ["g/x", "g/y"], ["g/x", "g/z"]]
    teachers = [TeacherInfo(f"t{i}", "conv4" if i != 3 else "resnet10t", lab[0].split("/")[0], lab)
                for i, lab in enumerate(labels)]
    n = len(teachers)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                shared = len(set(labels[i]) & set(labels[j])) / 2
                d[i, j] = 0.9 if teachers[i].domain != teachers[j].domain else 0.6 - 0.5 * shared
    result = fisher_validation(d, teachers, num_groups=2, n_init=5, seeds=range(4))
    assert result.spearman["rho"] < -0.5 and result.spearman["pairs"] == 15
    assert [lv["overlap"] for lv in result.by_overlap] == [0.0, 0.5, 1.0]
    assert result.domain_means["cross"] == {"mean": pytest.approx(0.9), "pairs": 8}
    assert result.domain_means["within_disjoint"]["mean"] == pytest.approx(0.6)
    assert result.architecture["cross"] == {"mean": pytest.approx(0.1), "pairs": 1}
    assert result.architecture["same"]["pairs"] == 0
    assert len(result.group_sizes) == 4 and all(sum(s) == n for s in result.group_sizes)
    assert -1.0 <= result.stability["ari_min"] <= result.stability["ari_mean"] <= 1.0
    json.dumps(result.to_dict(), allow_nan=False)  # no NaN reaches the JSON
    with pytest.raises(AnalysisError, match="at least 2"):
        fisher_validation(np.zeros((1, 1)), teachers[:1], num_groups=1)


@pytest.mark.slow
def test_fisher_dissimilarity_falls_as_class_overlap_grows(tmp_path: Path) -> None:
    """A tiny ladder (5-way conv4 teachers, 3 epochs) per seed: rho(overlap, dissimilarity) < 0 in each.

    The tasks are embedded on real images of each teacher's classes (``images="real"``): this
    tests the Fisher dissimilarity itself. (On recovered tasks of such tiny teachers the trend is
    much weaker; the analysis measures that, it is not asserted here.)
    """
    rhos = []
    for seed in (0, 1, 2):
        cfg = load_config(preset="smoke", values={
            "seed": seed, "pool": {"domains": ["latin"], "archs": ["conv4"], "way": 5, "epochs": 3},
            "embed": {"max_samples": 150, "head_steps": 30}})
        out = tmp_path / f"seed{seed}"
        result = run_fisher(None, out, cfg, images="real", seeds=3, progress=False)
        rhos.append(result.spearman["rho"])
        assert result.spearman["pairs"] == 66  # 6 ladder pairs: 12 teachers
        means = {lv["overlap"]: lv["mean"] for lv in result.by_overlap}
        assert means[1.0] < means[0.0]
        saved = json.loads((out / "fisher.json").read_text())
        assert saved["images"] == "real" and saved["spearman"]["rho"] == pytest.approx(result.spearman["rho"])
        assert (out / "fisher.png").read_bytes()[:8] == PNG
        ladder = json.loads((out / "ladder-pool" / "ladder.json").read_text())
        assert [p["shared"] for p in ladder["pairs"]] == [0, 1, 2, 3, 4, 5]
    assert all(rho < 0 for rho in rhos), rhos


# --- the CLI on a Hub pool ------------------------------------------------------------------------


def _tgr_hub(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "tgr_hub.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def saved_names(out: Path) -> list[str]:
    return sorted(json.loads((out / "cka.json").read_text())["names"])


@pytest.mark.slow
def test_analyze_cka_fisher_and_gradients_on_a_hub_pool(tiny_pool: Path, hub, hf_token, hub_cache, tmp_path: Path,
                                              monkeypatch) -> None:
    from tgr_hub.hub import push_pool

    pool = tmp_path / "analyze-pool"
    shutil.copytree(tiny_pool.parent, pool)
    push_pool(pool, "tgr-org", progress=False)
    hub_list = pool / "repo-list-hub.txt"
    monkeypatch.delenv("HF_TOKEN")  # public teachers: reading needs no token
    out = tmp_path / "analysis"
    done = _tgr_hub("analyze", "cka", "--pool", str(hub_list), "--out", str(out), "--preset", "smoke",
                    "--images", "120")
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.requests_matching("analyze-pool-t00")  # the teachers came over HTTP
    saved = json.loads((out / "cka.json").read_text())
    assert {"names", "architectures", "cka", "dissimilarity", "spearman", "probe", "feature_dims", "seconds"} <= set(saved)
    assert saved["names"] == ["analyze-pool-t00", "analyze-pool-t01", "analyze-pool-t02", "analyze-pool-t03"]
    cka = np.array(saved["cka"], dtype=np.float64)
    assert cka.shape == (4, 4) and np.allclose(np.diag(cka), 1.0) and ((cka >= 0) & (cka <= 1)).all()
    assert saved["probe"]["source"] == "recovered" and saved["probe"]["images"] == 120
    assert saved["spearman"]["pairs"] == 6 and {"rho", "p"} <= set(saved["spearman"])
    assert (out / "cka.png").read_bytes()[:8] == PNG
    assert "Spearman rho(1 - CKA, Fisher dissimilarity)" in done.stdout

    real = _tgr_hub("analyze", "cka", "--pool", str(hub_list), "--out", str(out), "--preset", "smoke",
                    "--dataset", "glyphs", "--images", "60")
    assert real.returncode == 0, real.stderr[-3000:]
    assert json.loads((out / "cka.json").read_text())["probe"]["source"] == "glyphs:test"

    fisher = _tgr_hub("analyze", "fisher", "--pool", str(hub_list), "--out", str(out), "--preset", "smoke")
    assert fisher.returncode == 0, fisher.stderr[-3000:]
    saved = json.loads((out / "fisher.json").read_text())
    assert {"pairs", "spearman", "by_overlap", "domain_means", "stability", "group_sizes"} <= set(saved)
    assert len(saved["stability"]["seeds"]) == 10 and len(saved["group_sizes"]) == 10
    assert saved["domain_means"]["cross"]["pairs"] == 4  # 2 latin, 2 greek teachers
    assert (out / "fisher.png").read_bytes()[:8] == PNG

    # the gradient dynamics on the same Hub teachers (their recovered tasks reused from the folder)
    gradients = _tgr_hub("analyze", "gradients", "--pool", str(hub_list), "--out", str(out), "--preset", "smoke",
                         "--iterations", "2", "--every", "1", "--probe-groups", "1")
    assert gradients.returncode == 0, gradients.stderr[-3000:]
    traces = json.loads((out / "gradients.json").read_text())["methods"]
    assert list(traces) == ["erm", "tgr"] and all(t["steps"] == [0, 1, 2] for t in traces.values())
    assert sorted(n for g in traces["tgr"]["groups"] for n in g) == saved_names(out)
    assert (out / "gradients.png").read_bytes()[:8] == PNG


def test_fewer_than_two_teachers_is_one_line_and_a_nonzero_exit(tmp_path: Path, capsys) -> None:
    from tgr_hub.cli.main import main

    listing = tmp_path / "one.txt"
    listing.write_text("./t00\n")
    for analysis in ("cka", "fisher"):
        code = main(["analyze", analysis, "--pool", str(listing), "--out", str(tmp_path / "out")])
        captured = capsys.readouterr()
        assert code == 2
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tgr-hub: error:") and "at least 2" in lines[0]
        assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()  # refused before any work


# --- gradient dynamics ------------------------------------------------------------------------------


def test_gradient_spread_by_hand() -> None:
    from tgr_hub.analyze import gradient_spread

    # g1 = (1, 0), g2 = (0, 1), g3 = (1, 1), split over a [1, 1] and a [1] tensor; ḡ = (2/3, 2/3)
    grads = [{"w": torch.tensor([[a]]), "b": torch.tensor([b])} for a, b in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))]
    stats = gradient_spread(grads)
    # g_i − ḡ = (1/3, −2/3), (−2/3, 1/3), (1/3, 1/3): squared norms 5/9, 5/9, 2/9; P = (1/6)(12/9) = 2/9
    assert stats.P == pytest.approx(2 / 9, rel=1e-12)
    # cos(g1, g2) = 0, cos(g1, g3) = cos(g2, g3) = 1/√2: mean √2/3
    assert stats.cosine == pytest.approx(math.sqrt(2) / 3, rel=1e-12)
    # (√5/3 + √5/3 + √2/3)/3 / ‖ḡ‖ with ‖ḡ‖ = 2√2/3: (√10 + 1)/6
    assert stats.relative_spread == pytest.approx((math.sqrt(10) + 1) / 6, rel=1e-12)
    assert stats.mean_norm == pytest.approx(2 * math.sqrt(2) / 3, rel=1e-12)
    assert stats.task_norm == pytest.approx((2 + math.sqrt(2)) / 3, rel=1e-12)
    # float32 tensors of several shapes against a numpy loop over the concatenation, in float64
    gen = torch.Generator().manual_seed(0)
    many = [{"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)} for _ in range(4)]
    flat = np.stack([np.concatenate([g["a"].double().numpy().ravel(), g["b"].double().numpy()]) for g in many])
    mean = flat.mean(0)
    cosines = [flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
               for i in range(4) for j in range(i + 1, 4)]
    got = gradient_spread(many)
    assert got.P == pytest.approx(((flat - mean) ** 2).sum() / 8, rel=1e-9)
    assert got.cosine == pytest.approx(np.mean(cosines), rel=1e-9)
    spread = np.linalg.norm(flat - mean, axis=1).mean() / np.linalg.norm(mean)
    assert got.relative_spread == pytest.approx(spread, rel=1e-9)
    assert math.isnan(gradient_spread(grads[:1]).cosine) and gradient_spread(grads[:1]).P == 0.0
    with pytest.raises(AnalysisError, match="at least one"):
        gradient_spread([])
    with pytest.raises(AnalysisError, match="same parameters"):
        gradient_spread([grads[0], {"w": torch.zeros(1, 1)}])


def _conflicting_probe(way: int = 5):
    """4 tasks on the same 15 images of 16 px, each naming the classes in its own (random) order."""
    from tgr_hub.analyze import GradientProbe
    from tgr_hub.metamodel import create_meta_model
    from tgr_hub.data import Episode
    from tgr_hub.train import make_task_head

    gen = torch.Generator().manual_seed(0)
    support_x, query_x = torch.rand(way, 3, 16, 16, generator=gen), torch.rand(2 * way, 3, 16, 16, generator=gen)
    support_y, query_y = torch.arange(way), torch.arange(way).repeat_interleave(2)
    tasks = []
    for _ in range(4):
        order = torch.randperm(way, generator=gen)
        uniform = torch.full((3 * way, way), 1 / way)  # teacher probabilities: unused without distillation
        tasks.append(Episode(support_x, order[support_y], query_x, order[query_y], list(range(way)), teacher_probs=uniform))
    model = create_meta_model("conv4", image_size=16, seed=0).train()
    return model, GradientProbe([tasks], [[0, 1, 2, 3]], make_task_head(model.feature_dim, way, 0))


def test_igr_steps_lower_p_more_than_erm_steps() -> None:
    """5 SGD steps along the IGR direction (β = 0.03) against 5 along the mean gradient (β = 0), same lr and start.

    Measured: ERM leaves P at about 23 (from 30), IGR takes it to about 6; with the displacement's sign
    flipped (θ − β(g_i − ḡ), planted in igr.displaced_params) P ends near 49, above ERM's.
    """
    from tgr_hub.analyze import probe_loss_fns, probe_statistics
    from tgr_hub.igr import igr_direction
    from tgr_hub.learners import make_learner

    learner = make_learner("protonet")
    ends = {}
    for beta in (0.0, 0.03):
        model, probe = _conflicting_probe()
        start = probe_statistics(model, probe, learner, "head")
        params = dict(model.named_parameters())
        for _ in range(5):
            fns = probe_loss_fns(model, probe.tasks[0], learner, "head", probe.head)
            direction = igr_direction(fns, {k: v.detach() for k, v in params.items()}, beta).direction
            with torch.no_grad():
                for name, parameter in params.items():
                    parameter -= 0.05 * direction[name]
        ends[beta] = probe_statistics(model, probe, learner, "head")
    assert start.P == pytest.approx(30.4, rel=0.05)  # the shared start: the head loss has conflict
    assert ends[0.0].P < start.P and ends[0.03].P < start.P
    assert ends[0.03].P < 0.5 * ends[0.0].P, (ends[0.0], ends[0.03])
    assert ends[0.03].cosine > ends[0.0].cosine


def test_probe_statistics_leave_the_model_alone_and_offer_both_losses() -> None:
    from tgr_hub.analyze import probe_statistics
    from tgr_hub.learners import make_learner

    model, probe = _conflicting_probe()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = probe.head.weight.clone()
    probe.tasks.append(probe.tasks[0][::-1])  # K = 2 groups: the mean of two identical measurements
    stats = probe_statistics(model, probe, make_learner("protonet"), "head")
    assert not model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats included
    assert all(p.grad is None for p in model.parameters()) and torch.equal(probe.head.weight, head)
    single = probe_statistics(model, type(probe)(probe.tasks[:1], probe.teachers, probe.head), make_learner("protonet"))
    assert stats.P == pytest.approx(single.P, rel=1e-9) and stats.cosine == pytest.approx(single.cosine, rel=1e-9)
    episodic = probe_statistics(model, probe, make_learner("protonet"), "episodic")
    assert math.isfinite(episodic.P) and episodic.P != pytest.approx(stats.P)
    with pytest.raises(AnalysisError, match="'head' or 'episodic'"):
        probe_statistics(model, probe, make_learner("protonet"), "bogus")  # type: ignore[arg-type]


@pytest.mark.slow
def test_analyze_gradients_cli_on_the_tiny_pool(tiny_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "gradients"
    done = _tgr_hub("analyze", "gradients", "--pool", str(tiny_pool), "--out", str(out), "--preset", "smoke",
                    "--iterations", "4", "--every", "2", "--probe-groups", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((out / "gradients.json").read_text())
    assert {"methods", "probe", "every", "iterations", "seconds"} <= set(saved)
    assert list(saved["methods"]) == ["erm", "tgr"] and saved["every"] == 2 and saved["iterations"] == 4
    for method, trace in saved["methods"].items():
        assert trace["steps"] == [0, 2, 4]
        for key in ("P", "cosine", "relative_spread", "mean_norm", "task_norm", "loss"):
            assert len(trace[key]) == 3 and all(v is not None and math.isfinite(v) for v in trace[key]), (method, key)
        assert all(v > 0 for v in trace["P"]) and all(-1 <= v <= 1 for v in trace["cosine"])
    erm, tgr = saved["methods"]["erm"], saved["methods"]["tgr"]
    assert erm["beta"] == 0 and tgr["beta"] == pytest.approx(1e-3) and len(erm["groups"]) == 1
    assert sorted(n for g in tgr["groups"] for n in g) == sorted(erm["groups"][0])
    # the same initialisation and probe: step 0 is measured identically for both
    assert erm["P"][0] == tgr["P"][0] and erm["cosine"][0] == tgr["cosine"][0]
    probe = saved["probe"]
    assert probe["kind"] == "head" and probe["groups"] == 2 and len(probe["teachers"]) == 2
    assert all(len(row) == probe["tasks_per_group"] == 2 for row in probe["teachers"])  # smoke: m = 2
    assert (out / "gradients.png").read_bytes()[:8] == PNG
    assert "task gradients on a fixed probe" in done.stdout


def test_analyze_gradients_refuses_one_teacher_and_unknown_methods(tmp_path: Path, capsys) -> None:
    from tgr_hub.analyze import run_gradients
    from tgr_hub.cli.main import main

    listing = tmp_path / "one.txt"
    listing.write_text("./t00\n")
    code = main(["analyze", "gradients", "--pool", str(listing), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "at least 2" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(AnalysisError, match="methods must be"):
        run_gradients(listing, tmp_path / "out", load_config(preset="smoke"), methods=("erm", "maml"))


# --- accuracy gain ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_gain_trains_basic_alone_and_with_its_auxiliary_and_pairs_their_episodes(tmp_path: Path, monkeypatch, hub,
                                                                                 hf_token, hub_cache) -> None:
    import tgr_hub.train as train_module
    from tgr_hub import stats
    from tgr_hub.analyze import run_gain, write_gain

    trained_on = []
    real = train_module.meta_train

    def recording(model, members, bank, groups, cfg, **kwargs):
        trained_on.append(([m.name for m in members], sorted(bank.teachers()), groups))
        return real(model, members, bank, groups, cfg, **kwargs)

    monkeypatch.setattr(train_module, "meta_train", recording)
    cfg = load_config(preset="smoke", values={"pool": {"domains": ["latin"], "archs": ["conv4"], "way": 5, "epochs": 2},
                                              "train": {"iterations": 2}, "eval": {"episodes": 6}})
    result = run_gain(None, tmp_path, cfg, seeds=(0, 1), fractions=(0.0, 1.0), progress=False)
    ladder = json.loads((tmp_path / "ladder-pool" / "ladder.json").read_text())
    pairs = [p for p in ladder["pairs"] if p["kind"] == "overlap"]
    assert [p["shared"] for p in pairs] == [0, 5] and len(result.rows) == 2 * len(pairs)
    # per seed: each basic teacher alone once, then basic + auxiliary; each bank holds only those teachers
    assert len(trained_on) == 2 * 2 * len(pairs)
    for names, bank_teachers, groups in trained_on:
        assert sorted(names) == bank_teachers and groups == [list(range(len(names)))]
    for row in result.rows:
        for shot in ("1shot", "5shot"):
            d = row[shot]["difference"]
            assert d["mean"] == pytest.approx(row[shot]["joint"] - row[shot]["basic"], abs=1e-12)
    # per overlap fraction: the t-interval over its rows' mean differences (here the two seeds)
    full = [r["1shot"]["difference"]["mean"] for r in result.rows if r["shared"] == 5]
    assert result.by_overlap["1"]["1shot"]["mean"] == pytest.approx(stats.across_seeds(full).mean)
    assert result.by_overlap["1"]["1shot"]["half"] == pytest.approx(stats.across_seeds(full).half)
    json_path, png_path = write_gain(result, tmp_path)
    assert json.loads(json_path.read_text())["by_overlap"].keys() == {"0", "1"}
    assert png_path.read_bytes()[:8] == PNG
    # started again (as after an interruption): every model's scores are in gain-scores.json, nothing retrains
    trained_on.clear()
    again = run_gain(None, tmp_path, cfg, seeds=(0, 1), fractions=(0.0, 1.0), progress=False)
    assert trained_on == [] and again.rows == result.rows
    # with one model's scores lost, only that model trains; other settings retrain everything
    scores = json.loads((tmp_path / "gain-scores.json").read_text())
    lost = sorted(scores["scores"])[0]
    del scores["scores"][lost]
    (tmp_path / "gain-scores.json").write_text(json.dumps(scores))
    assert run_gain(None, tmp_path, cfg, seeds=(0, 1), fractions=(0.0, 1.0), progress=False).rows == result.rows
    assert [sorted(names) for names, _, _ in trained_on] == [sorted(lost.split("@")[0].split("+"))]
    trained_on.clear()
    run_gain(None, tmp_path, cfg, seeds=(0,), fractions=(0.0, 1.0), method="tgr", progress=False)
    assert len(trained_on) == 2 * len(pairs)

    # the same ladder pushed to the Hub (its repositories named PREFIX-NAME), read back over HTTP:
    # the same models train on the same teachers and score the same
    from tgr_hub.hub import push_pool
    from tgr_hub.pool import pool_folders

    push_pool(tmp_path / "ladder-pool", "tgr-org", progress=False, teachers=pool_folders(tmp_path / "ladder-pool"))
    monkeypatch.delenv("HF_TOKEN")
    over_http = run_gain(tmp_path / "ladder-pool" / "repo-list-hub.txt", tmp_path / "hub", cfg, seeds=(0,),
                         fractions=(0.0, 1.0), progress=False)
    assert hub.requests_matching("ladder-pool-ov0of5")  # the teachers came over HTTP
    assert [r["1shot"] for r in over_http.rows] == [r["1shot"] for r in result.rows if r["seed"] == 0]
    with pytest.raises(AnalysisError, match="which the pool holds 0 times"):
        _ladder_index(["ov0of5-r0-a"], ["t00", "t01"])


def test_gain_refuses_a_pool_without_a_ladder(tiny_pool: Path, tmp_path: Path) -> None:
    from tgr_hub.analyze import run_gain

    with pytest.raises(AnalysisError, match="no ladder.json"):
        run_gain(tiny_pool, tmp_path, load_config(preset="smoke"), progress=False)
    with pytest.raises(AnalysisError, match="erm or tgr"):
        run_gain(tiny_pool, tmp_path, load_config(preset="smoke"), method="maml", progress=False)  # type: ignore[arg-type]
