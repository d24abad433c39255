"""Evaluation, confidence intervals, the meta-model folder format and the baselines."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import tgr_hub  # noqa: F401  (registers conv4)
from tgr_hub.data.episodes import ImageSplit
from tgr_hub.errors import EmptyPoolError, RunFolderError
from tgr_hub.evaluate import (
    EvaluationError,
    ValSettings,
    average_baseline,
    confidence_interval,
    evaluate_model,
    meta_validate,
    random_baseline,
    resolve_learner,
)
from tgr_hub.learners import MAML, ProtoNet
from tgr_hub.metamodel import create_meta_model, find_meta_model_folder, load_meta_model, save_meta_model
from tgr_hub.pool import PoolMember

torch.set_num_threads(1)  # small tensors: extra threads only add contention


def synthetic_split(classes: int = 6, per_class: int = 12, size: int = 16, seed: int = 0) -> ImageSplit:
    """Class c: a noisy image of one random colour (easy but not trivial)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = colours[labels] + 0.25 * torch.randn(len(labels), 3, size, size, generator=g)
    return ImageSplit(
        images=(images.clamp(0, 1) * 255).round().to(torch.uint8),
        labels=labels,
        class_names=[f"toy/c{c}" for c in range(classes)],
        class_domains=["toy"] * classes,
    )


# --- confidence interval ---------------------------------------------------------------------------


def test_confidence_interval_hand_example():
    # mean 0.6; deviations .1 .1 .3 .3 -> population variance (0.01+0.01+0.09+0.09)/4 = 0.05
    mean, ci = confidence_interval([0.5, 0.7, 0.9, 0.3])
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(1.96 * math.sqrt(0.05) / math.sqrt(4))
    assert ci == pytest.approx(0.219135, abs=1e-6)  # 1.96 * 0.2236068 / 2
    assert confidence_interval(torch.tensor([0.25])) == (0.25, 0.0)
    with pytest.raises(EvaluationError):
        confidence_interval([])


