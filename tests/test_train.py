"""``tgr-hub train --preset smoke`` end to end, and the meta-training loop's pieces.

* The CLI run writes every artefact, and its meta-model loads with plain timm
  (``timm.create_model("local-dir:...")`` after ``import tgr_hub``) and computes the features
  :func:`tgr_hub.metamodel.load_meta_model` computes.
* The loop's IGR direction (tasks exchanged through :class:`Distributed`, here one process) is
  bitwise :func:`tgr_hub.igr.igr_direction`'s; β = 0 is exactly the mean gradient.
* BatchNorm running statistics become the mean over tasks of what each task's passes at θ give;
  the displaced pass leaves no trace.
* Sharded evaluation equals :func:`tgr_hub.evaluate.evaluate_model`; mixed precision (bf16 on
  the CPU) trains; bad settings are typed errors.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tgr_hub.config import load_config
from tgr_hub.distributed import Distributed, make_accelerator
from tgr_hub.errors import ConfigError
from tgr_hub.igr import igr_direction
from tgr_hub.learners import make_learner
from tgr_hub.metamodel import create_meta_model
from tgr_hub.train import _bn_buffer_names, _StepMechanics, meta_train, step_rng

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process work on one thread

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = ["pool.json", "recovered/bank.safetensors", "recovered/bank.json", "embeddings.safetensors",
             "dissimilarity.json", "dissimilarity.png", "groups.json", "config.json", "model.safetensors",
             "tgr_config.json", "training_curve.png"]


@pytest.fixture(scope="module")
def smoke_run(tiny_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("train")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "tgr_hub.cli", "train", "--pool", str(tiny_pool),
                           "--out", str(root / "run"), "--preset", "smoke"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return tiny_pool, root / "run", done


@pytest.mark.slow
def test_smoke_train_writes_a_meta_model_plain_timm_loads(smoke_run) -> None:
    import timm

    import tgr_hub  # noqa: F401  (registers conv4 with timm)
    from tgr_hub.metamodel import load_meta_model

    _, run, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "meta-model written to" in done.stdout and "test 5shot:" in done.stdout
    for name in ARTEFACTS:
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "conv4" and config["num_classes"] == 0
    tgr_config = json.loads((run / "tgr_config.json").read_text())
    assert tgr_config["train"]["iterations"] == 4 and set(tgr_config["metrics"]["test"]) == {"1shot", "5shot"}
    assert [s for s, _ in tgr_config["history"]["task_loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in tgr_config["history"]["val_acc"]] == [0, 2, 4]
    # 2 spectral groups asked for; a group smaller than group.min_size (2) is merged into another
    assert 1 <= len(tgr_config["groups"]) <= 2 and min(len(g) for g in tgr_config["groups"]) >= 2
    assert sorted(sum(tgr_config["groups"], [])) == ["t00", "t01", "t02", "t03"]
    # the saved weights are the best-on-val state the history reports
    best = max(tgr_config["history"]["val_acc"], key=lambda sv: (sv[1], -sv[0]))
    assert tgr_config["metrics"]["val"]["best_step"] == best[0]

    backbone = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    meta = load_meta_model(run)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone(meta.normalize(images)), meta(images), rtol=0, atol=0)
    assert backbone(meta.normalize(images)).shape == (6, meta.feature_dim)
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


# --- the loop's pieces ------------------------------------------------------------------------------


def _tasks(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sx = torch.rand(6, 3, 16, 16, generator=gen)
        qx = torch.rand(9, 3, 16, 16, generator=gen)
        out.append((sx, torch.arange(3).repeat_interleave(2), qx, torch.arange(3).repeat_interleave(3)))
    return out


def _setup(learner_name: str = "protonet"):
    model = create_meta_model("conv4", image_size=16, seed=0).train()
    learner = make_learner(learner_name, inner_steps=1, inner_lr=0.01)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    floats, counters = _bn_buffer_names(model)
    start = {k: buffers[k].detach().clone() for k in (*floats, *counters)}
    return model, learner, params, buffers, floats, start


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("learner_name", ["protonet", "maml"])
def test_exchanged_direction_is_igr_direction(beta: float, learner_name: str) -> None:
    model, learner, params, buffers, floats, start = _setup(learner_name)
    tasks = _tasks(3)

    def loss_of(t):
        return lambda p: learner.episode_loss(model, *t, params=p)

    reference = igr_direction([loss_of(t) for t in tasks], params, beta, fuse_tasks=False)
    dist = Distributed(make_accelerator("no"))
    mechanics = _StepMechanics(dist, model, params)
    combined = mechanics.direction({i: mechanics.loss(loss_of(t)) for i, t in enumerate(tasks)}, 3, beta=beta)
    assert combined.direction.keys() == reference.direction.keys()
    for name, value in reference.direction.items():
        assert torch.equal(combined.direction[name], value), name  # bitwise, not just close
    assert combined.losses == pytest.approx(reference.losses, rel=0, abs=0)
    if beta == 0:
        from tgr_hub.igr import mean_gradient, task_gradients

        _, grads = task_gradients([loss_of(t) for t in tasks], params, fuse=False)
        mean = mean_gradient(grads)
        assert all(torch.equal(combined.direction[k], mean[k]) for k in mean)


def test_batchnorm_statistics_are_the_mean_over_tasks() -> None:
    model, learner, params, buffers, floats, start = _setup()
    tasks = _tasks(3, seed=1)
    before = {k: v.clone() for k, v in buffers.items()}
    dist = Distributed(make_accelerator("no"))
    mechanics = _StepMechanics(dist, model, params)
    items = {i: mechanics.loss(lambda p, t=t: learner.episode_loss(model, *t, params=p)) for i, t in enumerate(tasks)}
    combined = mechanics.direction(items, 3, beta=0.1)
    # the model's own buffers were not touched by any pass (θ or displaced)
    assert all(torch.equal(buffers[k], before[k]) for k in buffers)
    # by hand: each task's two forward passes (support, query) from the start statistics, momentum 0.1
    expected = {k: [] for k in floats}
    with torch.no_grad():
        for sx, sy, qx, qy in tasks:
            copies = {k: v.clone() for k, v in start.items()}
            torch.func.functional_call(model, {**params, **copies}, (sx,), strict=False)
            torch.func.functional_call(model, {**params, **copies}, (qx,), strict=False)
            for k in floats:
                expected[k].append(copies[k])
    for k in floats:
        torch.testing.assert_close(combined.buffers[k], torch.stack(expected[k]).mean(0), rtol=1e-6, atol=1e-7)
        assert not torch.equal(combined.buffers[k], start[k])


def test_step_streams_are_pure_functions() -> None:
    a = step_rng(0, 5, 1, 2).integers(1 << 30, size=4)
    assert np.array_equal(a, step_rng(0, 5, 1, 2).integers(1 << 30, size=4))
    assert not np.array_equal(a, step_rng(0, 5, 1, 3).integers(1 << 30, size=4))
    assert not np.array_equal(a, step_rng(0, 6, 1, 2).integers(1 << 30, size=4))


def test_sharded_evaluation_equals_evaluate_model() -> None:
    from tgr_hub.data import load_split
    from tgr_hub.evaluate import evaluate_model

    split = load_split("glyphs", "val", image_size=32, seed=0)
    model = create_meta_model("conv4", image_size=32, seed=3)
    kwargs = dict(way=5, shots=[1, 2], query=3, episodes=5, learner="protonet", seed=7)
    ours = evaluate_model(model, split, dist=Distributed(make_accelerator("no")), progress=False, **kwargs)
    assert ours == evaluate_model(model, split, progress=False, **kwargs)


@pytest.mark.slow
def test_the_eval_settings_reach_the_final_test_and_the_baselines(smoke_run, tmp_path: Path) -> None:
    """eval.method / inner_steps / inner_lr reach run_tgr's final test and the quickstart's baselines."""
    from tgr_hub.evaluate import eval_settings

    pool, _, _ = smoke_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    settings = ["--set", "eval.method=finetune", "--set", "eval.inner_steps=2", "--set", "eval.inner_lr=0.05",
                "--set", "eval.shots=[1]", "--set", "eval.episodes=3", "--set", "train.iterations=1"]
    done = subprocess.run([sys.executable, "-m", "tgr_hub.cli", "train", "--pool", str(pool), "--out",
                           str(tmp_path / "run"), "--preset", "smoke", *settings],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "tgr_config.json").read_text())["metrics"]["test"]["1shot"]
    assert (test["method"], test["inner_steps"], test["inner_lr"]) == ("finetune", 2, 0.05)
    # the quickstart evaluates its baselines with the same keyword arguments
    cfg = load_config(preset="smoke", overrides=[s for s in settings if s != "--set"])
    assert eval_settings(cfg.eval, "protonet") == {"way": 5, "shots": [1], "query": 5, "episodes": 3,
                                                   "learner": "finetune", "inner_steps": 2, "inner_lr": 0.05}
    assert eval_settings(load_config(preset="smoke").eval, "protonet")["learner"] == "protonet"  # auto
    assert eval_settings(load_config(preset="smoke").eval, "maml")["learner"] == "maml"  # fine-tuned


@pytest.fixture(scope="module")
def prepared(smoke_run):
    from tgr_hub.data import load_split
    from tgr_hub.pipeline import prepare_pool

    pool, run, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(preset="smoke", overrides=["train.iterations=2", "train.val_episodes=2"])
    return cfg, prepare_pool(pool, run, cfg, progress=False), load_split("glyphs", "val", image_size=32, seed=0)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_the_cpu(prepared) -> None:
    cfg, pool, val = prepared
    cfg = copy.deepcopy(cfg)  # the fixture is shared: tests run in any order
    cfg.train.mixed_precision = "bf16"
    dist = Distributed(make_accelerator("bf16"))
    assert dist.accelerator.mixed_precision == "bf16"
    model = create_meta_model("conv4", 32, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = meta_train(model, pool.members, pool.bank, pool.groups, cfg.train, val_split=val, seed=0, progress=False,
                        dist=dist, on_step=lambda info: seen.append(info))
    assert [info.step for info in seen] == [1, 2]
    assert all(np.isfinite(info.task_losses).all() for info in seen)
    assert all(v.dtype == torch.float32 for v in model.parameters())  # autocast, weights stay float32
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert [s for s, _ in result.history["val_acc"]] == [0, 2]
    make_accelerator("no")  # the next in-process run starts from full precision again


@pytest.mark.slow
def test_bad_settings_are_typed_errors(prepared, tmp_path: Path) -> None:
    cfg, pool, val = prepared
    cfg = copy.deepcopy(cfg)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 mixed precision needs a GPU"):
            make_accelerator("fp16")
    make_accelerator("no")
    cfg.train.checkpoint_every = 1
    with pytest.raises(ConfigError, match="checkpoint folder"):
        meta_train(create_meta_model("conv4", 32), pool.members, pool.bank, pool.groups, cfg.train, val_split=val,
                   seed=0, progress=False)
    cfg.train.checkpoint_every = 0
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        load_config(preset="smoke", overrides=["train.keep_checkpoints=0"])
    from accelerate.tracking import get_available_trackers

    if "tensorboard" not in {str(getattr(t, "value", t)) for t in get_available_trackers()}:
        with pytest.raises(ConfigError, match="tracker 'tensorboard' is not installed"):
            make_accelerator("no", log_with=["tensorboard"], project_dir=tmp_path)


def test_launched_processes_get_the_same_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    from tgr_hub.cli import cmd_train
    from tgr_hub.cli.main import build_parser

    args = build_parser().parse_args([
        "--debug", "train", "--pool", "p.txt", "--out", "runs/x", "--num-processes", "2", "--resume", "--no-test",
        "--preset", "smoke", "--set", "train.beta=0", "--set", "train.checkpoint_every=5", "--seed", "3",
        "--log-with", "tensorboard", "--mixed-precision", "bf16", "--push", "me/m", "--space", "me/s", "--private",
        "--recipe", "cifar-fs", "--dataset", "tgr-org/tiny@main", "--class-split", "split.json", "--cache-dir", "cache"])
    child = cmd_train.child_arguments(args)
    assert "--num-processes" not in child
    assert vars(build_parser().parse_args(child)) == {**vars(args), "num_processes": None}
    # accelerate launch --mixed_precision X is honoured unless the flag or --set says otherwise
    plain = build_parser().parse_args(["train", "--pool", "p.txt", "--out", "runs/x"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert cmd_train._mixed_precision_values(plain) == {"train": {"mixed_precision": "bf16"}}
    assert cmd_train._mixed_precision_values(args) == {"train": {"mixed_precision": "bf16"}}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert cmd_train._mixed_precision_values(plain) == {}


# --- the optimiser and replay really act on the model ------------------------------------------------


def _run_recording(prepared, measure=None, **train_values):
    """Meta-train a fresh Conv4 on the prepared pool; per step: (parameters after it, StepInfo's gradients)."""
    _, pool, val = prepared
    train_cfg = load_config(preset="smoke", overrides=["train.iterations=2", "train.val_episodes=2"],
                            values={"train": train_values}).train
    model = create_meta_model("conv4", 32, seed=0)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    steps = []

    def on_step(info) -> None:
        owned = {id(p) for group in info.optimizer.param_groups for p in group["params"]}
        params = {k: v.detach().clone() for k, v in info.model.named_parameters() if id(v) in owned}
        replay = None if info.replay_direction is None else {k: v.clone() for k, v in info.replay_direction.items()}
        steps.append((params, replay))

    result = meta_train(model, pool.members, pool.bank, pool.groups, train_cfg, val_split=val, seed=0,
                        progress=False, dist=Distributed(make_accelerator("no")), on_step=on_step, measure=measure)
    return start, steps, result, model


@pytest.mark.slow
def test_every_step_changes_every_parameter_the_optimiser_owns(prepared) -> None:
    start, steps, result, model = _run_recording(prepared)
    names = {k for k, _ in model.named_parameters()}
    assert len(steps) == 2 and all(set(params) == names for params, _ in steps)  # the optimiser owns them all
    previous = start
    for step, (params, _) in enumerate(steps, 1):
        # Adam moves every parameter that has a non-zero gradient; BatchNorm buffers do not count here
        unchanged = [k for k in names if torch.equal(params[k], previous[k])]
        assert not unchanged, f"step {step} left parameters unchanged: {unchanged[:5]}"
        previous = params
    # the returned best state is the model as it was after its best step (or the initialisation at step 0)
    best = start if result.best_step == 0 else steps[result.best_step - 1][0]
    assert all(torch.equal(result.best_state[k].cpu(), best[k].cpu()) for k in names)


@pytest.mark.slow
def test_replay_contributes_a_gradient(prepared) -> None:
    _, with_replay, _, model_on = _run_recording(prepared)
    _, without, _, model_off = _run_recording(prepared, replay=False)
    assert all(replay is None for _, replay in without)
    for step, (_, replay) in enumerate(with_replay, 1):
        assert replay is not None, f"step {step}: no replay gradient"
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in replay.values()))
        assert torch.isfinite(norm) and norm > 0, f"step {step}: replay gradient norm {norm}"
    # same seeds, same tasks: only the replay steps tell the two runs apart, and they must
    on, off = dict(model_on.named_parameters()), dict(model_off.named_parameters())
    assert any(not torch.equal(on[k], off[k]) for k in on)


