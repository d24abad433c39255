"""The config tree: presets, files, overrides, validation."""

import json

import pytest

from tgr_hub.config import PRESETS, RunConfig, load_config
from tgr_hub.errors import ConfigError


def test_defaults_are_the_reference_values():
    cfg = RunConfig()
    assert cfg.recover.steps == 200 and cfg.recover.lr == 1e-3 and cfg.recover.betas == (0.5, 0.999)
    assert cfg.recover.latent_dim == 256 and cfg.recover.images_per_class == 30 and cfg.recover.bank_size == 20
    assert cfg.train.beta == 1e-3 and cfg.train.teachers_per_step == 4 and cfg.train.lr == 1e-3
    assert cfg.group.num_groups == 5 and cfg.group.n_init == 30
    assert cfg.eval.episodes == 600 and cfg.eval.query == 15 and cfg.eval.inner_steps == 10


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = load_config(name)
    assert cfg.preset == name
    for section, values in PRESETS[name].items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert list(got) == list(value) if isinstance(value, list) else got == value


def test_precedence_preset_file_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  beta: 0.5\n  iterations: 7\nrecover:\n  steps: 3\n")
    cfg = load_config("smoke", path, overrides=["train.beta=0", "pool.archs=conv4,resnet10t"])
    assert cfg.train.beta == 0.0  # override beats file
    assert cfg.train.iterations == 7  # file beats preset (smoke has 4)
    assert cfg.recover.steps == 3
    assert cfg.pool.archs == ["conv4", "resnet10t"]
    assert cfg.eval.episodes == PRESETS["smoke"]["eval"]["episodes"]  # preset beats default


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("quick", overrides=["seed=3", "train.learner=maml", "data.cache_dir=/tmp/x"])
    path = tmp_path / "tgr_config.json"
    data = cfg.to_dict() | {"metrics": {"test": {}}, "pool_members": [], "groups": []}
    path.write_text(json.dumps(data))
    again = load_config(path=path)
    assert again == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.nope=1", "unknown key(s) nope in train"),
        ("train.iterations=abc", "train.iterations must be an integer"),
        ("train.iterations=1.5", "train.iterations must be an integer"),
        ("train.learner=svm", "train.learner must be one of protonet, maml"),
        ("train.beta=-1", "train.beta must be >= 0"),
        ("train.replay=maybe", "train.replay must be true or false"),
        ("nonsense", "--set expects section.key=value"),
    ],
)
def test_bad_overrides_raise_config_error(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("smoke", overrides=[override])
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path=bad)


def test_second_order_igr_through_second_order_maml_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(preset="smoke", overrides=["train.igr_order=second", "train.learner=maml",
                                               "train.maml_first_order=false", "train.igr_loss=episodic"])
    message = str(caught.value)
    assert "\n" not in message and "train.igr_order=first" in message and "train.maml_first_order=true" in message
    # each half alone is fine, and so is the reference's combination: the head loss has no inner loop
    load_config(preset="smoke", overrides=["train.igr_order=second", "train.learner=maml", "train.igr_loss=episodic"])
    load_config(preset="smoke", overrides=["train.learner=maml", "train.maml_first_order=false"])
    load_config(preset="smoke", overrides=["train.igr_order=second", "train.learner=maml", "train.maml_first_order=false"])


def test_online_recovery_settings_are_checked() -> None:
    assert load_config(preset="paper").recover.online_every == 1  # the reference: every step, cold, 200 steps
    paper = load_config(preset="paper").recover
    assert (paper.online_start, paper.online_steps, paper.bank_size) == ("cold", 200, 20)
    for bad in ("recover.online_every=-1", "recover.online_steps=0", "recover.online_start=lukewarm"):
        with pytest.raises(ConfigError, match="online"):
            load_config(preset="smoke", overrides=[bad])


@pytest.mark.parametrize("legacy, weight", [("distill", 1.0), ("episodic", 0.0)])
def test_a_config_saved_with_the_old_task_loss_still_loads(tmp_path, legacy: str, weight: float) -> None:
    path = tmp_path / "tgr_config.json"
    path.write_text(json.dumps({"preset": "smoke", "train": {"task_loss": legacy, "beta": 0.002}}))
    cfg = load_config(path=path)
    assert (cfg.train.igr_loss, cfg.train.distill_weight, cfg.train.beta) == ("episodic", weight, 0.002)


def test_the_tgr_step_settings_are_checked() -> None:
    for override, fragment in [("train.igr_loss=prototypes", "igr_loss"), ("train.distill_weight=-1", "distill_weight"),
                               ("train.val_shots=[0]", "val_shots"), ("group.min_size=0", "min_size"),
                               ("recover.oversample=0.5", "oversample"), ("train.replay_steps=0", "replay_steps")]:
        with pytest.raises(ConfigError, match=fragment):
            load_config(preset="smoke", overrides=[override])


def test_one_list_says_what_may_change_when_saved_work_is_reused() -> None:
    from dataclasses import asdict

    from tgr_hub.config import MAY_CHANGE, changed_settings, comparable
    from tgr_hub.train import _as_sections, _settings

    base = load_config(preset="smoke")
    longer = load_config(preset="smoke", overrides=["train.iterations=99", "eval.episodes=7"])
    other = load_config(preset="smoke", overrides=["train.beta=0.5", "seed=3"])
    # a checkpoint: running longer is fine, another β is not
    checkpoint = _settings(base.train, base.seed)
    assert changed_settings(checkpoint, _settings(longer.train, base.seed), "checkpoint") == {}
    assert changed_settings(checkpoint, _settings(other.train, base.seed), "checkpoint") == {
        "train.beta": (base.train.beta, 0.5)
    }
    # checkpoints that recorded the train section flat (its seed over the run's) still resume and still refuse
    flat = {"seed": base.seed, **{k: v for k, v in asdict(base.train).items() if k != "iterations"}}
    old = _as_sections(flat, base.seed)
    assert changed_settings(old, _settings(longer.train, base.seed), "checkpoint") == {}
    assert list(changed_settings(old, _settings(other.train, base.seed), "checkpoint")) == ["train.beta"]
    # a trained meta-model: another evaluation reuses it, another iteration count does not
    assert list(changed_settings(base.to_dict(), longer.to_dict(), "meta-model")) == ["train.iterations"]
    assert list(changed_settings(base.to_dict(), longer.to_dict(), "evaluation")) == [
        "eval.episodes",
        "train.iterations",
    ]
    # a benchmark folder: the seed is the cell's own, the rest is the folder's
    assert list(changed_settings(base.to_dict(), other.to_dict(), "benchmark")) == ["train.beta"]
    assert "seed" not in comparable(base.to_dict(), "benchmark") and "eval" not in comparable(base.to_dict(), "meta-model")
    assert set(MAY_CHANGE) == {"checkpoint", "meta-model", "evaluation", "benchmark"}
    with pytest.raises(ValueError, match="unknown kind of reuse"):
        comparable(base.to_dict(), "nonsense")