# --- meta-model folder --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["conv4", "resnet10t"])
def test_meta_model_save_load_and_plain_timm_give_identical_features(tmp_path, arch):
    model = create_meta_model(arch, image_size=32, seed=3)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # move the BatchNorm running statistics away from their init
    model.eval()
    save_meta_model(model, tmp_path / "mm", tgr_config={"train": {"learner": "protonet"}, "seed": 3})
    assert sorted(p.name for p in (tmp_path / "mm").iterdir()) == ["config.json", "model.safetensors", "tgr_config.json"]
    config = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert config["architecture"] == arch and config["num_classes"] == 0
    assert config["num_features"] == model.feature_dim
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(model.mean)

    loaded = load_meta_model(tmp_path / "mm")
    plain = timm.create_model(f"local-dir:{tmp_path / 'mm'}", pretrained=True).eval()
    x = torch.rand(5, 3, 32, 32)
    mean = torch.tensor(config["pretrained_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["pretrained_cfg"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(plain((x - mean) / std), expected)
    assert expected.shape == (5, model.feature_dim)
    assert loaded.learner == "protonet" and loaded.tgr_config["seed"] == 3
    # a run folder holding meta_model/ is found too
    run = tmp_path / "run"
    save_meta_model(model, run / "meta_model")
    assert find_meta_model_folder(run) == run / "meta_model"


def test_meta_model_resizes_inputs(tmp_path):
    model = create_meta_model("conv4", image_size=32, seed=0).eval()
    x = torch.rand(2, 3, 16, 16)
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(model(x), model(resized))


def test_create_meta_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = (create_meta_model("conv4", 32, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.backbone.blocks[0][0].weight, c.backbone.blocks[0][0].weight)


def test_load_meta_model_errors(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        load_meta_model(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="holds no meta-model"):
        load_meta_model(tmp_path)
    model = create_meta_model("conv4", 32, seed=0)
    save_meta_model(model, tmp_path / "mm")
    (tmp_path / "mm" / "model.safetensors").unlink()
    with pytest.raises(RunFolderError, match="no model.safetensors"):
        load_meta_model(tmp_path / "mm")
    # weights of another architecture: strict loading refuses them
    save_meta_model(create_meta_model("resnet10t", 32, seed=0), tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "mm" / "model.safetensors")
    with pytest.raises(RunFolderError, match="do not fit"):
        load_meta_model(tmp_path / "mm")
    # pickled weights are never read: a payload whose unpickling runs code stays inert, whether it
    # sits next to the safetensors, alone, or under the safetensors name
    from conftest import PAYLOAD_RUNS, CodeRunningPickle

    PAYLOAD_RUNS.clear()
    save_meta_model(model, tmp_path / "mm")
    payload = {**model.backbone.state_dict(), "hook": CodeRunningPickle("meta")}
    torch.save(payload, tmp_path / "mm" / "pytorch_model.bin")
    loaded = load_meta_model(tmp_path / "mm")  # the safetensors weights, the pickle untouched
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    (tmp_path / "mm" / "model.safetensors").unlink()
    with pytest.raises(RunFolderError, match="no model.safetensors"):
        load_meta_model(tmp_path / "mm")
    torch.save(payload, tmp_path / "mm" / "model.safetensors")  # a pickle disguised as safetensors
    with pytest.raises(RunFolderError, match="cannot be read as safetensors"):
        load_meta_model(tmp_path / "mm")
    assert PAYLOAD_RUNS == []
    # the control: unpickling that file runs the payload (torch.load reads a *.safetensors name as safetensors)
    (tmp_path / "mm" / "model.safetensors").replace(tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert PAYLOAD_RUNS == ["meta"]
    PAYLOAD_RUNS.clear()


# --- baselines -----------------------------------------------------------------------------------------


def _member(name: str, arch: str, seed: int, num_classes: int = 5) -> PoolMember:
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes)
    model.train()
    with torch.no_grad():  # distinct running statistics per teacher
        model(torch.rand(4, 3, 32, 32) * (1 + seed))
    model.eval().requires_grad_(False)
    return PoolMember(name=name, source=name, model=model, architecture=arch,
                      label_names=[f"{name}/{i}" for i in range(num_classes)], input_size=(3, 32, 32),
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_average_baseline_equals_hand_average(caplog):
    members = [_member("t0", "conv4", 0), _member("r0", "resnet10t", 9), _member("t1", "conv4", 1, num_classes=3),
               _member("t2", "conv4", 2)]
    with caplog.at_level(logging.WARNING, logger="tgr_hub.evaluate"):
        model = average_baseline(members)
    assert "r0 (resnet10t)" in caplog.text  # the ignored teacher is named
    assert model.architecture == "conv4" and model.backbone.num_classes == 0
    state = model.backbone.state_dict()
    assert not any(key.startswith("fc.") for key in state)
    conv = [members[i].model for i in (0, 2, 3)]
    for key in ("blocks.0.0.weight", "blocks.3.0.bias", "blocks.1.1.weight", "blocks.2.1.running_mean", "blocks.2.1.running_var"):
        hand = (conv[0].state_dict()[key] + conv[1].state_dict()[key] + conv[2].state_dict()[key]) / 3
        assert torch.allclose(state[key], hand, atol=1e-7), key
    # every tensor is averaged (not only the ones checked by name)
    for key, value in state.items():
        if value.is_floating_point():
            hand = sum(m.state_dict()[key].double() for m in conv) / 3
            assert torch.allclose(value.double(), hand, atol=1e-6), key
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m.model.fc.weight.requires_grad for m in members)  # teachers untouched
    with pytest.raises(EmptyPoolError):
        average_baseline([])


def test_average_baseline_can_be_saved_and_reloaded(tmp_path):
    model = average_baseline([_member("t0", "conv4", 0), _member("t1", "conv4", 1)])
    save_meta_model(model, tmp_path / "avg")
    loaded = load_meta_model(tmp_path / "avg")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_random_baseline_is_seeded():
    a, b = random_baseline("conv4", 32, seed=4), random_baseline("conv4", 32, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not a.training


# --- evaluation ------------------------------------------------------------------------------------------


def test_evaluation_is_deterministic_and_above_chance():
    split = synthetic_split()
    model = create_meta_model("conv4", image_size=16, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = dict(way=3, shots=[1, 3], query=4, episodes=12, seed=7, progress=False, keep_accuracies=True)
    first = evaluate_model(model, split, learner="protonet", **kwargs)
    second = evaluate_model(model, split, learner="protonet", **kwargs)
    assert first == second
    assert set(first) == {"1shot", "3shot"}
    result = first["3shot"]
    assert (result["way"], result["shot"], result["query"], result["episodes"], result["method"]) == (3, 3, 4, 12, "protonet")
    assert (result["mean"], result["ci95"]) == pytest.approx(confidence_interval(result["accuracies"]))
    # accuracies are multiples of 1/12 (3 classes x 4 queries)
    assert np.allclose(np.array(result["accuracies"]) * 12, np.round(np.array(result["accuracies"]) * 12))
    assert result["mean"] > 0.6  # colour classes are easy even for random features; chance is 1/3
    other_seed = evaluate_model(model, split, learner="protonet", **{**kwargs, "seed": 8})
    assert other_seed["1shot"]["accuracies"] != first["1shot"]["accuracies"]
    for key, value in model.state_dict().items():  # evaluation leaves the model as it was
        assert torch.equal(value, before[key]), key

    finetune = evaluate_model(model, split, learner="finetune", inner_steps=3, **{**kwargs, "shots": [1]})
    assert finetune == evaluate_model(model, split, learner="finetune", inner_steps=3, **{**kwargs, "shots": [1]})
    assert finetune["1shot"]["method"] == "finetune"


def test_meta_validation_is_the_mean_over_shots_with_its_standard_error_from_the_episodes():
    split = synthetic_split()
    model = create_meta_model("conv4", image_size=16, seed=0).eval()
    settings = ValSettings(way=3, shots=(1, 3), query=4, episodes=12, learner="protonet")
    score = meta_validate(model, split, settings, seed=7)
    episodes = evaluate_model(model, split, way=3, shots=[1, 3], query=4, episodes=12, seed=7, learner="protonet",
                              progress=False, keep_accuracies=True)
    one, three = (np.array(episodes[k]["accuracies"]) for k in ("1shot", "3shot"))
    assert score.per_shot == {1: pytest.approx(one.mean()), 3: pytest.approx(three.mean())}
    assert score.accuracy == pytest.approx((one.mean() + three.mean()) / 2)
    # the mean of two independent means over 12 episodes each: sqrt(s1² / 12 + s3² / 12) / 2 (population std)
    assert score.std_error == pytest.approx(math.sqrt(one.var() / 12 + three.var() / 12) / 2)
    # fine-tuning is its own adaptation: another learner, another score
    finetune = meta_validate(model, split, ValSettings(way=3, shots=(1,), query=4, episodes=12, learner="finetune",
                                                       inner_steps=3), seed=7)
    assert finetune.per_shot[1] != score.per_shot[1]


def test_auto_method_follows_the_meta_learner():
    model = create_meta_model("conv4", 32, seed=0)
    learner, method = resolve_learner("auto", model)
    assert method == "finetune" and isinstance(learner, MAML)
    assert (learner.inner_steps, learner.inner_lr, learner.bn) == (10, 0.01, "batch")
    model.tgr_config = {"train": {"learner": "protonet"}}
    learner, method = resolve_learner("auto", model)
    assert method == "protonet" and isinstance(learner, ProtoNet) and learner.bn == "batch"
    assert resolve_learner("maml", model)[1] == "finetune"


# --- CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_evaluate_random_baseline_and_meta_model(tmp_path, monkeypatch, capsys):
    import tgr_hub.data as data
    from tgr_hub.cli.main import main

    calls = []

    def fake_load_split(dataset="glyphs", split="test", **kwargs):
        calls.append((dataset, split, kwargs))
        return synthetic_split(size=32)

    monkeypatch.setattr(data, "load_split", fake_load_split, raising=False)
    out = tmp_path / "random.json"
    code = main(["evaluate", "--baseline", "random", "--arch", "conv4", "--way", "3", "--shot", "1", "--shot", "2",
                 "--query", "3", "--episodes", "5", "--json", str(out), "--seed", "1", "--no-progress", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3-way 1-shot (finetune)" in printed and "3-way 2-shot" in printed and "±" in printed
    report = json.loads(out.read_text())
    assert report["baseline"] == "random" and set(report["results"]) == {"1shot", "2shot"}
    assert report["results"]["1shot"]["episodes"] == 5
    assert calls[0][:2] == ("glyphs", "test")

    model = create_meta_model("conv4", 32, seed=0)
    save_meta_model(model, tmp_path / "run" / "meta_model", tgr_config={"train": {"learner": "protonet"}})
    code = main(["evaluate", str(tmp_path / "run"), "--way", "3", "--shot", "1", "--query", "3", "--episodes", "4",
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    assert "3-way 1-shot (protonet)" in capsys.readouterr().out

    assert main(["evaluate", "--way", "3"]) == 2  # neither MODEL nor --baseline
    assert main(["evaluate", "--baseline", "average"]) == 2  # no --pool
    assert main(["evaluate", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_chosen_state_carries_its_own_steps_selection_noise_not_the_last_checks():
    from tgr_hub.evaluate import ValScore, chosen_validation

    history: dict = {}
    checks = [(0, ValScore(0.40, {1: 0.33, 5: 0.47}, 0.0040)), (20, ValScore(0.36, {1: 0.30, 5: 0.42}, 0.0034))]
    for step, score in checks:
        score.record(history, step)
    assert history["val_std_error"] == [(0, 0.0040), (20, 0.0034)]
    chosen = chosen_validation(history, best_step=0, best_accuracy=0.40, selection_noise=0.0034)
    assert chosen == {"best_step": 0, "accuracy": 0.40, "1shot": 0.33, "5shot": 0.47, "selection_noise": 0.0040}
    # a history from before the standard error was recorded: the value handed in
    old = {k: v for k, v in history.items() if k != "val_std_error"}
    assert chosen_validation(old, best_step=0, best_accuracy=0.40, selection_noise=0.0034)["selection_noise"] == 0.0034
