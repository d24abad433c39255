"""make-pool: planning, held-out splits, augmentation, training, and the pool folder it writes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tgr_hub  # noqa: F401
import timm
from tgr_hub.errors import ConfigError, DatasetError, UnknownArchitectureError
from tgr_hub.config import DataConfig, PoolBuildConfig
from tgr_hub.teachers import (TeacherSpec, _augment, format_table, make_pool, plan_teachers, split_heldout,
                              torch_threads, train_teacher)

NAMES = [f"latin/{c}" for c in "ABCDEFGH"] + [f"greek/{c}" for c in ("alpha", "beta", "gamma", "delta", "eps", "zeta")]
DOMAINS = [n.split("/")[0] for n in NAMES]
PLAN = dict(epochs=1, batch_size=8, lr=1e-3, image_size=32, dataset="glyphs", data_seed=0)


def test_plan_spreads_archs_and_domains_and_is_seeded():
    specs = plan_teachers(NAMES, DOMAINS, domains=["latin", "greek"], archs=["conv4", "resnet10t"], teachers=6, way=5,
                          seed=0, **PLAN)
    assert [s.name for s in specs] == ["t00", "t01", "t02", "t03", "t04", "t05"]
    assert [(s.architecture, s.domain) for s in specs] == [
        ("conv4", "latin"), ("resnet10t", "latin"), ("conv4", "greek"), ("resnet10t", "greek"),
        ("conv4", "latin"), ("resnet10t", "latin")]
    for s in specs:
        assert len(s.classes) == len(set(s.classes)) == 5
        assert all(DOMAINS[c] == s.domain for c in s.classes)
        assert s.label_names == [NAMES[c] for c in s.classes]
    assert len({tuple(s.classes) for s in specs if s.domain == "latin"}) > 1  # teachers differ
    again = plan_teachers(NAMES, DOMAINS, domains=["latin", "greek"], archs=["conv4", "resnet10t"], teachers=6, way=5,
                          seed=0, **PLAN)
    assert [s.classes for s in again] == [s.classes for s in specs] and [s.seed for s in again] == [s.seed for s in specs]
    other = plan_teachers(NAMES, DOMAINS, domains=["latin", "greek"], archs=["conv4", "resnet10t"], teachers=6, way=5,
                          seed=1, **PLAN)
    assert [s.classes for s in other] != [s.classes for s in specs]
    with pytest.raises(DatasetError, match="domain 'greek' has 6 meta-train classes, a 7-way teacher needs 7"):
        plan_teachers(NAMES, DOMAINS, domains=["latin", "greek"], archs=["conv4"], teachers=2, way=7, seed=0, **PLAN)
    assert [s.name for s in plan_teachers(NAMES, DOMAINS, domains=["latin"], archs=["conv4"], teachers=101, way=2,
                                          seed=0, **PLAN)][-2:] == ["t099", "t100"]


def test_split_heldout_per_class():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 2)
    train, held = split_heldout(labels, 3, 0.2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train, held]).tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, math.ceil(0.2 * 7), 1]
    again, _ = split_heldout(labels, 3, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(train, again)
    with pytest.raises(DatasetError, match="at least 2"):
        split_heldout(torch.tensor([0, 0, 1]), 2, 0.2, torch.Generator())


def test_augment_without_scale_and_rotation_is_an_edge_padded_translation():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = _augment(x, torch.Generator().manual_seed(5), shift=2, scale=0.0, rotate=0.0)
    shifts = torch.randint(-2, 3, (6, 2), generator=torch.Generator().manual_seed(5))  # the same draws
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    for i, (dy, dx) in enumerate(shifts.tolist()):  # reference: one slice per image
        torch.testing.assert_close(out[i], padded[i, :, 2 + dy:10 + dy, 2 + dx:10 + dx], atol=1e-6, rtol=0)
    assert not torch.equal(out, x)


def test_augment_rotates_and_scales_about_the_centre():
    # a centred Gaussian blob is unchanged by rotation, and scaling by s widens it by s (hand formula)
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    r2 = yy ** 2 + xx ** 2
    blob = torch.exp(-r2 / (2 * 5.0 ** 2)).expand(4, 3, 32, 32)
    rotated = _augment(blob, torch.Generator().manual_seed(1), shift=0, scale=0.0, rotate=30.0)
    torch.testing.assert_close(rotated, blob, atol=0.01, rtol=0)
    scaled = _augment(blob, torch.Generator().manual_seed(2), shift=0, scale=0.3, rotate=0.0)
    g = torch.Generator().manual_seed(2)
    torch.randint(0, 1, (4, 2), generator=g)  # the shift draws come first
    factors = 1.0 + (torch.rand(4, generator=g) * 2 - 1) * 0.3
    expected = torch.exp(-r2 / (2 * (5.0 * factors.view(4, 1, 1, 1)) ** 2)).expand(4, 3, 32, 32)
    assert (factors - 1).abs().max() > 0.05  # really scaled
    torch.testing.assert_close(scaled, expected, atol=0.01, rtol=0)


def _toy_data(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes: a bright square in one of three places on noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3 * n_per_class, 3, 32, 32, generator=g) * 0.3
    y = torch.arange(3).repeat_interleave(n_per_class)
    for i, c in enumerate(y.tolist()):
        x[i, :, 4 + 8 * c:12 + 8 * c, 10:20] += 0.7
    return x, y


def test_train_teacher_learns_and_is_deterministic():
    spec = TeacherSpec(name="t00", index=0, architecture="conv4", domain="toy", classes=[0, 1, 2],
                       label_names=["a", "b", "c"], seed=3, epochs=4, batch_size=12, lr=3e-3, image_size=32,
                       dataset="toy", data_seed=0)
    x, y = _toy_data(12, 0)
    with torch_threads(1):  # tiny model: one thread is fastest (and restored afterwards)
        model = train_teacher(spec, x, y, mean=(0.5,) * 3, std=(0.25,) * 3)
    test_x, test_y = _toy_data(10, 1)
    with torch.no_grad():
        accuracy = (model((test_x - 0.5) / 0.25).argmax(1) == test_y).float().mean().item()
    assert accuracy >= 0.9 and not model.training
    threads = torch.get_num_threads()
    with torch_threads(1):
        again = train_teacher(spec, x, y, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.get_num_threads() == threads
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_teacher_on_the_test_device(device):
    """Trained on ``device`` (TGR_HUB_TEST_DEVICE), returned on the CPU; on the CPU bitwise the default."""
    spec = TeacherSpec(name="t00", index=0, architecture="conv4", domain="toy", classes=[0, 1, 2],
                       label_names=["a", "b", "c"], seed=3, epochs=4, batch_size=12, lr=3e-3, image_size=32,
                       dataset="toy", data_seed=0)
    x, y = _toy_data(12, 0)
    with torch_threads(1):
        model = train_teacher(spec, x, y, mean=(0.5,) * 3, std=(0.25,) * 3, device=device)
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    test_x, test_y = _toy_data(10, 1)
    with torch.no_grad():
        assert (model((test_x - 0.5) / 0.25).argmax(1) == test_y).float().mean().item() >= 0.9
    if device.type == "cpu":
        with torch_threads(1):
            default = train_teacher(spec, x, y, mean=(0.5,) * 3, std=(0.25,) * 3)
        for (name, a), b in zip(model.state_dict().items(), default.state_dict().values()):
            assert torch.equal(a, b), name


def test_make_pool_refuses_a_bad_device(tmp_path):
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        make_pool(tmp_path, PoolBuildConfig(domains=["latin"], archs=["conv4"], teachers=1, way=3, epochs=1), seed=0,
                  progress=False, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            make_pool(tmp_path, PoolBuildConfig(domains=["latin"], archs=["conv4"], teachers=1, way=3, epochs=1),
                      seed=0, progress=False, device="cuda")
    assert not (tmp_path / "repo-list.txt").exists()


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(UnknownArchitectureError, match="unknown architecture 'resnet_nope'"):
        make_pool(tmp_path, PoolBuildConfig(domains=["latin"], archs=["conv4", "resnet_nope"], teachers=2, way=3, epochs=1),
                  seed=0, progress=False)
    with pytest.raises(ConfigError, match="cannot build a conv4 teacher for 12px images"):
        make_pool(tmp_path, PoolBuildConfig(domains=["latin"], archs=["conv4"], teachers=1, way=3, epochs=1), seed=0,
                  data=DataConfig(image_size=12), progress=False)
    assert not (tmp_path / "repo-list.txt").exists()


# --- end to end on the glyph benchmark ----------------------------------------------------


# two teachers (conv4, resnet10t), one epoch each: what the make_pool tests build
SMALL_POOL = PoolBuildConfig(domains=["latin", "greek"], archs=["conv4", "resnet10t"], teachers=2, way=3, epochs=1,
                             batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("pool")
    reports = make_pool(out, SMALL_POOL, seed=0, num_threads=1, progress=False)
    return out, reports


def test_make_pool_writes_a_timm_pool(small_pool):
    from tgr_hub.data import load_split
    from tgr_hub.pool import load_pool

    out, reports = small_pool
    assert [(r.name, r.architecture, r.domain) for r in reports] == [("t00", "conv4", "latin"), ("t01", "resnet10t", "latin")]
    lines = (out / "repo-list.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == ["./t00", "./t01"]
    summary = json.loads((out / "pool.json").read_text())
    assert [m["name"] for m in summary["members"]] == ["t00", "t01"] and summary["way"] == 3

    split = load_split("glyphs", "train", domains=["latin", "greek"])
    members = load_pool(out / "repo-list.txt")
    for report, member in zip(reports, members):
        config = json.loads((out / report.name / "config.json").read_text())
        assert config["architecture"] == report.architecture and config["num_classes"] == 3
        assert config["label_names"] == report.label_names == member.label_names
        assert all(name in split.class_names and name.startswith("latin/") for name in report.label_names)
        assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
        assert config["pretrained_cfg"]["mean"] == summary["mean"] and member.mean == tuple(summary["mean"])
        assert report.reload_exact is True

        # the recorded held-out accuracy is what the saved teacher scores on its held-out images
        spec = TeacherSpec(**config["tgr_teacher"]["spec"])
        sub = split.select_classes(spec.classes)
        _, held = split_heldout(sub.labels, 3, spec.heldout_fraction, torch.Generator().manual_seed(spec.seed))
        images = sub.float_images(held)
        with torch.no_grad():
            logits = member.logits(images)
            plain = timm.create_model(f"local-dir:{out / report.name}", pretrained=True).eval()
            assert torch.equal(plain(member.normalize(images)), logits)
        accuracy = (logits.argmax(1) == sub.labels[held]).float().mean().item()
        assert accuracy == pytest.approx(report.heldout_accuracy, abs=1e-4)
        assert report.heldout_images == len(held) and report.train_images == len(sub) - len(held)

    table = format_table(reports)
    assert table.splitlines()[0].split() == ["teacher", "arch", "domain", "classes", "held-out", "acc", "time"]
    assert f"{100 * reports[1].heldout_accuracy:.1f}%" in table.splitlines()[3]


def test_make_pool_resumes_without_retraining(small_pool):
    out, reports = small_pool
    weights = (out / "t00" / "model.safetensors").read_bytes()
    stamp = (out / "t00" / "model.safetensors").stat().st_mtime_ns
    again = make_pool(out, SMALL_POOL, seed=0, num_threads=1, progress=False)
    assert [r.reused for r in again] == [True, True]
    assert [r.heldout_accuracy for r in again] == [r.heldout_accuracy for r in reports]
    assert (out / "t00" / "model.safetensors").stat().st_mtime_ns == stamp


def test_make_pool_is_deterministic(small_pool, tmp_path):
    out, reports = small_pool
    again = make_pool(tmp_path, dataclasses.replace(SMALL_POOL, archs=["conv4"], teachers=1), seed=0, num_threads=1, progress=False)
    assert again[0].label_names == reports[0].label_names and not again[0].reused
    assert (tmp_path / "t00" / "model.safetensors").read_bytes() == (out / "t00" / "model.safetensors").read_bytes()


def test_cli_make_pool(tmp_path, capsys):
    from tgr_hub.cli.main import main

    args = ["make-pool", "--dataset", "glyphs", "--domains", "greek", "--archs", "conv4", "--teachers", "1",
            "--way", "2", "--epochs", "1", "--seed", "3", "--batch-size", "16", "--out", str(tmp_path / "p"),
            "--threads", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "t00" in printed and "conv4" in printed and "greek" in printed and "1 trained, 0 reused" in printed
    assert (tmp_path / "p" / "repo-list.txt").read_text().strip().endswith("./t00")
    assert main(args) == 0
    assert "0 trained, 1 reused" in capsys.readouterr().out
    assert main([*args[:-5], "--archs", "conv4,not_a_model", "--out", str(tmp_path / "q")]) == 2
    assert "unknown architecture 'not_a_model'" in capsys.readouterr().err