@pytest.mark.slow
def test_gradient_statistics_are_recorded_every_analysis_step_and_change_nothing(prepared) -> None:
    from tgr_hub.probe import gradient_measure, make_gradient_probe, probe_statistics

    cfg, pool, val = prepared
    train_cfg = load_config(preset="smoke", overrides=["train.analysis_groups=2"]).train
    _, _, plain, plain_model = _run_recording(prepared)
    measure = gradient_measure(pool.members, pool.bank, train_cfg, seed=1)  # the validation seed of seed 0
    _, _, measured, measured_model = _run_recording(prepared, measure, analysis_every=1, analysis_groups=2)
    # measuring draws no random number and touches no state: the two runs end bitwise equal
    plain_state, measured_state = plain_model.state_dict(), measured_model.state_dict()
    assert all(torch.equal(plain_state[k], measured_state[k]) for k in plain_state)
    assert "grad_P" not in plain.history
    for name in ("grad_P", "grad_cosine", "grad_spread"):
        assert [s for s, _ in measured.history[name]] == [0, 1, 2]  # before training, then every step
    # step 0 is the probe's statistics at the initialisation: the same probe, measured by hand
    model = create_meta_model("conv4", 32, seed=0)
    probe = make_gradient_probe(pool.members, pool.bank, [list(range(len(pool.members)))], train_cfg,
                                num_groups=2, feature_dim=model.feature_dim, seed=1)  # the validation seed
    by_hand = probe_statistics(model, probe, make_learner("protonet"), train_cfg.igr_loss)
    assert measured.history["grad_P"][0][1] == pytest.approx(by_hand.P, rel=1e-6)
    assert measured.history["grad_cosine"][0][1] == pytest.approx(by_hand.cosine, rel=1e-6)
    assert measured.history["grad_P"][-1][1] != pytest.approx(by_hand.P)  # training moved it


