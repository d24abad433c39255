"""Conv4 registered with timm, and the timm Hub folder layout (save / timm load / checked load)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tgr_hub  # noqa: F401  (registers conv4)
import timm
from tgr_hub.errors import NotAClassifierError, TeacherNotFoundError
from tgr_hub.models import Conv4, create_from_folder, read_timm_config, save_timm_folder


def _seeded(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, **kwargs)
    # non-trivial BN statistics, so that a layout that loses buffers is caught
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            g = torch.Generator().manual_seed(seed + module.num_features)
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return model.eval()


def test_conv4_is_registered_and_has_the_reference_structure():
    assert timm.is_model("conv4") and "conv4" in timm.list_models("conv4*")
    model = timm.create_model("conv4", num_classes=5)
    assert isinstance(model, Conv4)
    kinds = [type(m) for m in model.blocks.modules() if not isinstance(m, nn.Sequential)]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d] * 4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(3, 32, (3, 3), (1, 1))] + [(32, 32, (3, 3), (1, 1))] * 3
    assert model.num_features == 32 * 2 * 2  # flattened 2x2 map at 32x32
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert timm.create_model("conv4", num_classes=0, img_size=64).num_features == 32 * 4 * 4
    assert timm.create_model("conv4", num_classes=0, global_pool="avg").num_features == 32
    assert timm.create_model("conv4_w64", num_classes=0).num_features == 64 * 2 * 2


def test_conv4_forward_matches_a_hand_computation():
    model = _seeded("conv4", num_classes=5)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    h = x
    for block in model.blocks:
        conv, bn = block[0], block[1]
        h = F.conv2d(h, conv.weight, conv.bias, padding=1)
        h = (h - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
        h = h * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        h = F.max_pool2d(F.relu(h), 2)
    expected = h.flatten(1) @ model.fc.weight.T + model.fc.bias
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(features, h.flatten(1), atol=1e-5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (3, 128)
    model.reset_classifier(7, global_pool="avg")
    assert model.num_features == 32 and model(x).shape == (3, 7)


@pytest.mark.parametrize("arch", ["conv4", "resnet10t"])
def test_saved_folder_loads_with_plain_timm_and_reproduces_logits(tmp_path, arch):
    model = _seeded(arch, num_classes=5)
    labels = ["latin/A", "latin/B", "greek/alpha", "greek/beta", "latin/C"]
    cfg = {"input_size": (3, 32, 32), "mean": (0.2, 0.3, 0.4), "std": (0.5, 0.6, 0.7), "interpolation": "bilinear"}
    save_timm_folder(model, tmp_path / "t", architecture=arch, num_classes=5, label_names=labels,
                     pretrained_cfg=cfg, extra={"tgr_teacher": {"domain": "latin"}})
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["architecture"] == arch and config["num_classes"] == 5
    assert config["num_features"] == model.num_features
    assert config["label_names"] == labels
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == [0.2, 0.3, 0.4] and config["pretrained_cfg"]["std"] == [0.5, 0.6, 0.7]
    assert config["tgr_teacher"] == {"domain": "latin"}
    assert "test_input_size" not in config["pretrained_cfg"]  # the registry's ImageNet eval size does not apply

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reloaded = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert tuple(reloaded.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert list(reloaded.pretrained_cfg["label_names"]) == labels

    checked, read = create_from_folder(tmp_path / "t")
    with torch.no_grad():
        assert torch.equal(model(x), checked(x))
    assert read["label_names"] == labels and not checked.training
    headless, _ = create_from_folder(tmp_path / "t", num_classes=0)
    with torch.no_grad():
        assert torch.equal(headless(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_feature_extractor_round_trip(tmp_path):
    model = _seeded("conv4", num_classes=0)
    save_timm_folder(model, tmp_path / "m", architecture="conv4", num_classes=0, label_names=None,
                     pretrained_cfg={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    config = read_timm_config(tmp_path / "m")
    assert config["num_classes"] == 0 and config["label_names"] is None
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x)) and reloaded(x).shape == (2, 128)


def test_read_timm_config_errors_and_legacy_format(tmp_path):
    with pytest.raises(TeacherNotFoundError, match="does not exist"):
        read_timm_config(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(TeacherNotFoundError, match="has no config.json"):
        read_timm_config(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(NotAClassifierError, match="not valid JSON"):
        read_timm_config(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(NotAClassifierError, match="no 'architecture'"):
        read_timm_config(tmp_path / "a")
    legacy = {"architecture": "conv4", "num_classes": 2, "labels": ["x", "y"], "input_size": [3, 32, 32],
              "mean": [0.5] * 3, "std": [0.5] * 3}
    (tmp_path / "a" / "config.json").write_text(json.dumps(legacy))
    config = read_timm_config(tmp_path / "a")
    assert config["architecture"] == "conv4" and config["label_names"] == ["x", "y"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    (tmp_path / "a" / "config.json").write_text(json.dumps({**legacy, "labels": ["x"]}))
    with pytest.raises(NotAClassifierError, match="must list 2 names"):
        read_timm_config(tmp_path / "a")
