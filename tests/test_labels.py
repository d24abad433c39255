"""Class names of teachers without label_names: timm's ImageNet metadata, or the NAME:INDEX fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import tgr_hub  # noqa: F401  (registers conv4)
from tgr_hub.card import build_model_card
from tgr_hub.config import RecoverConfig
from tgr_hub.errors import EpisodeError
from tgr_hub.labels import imagenet_label_space, resolve_label_names
from tgr_hub.models import save_timm_folder
from tgr_hub.run_record import describe_pool
from tgr_hub.pool import load_pool
from tgr_hub.bank import MemoryBank
from tgr_hub.recover import recover_task

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# a few ImageNet-1k classes, as any ImageNet reference lists them (index: synset, words)
KNOWN = {0: ("n01440764", "tench, Tinca tinca"),
         2: ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
         999: ("n15075141", "toilet tissue, toilet paper, bathroom tissue")}


def imagenet_teacher(folder: Path, *, seed: int, tag: str | None = "tgr_test_in1k", num_classes: int = 1000,
                     label_offset: int | None = None) -> Path:
    """A tiny conv4 ImageNet-layout classifier in timm's Hub layout, with no label_names (32 px, to stay fast)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model("conv4", num_classes=num_classes, img_size=32).eval()
    cfg = {"input_size": (3, 32, 32), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **({"tag": tag} if tag else {})}
    save_timm_folder(model, folder, architecture="conv4", num_classes=num_classes, label_names=None, pretrained_cfg=cfg)
    config = json.loads((folder / "config.json").read_text())
    assert "label_names" not in config and config["pretrained_cfg"].get("tag") == tag
    if label_offset is not None:  # as a TensorFlow port with a background output declares it
        config["pretrained_cfg"]["label_offset"] = label_offset
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("tag, num_classes, offset, expected", [
    ("a1_in1k", 1000, None, ("imagenet-1k", 0)),
    (None, 1000, None, ("imagenet-1k", 0)),  # untagged: the classifier size decides, as timm's infer_imagenet_subset
    ("fb_in22k_ft_in1k", 1000, None, ("imagenet-1k", 0)),  # the last dataset of the tag counts
    ("in12k", 11821, None, ("imagenet-12k", 0)),
    ("augreg_in21k", 21843, None, ("imagenet-21k-goog", 0)),
    ("fb_in22k", 21841, None, ("imagenet-22k", 0)),
    ("tf_in1k", 1001, 1, ("imagenet-1k", 1)),  # a background output first
    ("tf_in1k", 1000, 1, ("imagenet-1k", 0)),  # an offset that timm's exporter already applied
    ("laion2b", 1000, None, None),  # another dataset: not guessed at
    ("in22k", 1000, None, None),  # tag and size disagree
    ("in1k", 11821, None, None),
    (None, 37, None, None),
])
def test_imagenet_label_space(tag, num_classes, offset, expected) -> None:
    cfg = {k: v for k, v in (("tag", tag), ("label_offset", offset)) if v is not None}
    assert imagenet_label_space({"num_classes": num_classes, "pretrained_cfg": cfg}) == expected


def test_an_imagenet_teacher_without_label_names_gets_the_imagenet_classes(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    imagenet_teacher(tmp_path / "pool" / "tiny-in1k", seed=0)
    (tmp_path / "pool" / "repo-list.txt").write_text("./tiny-in1k\n")
    caplog.set_level(logging.INFO, logger="tgr_hub.labels")
    [member] = load_pool(tmp_path / "pool" / "repo-list.txt")
    assert member.num_classes == 1000 and len(set(member.label_names)) == 1000
    for index, (synset, words) in KNOWN.items():
        assert member.label_names[index] == synset
        assert member.label_descriptions[synset] == words
    assert "tiny-in1k: no label_names in config.json; its 1000 classes are timm's imagenet-1k synsets" in caplog.text
    # the run record and the card carry them
    [record] = describe_pool([member])
    assert record["label_names"][:3] == ["n01440764", "n01443537", "n01484850"]
    assert record["label_descriptions"]["n01440764"] == "tench, Tinca tinca"
    from conftest import make_fake_run

    card = str(build_model_card(make_fake_run(tmp_path / "run", pool_members=[record]), "me/meta"))
    assert "n01440764 (tench, Tinca tinca)" in card


def test_a_background_output_keeps_its_index_name(tmp_path: Path) -> None:
    folder = imagenet_teacher(tmp_path / "tf-port", seed=1, tag="tf_in1k", num_classes=1001, label_offset=1)
    config = json.loads((folder / "config.json").read_text())
    labels = resolve_label_names({**config, "label_names": None}, "tf-port")
    assert labels.source == "imagenet-1k"
    assert labels.names[:2] == ["tf-port:0", KNOWN[0][0]] and labels.names[-1] == KNOWN[999][0]


def test_an_unknown_label_space_falls_back_to_index_names_and_says_so(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    imagenet_teacher(tmp_path / "pool" / "odd", seed=2, tag="laion2b", num_classes=1000)
    imagenet_teacher(tmp_path / "pool" / "small", seed=3, tag=None, num_classes=37)
    (tmp_path / "pool" / "repo-list.txt").write_text("./odd\n./small\n")
    caplog.set_level(logging.WARNING, logger="tgr_hub.labels")
    odd, small = load_pool(tmp_path / "pool" / "repo-list.txt")
    assert odd.label_names == [f"odd:{i}" for i in range(1000)] and odd.label_descriptions == {}
    assert small.label_names == [f"small:{i}" for i in range(37)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "odd: config.json has no label_names" in warned[0] and "(tag 'laion2b')" in warned[0]
    assert "named small:0..small:36 and shared with no other teacher" in warned[1]


def test_two_imagenet_teachers_share_their_common_classes_in_the_bank(tmp_path: Path) -> None:
    imagenet_teacher(tmp_path / "pool" / "a", seed=4)
    imagenet_teacher(tmp_path / "pool" / "b", seed=5, tag="in22k_ft_in1k")
    (tmp_path / "pool" / "repo-list.txt").write_text("./a\n./b\n")
    a, b = load_pool(tmp_path / "pool" / "repo-list.txt")
    cfg = RecoverConfig(steps=1, images_per_class=2, latent_dim=8, generator_width=8)
    bank = MemoryBank(bank_size=2)
    bank.add(recover_task(a, [0, 1, 2], cfg, seed=0))
    bank.add(recover_task(b, [2, 999, 3], cfg, seed=1))  # class 2 (the great white shark) overlaps
    assert bank.class_name("a", 2) == bank.class_name("b", 2) == KNOWN[2][0]
    assert bank.class_name("a", 0) == KNOWN[0][0] and bank.class_name("b", 999) == KNOWN[999][0]
    # six (teacher, class) keys, five classes: a 5-way episode takes each class once ...
    assert bank.num_classes == 6
    rng = np.random.default_rng(0)
    for _ in range(20):
        episode = bank.sample_episode(5, 1, 1, rng, resize_to=32)
        names = [bank.class_name(*key) for key in episode.classes]
        assert sorted(names) == sorted({KNOWN[0][0], "n01443537", KNOWN[2][0], "n01491361", KNOWN[999][0]})
    # ... and there is no sixth class to draw
    with pytest.raises(EpisodeError, match="5 distinct classes"):
        bank.sample_episode(6, 1, 1, rng, resize_to=32)