# --- faithful TGR: m tasks per step, validation on its own episodes ------------------------------------


@pytest.mark.slow
def test_a_singleton_group_still_gives_m_fresh_tasks_per_step(prepared) -> None:
    _, pool, val = prepared
    train_cfg = load_config(preset="smoke", overrides=["train.iterations=2", "train.val_episodes=2",
                                                       "train.teachers_per_step=3"]).train
    recover_cfg = load_config(preset="smoke").recover  # online recovery at every step
    seen = []
    result = meta_train(create_meta_model("conv4", 32, seed=0), pool.members, pool.bank, [[0], [1, 2, 3]],
                        train_cfg, val_split=val, seed=0, progress=False, dist=Distributed(make_accelerator("no")),
                        recover=recover_cfg, on_step=lambda info: seen.append(info))
    assert [len(info.task_losses) for info in seen] == [3, 3]
    # whichever group a step drew, its tasks were three fresh recoveries, each with its own images
    assert result.bank is not None
    added = len(result.bank) - len(pool.bank)
    per_task = recover_cfg.images_per_class * recover_cfg.max_way
    assert added >= 2 * 3 * min(per_task, 2 * recover_cfg.images_per_class)
    assert all(len(set(np.round(info.task_losses, 6))) == 3 for info in seen)  # three different tasks, three losses


@pytest.mark.slow
def test_validation_uses_its_own_way_shots_query_and_seed(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    import tgr_hub.evaluate as evaluate_module  # meta-validation's evaluate_model (tgr_hub.evaluate.meta_validate)

    _, pool, val = prepared
    train_cfg = load_config(preset="smoke", overrides=[
        "train.iterations=2", "train.val_episodes=3", "train.val_way=4", "train.val_shots=[1,3]",
        "train.val_query=2", "train.replay_shot=1", "train.replay_query=2"]).train
    calls = []
    real = evaluate_module.evaluate_model

    def recording(model, split, **kwargs):
        calls.append(kwargs)
        return real(model, split, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_model", recording)
    result = meta_train(create_meta_model("conv4", 32, seed=0), pool.members, pool.bank, pool.groups, train_cfg,
                        val_split=val, seed=7, val_seed=11, progress=False, dist=Distributed(make_accelerator("no")))
    assert len(calls) == 2  # steps 0 and 2
    for kwargs in calls:  # not the replay episodes' 5-way 1-shot 2-query
        assert (kwargs["way"], kwargs["shots"], kwargs["query"], kwargs["episodes"], kwargs["seed"]) == (4, [1, 3], 2, 3, 11)
    # the checkpoint is chosen on the mean over the shots, each recorded
    for (step, mean), (_, one), (_, three) in zip(result.history["val_acc"], result.history["val_acc_1shot"],
                                                   result.history["val_acc_3shot"]):
        assert mean == pytest.approx((one + three) / 2)
    assert result.best_val_accuracy == max(v for _, v in result.history["val_acc"])
    assert np.isfinite(result.val_std_error) and result.val_std_error > 0


# --- replay follows the run seed ---------------------------------------------------------------------


def _replay_trainer(seed: int, **train: object):
    """A fresh trainer (same model, same two-teacher bank) seeded ``seed``, smoke settings plus ``train``."""
    from tgr_hub.bank import MemoryBank, RecoveredTask
    from tgr_hub.train import _MetaTrainer

    bank = MemoryBank(1)
    for t in range(2):
        images = torch.rand(4 * 6, 3, 16, 16, generator=torch.Generator().manual_seed(t))
        bank.add(RecoveredTask(images=images, labels=torch.arange(4).repeat_interleave(6), teacher=f"t{t}", loss=0.0,
                               classes=[0, 1, 2, 3]))
    values = {"replay_way": 3, "replay_batch": 2, "igr_loss": "episodic", **train}
    cfg = load_config(preset="smoke", values={"train": values}).train
    return _MetaTrainer(create_meta_model("conv4", 16, seed=0), [], bank, [[0, 1]], cfg,
                        val_split=None, seed=seed, dist=Distributed(make_accelerator("no")),  # type: ignore[arg-type]
                        checkpoint_dir=None)


def _replay_direction(seed: int, step: int = 0, round_step: int = 0) -> dict[str, torch.Tensor]:
    """The replay gradient of one replay step of a fresh trainer (same model, same bank), seeded ``seed``."""
    replayed = _replay_trainer(seed).replay_step(step, round_step)
    assert replayed is not None
    return {k: v.detach().clone() for k, v in replayed.direction.items()}


def test_the_replay_batch_takes_the_mean_or_the_references_sum_of_its_episodes(one_torch_thread) -> None:
    """train.replay_reduction: the Adam the IGR step shares gets the episodes' mean gradient, or (the
    reference's) their sum: replay_batch times it. "mean", the earlier behaviour, leaves saved work valid."""
    from tgr_hub.config import comparable

    def applied(reduction: str) -> dict[str, torch.Tensor]:
        trainer = _replay_trainer(0, replay_batch=3, replay_reduction=reduction)
        seen: dict[str, torch.Tensor] = {}
        step_of = trainer.optimizer.step

        def spy(*args, **kwargs):
            seen.update({name: p.grad.clone() for name, p in trainer.params.items() if p.grad is not None})
            return step_of(*args, **kwargs)

        trainer.optimizer.step = spy
        replayed = trainer.replay_step(0)
        assert seen and replayed is not None
        if reduction == "mean":  # bitwise the direction, as before the setting existed
            assert all(torch.equal(seen[k], replayed.direction[k]) for k in seen)
        return seen

    mean, total = applied("mean"), applied("sum")
    assert mean.keys() == total.keys()
    for name in mean:
        torch.testing.assert_close(total[name], 3 * mean[name])
    # a config at the earlier behaviour compares equal to one saved before the setting existed
    now = load_config(preset="smoke").to_dict()
    before = json.loads(json.dumps(now, default=str))
    del before["train"]["replay_reduction"]
    assert comparable(now, "benchmark") == comparable(before, "benchmark")
    summed = load_config(preset="smoke", overrides=["train.replay_reduction=sum"]).to_dict()
    assert comparable(summed, "benchmark") != comparable(before, "benchmark")
    with pytest.raises(ConfigError, match="replay_reduction must be"):
        load_config(preset="smoke", overrides=["train.replay_reduction=max"])


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_replay_episodes_follow_the_run_seed_the_step_and_the_round(one_torch_thread) -> None:
    first = _replay_direction(0)
    assert _equal(first, _replay_direction(0))  # the same seed: bitwise the same replay gradient
    assert not _equal(first, _replay_direction(1))  # another seed: other episodes
    assert not _equal(first, _replay_direction(0, step=1))  # another step
    assert not _equal(first, _replay_direction(0, round_step=1))  # the next replay step of a round draws anew
