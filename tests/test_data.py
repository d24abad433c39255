"""The glyph benchmark and the other dataset sources, checked against hand computations.

The full benchmark is built once per machine (in the default cache, shared with the other
tests that use ``load_split("glyphs", ...)``); builds that a test must watch happen in a
temporary cache with 1-2 instances per class, reusing the cached glyph choice.
"""

from __future__ import annotations

import collections
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tgr_hub.data import (
    GLYPH_DOMAINS,
    EpisodeSampler,
    build_glyphs,
    glyph_classes,
    load_glyph_dataset,
    load_split,
    split_classes,
)
from tgr_hub.data import glyphs, sources
from tgr_hub.errors import DatasetError, TgrHubError

INSTANCES = glyphs.DEFAULT_INSTANCES


@pytest.fixture(scope="session")
def glyph_folder() -> Path:
    return build_glyphs()  # default seed/size/cache: a no-op when this machine has built it before


@pytest.fixture(scope="session")
def classes(glyph_folder: Path) -> list[dict]:
    return glyph_classes()


@pytest.fixture(scope="session")
def tensors(glyph_folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    loaded = load_file(str(glyph_folder / "images.safetensors"))
    return loaded["images"], loaded["labels"]


@pytest.fixture
def small_cache(tmp_path: Path, glyph_folder: Path) -> Path:
    """An empty cache root that already knows the glyph choice (so a build only renders)."""
    shutil.copy(glyphs.choice_cache_path(), glyphs.choice_cache_path(tmp_path))
    return tmp_path


# --- the benchmark's content -------------------------------------------------------------


def test_at_least_300_classes_in_at_least_3_domains(classes: list[dict]) -> None:
    assert len(classes) >= 300
    per_domain = collections.Counter(c["domain"] for c in classes)
    assert set(per_domain) == set(GLYPH_DOMAINS) and len(GLYPH_DOMAINS) >= 3
    assert all(n >= 40 for n in per_domain.values()), per_domain
    assert len({c["name"] for c in classes}) == len(classes)
    assert all(c["name"] == f"{c['domain']}/{chr(c['codepoint'])}" for c in classes)


def test_splits_are_class_disjoint_and_60_20_20_within_each_domain(classes: list[dict]) -> None:
    for domain in GLYPH_DOMAINS:
        members = [c for c in classes if c["domain"] == domain]
        by_split = {s: {c["name"] for c in members if c["split"] == s} for s in ("train", "val", "test")}
        assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                    or by_split["val"] & by_split["test"])
        n = len(members)
        assert len(by_split["val"]) == len(by_split["test"]) == round(0.2 * n)  # hand computation
        assert len(by_split["train"]) == n - 2 * round(0.2 * n)
        # the documented rule: split_classes over the domain's classes, seeded by (seed, domain)
        expected = split_classes(n, seed=glyphs._domain_seed(0, GLYPH_DOMAINS.index(domain)))
        for split, positions in expected.items():
            assert {members[p]["name"] for p in positions} == by_split[split]


def test_every_class_has_its_instances(tensors: tuple[torch.Tensor, torch.Tensor], classes: list[dict]) -> None:
    images, labels = tensors
    assert images.dtype == torch.uint8 and images.shape == (len(classes) * INSTANCES, 3, 32, 32)
    assert INSTANCES >= 20
    assert torch.bincount(labels, minlength=len(classes)).tolist() == [INSTANCES] * len(classes)
    # all instances are distinct images (font x augmentation)
    assert torch.unique(images.reshape(len(images), -1), dim=0).shape[0] == len(images)


def test_images_are_dark_glyphs_on_light_paper(tensors: tuple[torch.Tensor, torch.Tensor]) -> None:
    images = tensors[0][::97].float()
    grey = images.mean(1)  # [n, 32, 32]
    corners = torch.stack([grey[:, 0, 0], grey[:, 0, -1], grey[:, -1, 0], grey[:, -1, -1]], 1)
    assert (corners.min(1).values > 150).all()  # paper in the corners: the glyph is placed inside
    assert (grey.amin((1, 2)) < 140).all()  # and every image has ink


def test_no_tofu_every_font_maps_its_characters(classes: list[dict]) -> None:
    from fontTools.ttLib import TTFont

    cmaps = {}
    for c in classes:
        assert len(c["fonts"]) >= glyphs.MIN_FONTS
        for font in c["fonts"]:
            if font not in cmaps:
                with TTFont(str(glyphs.font_dir() / font), lazy=True) as ttf:
                    cmaps[font] = ttf.getBestCmap()
            assert cmaps[font].get(c["codepoint"], ".notdef") != ".notdef", (c["name"], font)
    assert not {"LastResortHE-Regular.ttf", "cmsy10.ttf", "cmex10.ttf"} & set(cmaps)


def test_look_alikes_are_kept_once(classes: list[dict]) -> None:
    names = {c["name"]: c for c in classes}
    assert "latin/O" in names and "latin/o" not in names  # the same shape, scale-normalised
    assert "symbols/→" in names and "symbols/⇢" not in names
    assert "cyrillic/Н" in names and "cyrillic/И" in names  # similar, but not the same
    # l is an I in DejaVu Sans: it is not drawn in that font, but in the serif fonts it is
    assert "DejaVuSans.ttf" in names["latin/I"]["fonts"]
    assert "DejaVuSans.ttf" not in names["latin/l"]["fonts"]
    assert "DejaVuSerif.ttf" in names["latin/l"]["fonts"]


def test_lookalike_distance_by_hand() -> None:
    # a bar, the same bar twice as thick, and a bar with a dot far above it
    bar = np.zeros((40, 8), np.uint8)
    bar[:, 3:5] = 255
    thick = np.zeros((40, 8), np.uint8)
    thick[:, 2:6] = 255
    dotted = np.zeros((40, 8), np.uint8)
    dotted[12:, 3:5] = 255
    dotted[:4, 3:5] = 255
    masks = [bar, thick, dotted]
    ink, far = glyphs._shapes(masks)
    present = np.array([[True, True, True, False]])
    d = glyphs._pair_distances(np.concatenate([ink, ink[:1]])[None], np.concatenate([far, far[:1]])[None], present)[0]
    assert np.isnan(d[3]).all() and np.isnan(d[:, 3]).all()  # absent from the font
    d = d[:3, :3]
    # reference: Euclidean distance transform instead of dilation, per pair, per direction
    from scipy import ndimage

    binary = [np.asarray(glyphs._place(m, glyphs.SHAPE_RES)) >= 128 for m in masks]
    dist = [ndimage.distance_transform_edt(~b) for b in binary]
    for a in range(3):
        for b in range(3):
            one_way = [float((dist[y][binary[x]] > glyphs.SHAPE_TOLERANCE).mean()) for x, y in ((a, b), (b, a))]
            assert d[a, b] == pytest.approx(max(one_way), abs=1e-6)
    assert d[0, 1] <= glyphs.FONT_DUP and d[0, 0] == 0  # stroke width does not count
    assert d[0, 2] > 5 * glyphs.FONT_DUP and d[1, 2] > 5 * glyphs.FONT_DUP  # the gap does


# --- splits as ImageSplit -------------------------------------------------------------------


def test_load_split_matches_the_class_table(classes: list[dict], tensors: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = tensors
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        part = load_split("glyphs", split)
        expected = [c["name"] for c in classes if c["split"] == split]
        assert part.class_names == expected
        assert part.class_domains == [n.split("/")[0] for n in expected]
        assert part.images.shape == (len(expected) * INSTANCES, 3, 32, 32) and part.images.dtype == torch.uint8
        assert part.labels.dtype == torch.int64
        assert part.class_counts().tolist() == [INSTANCES] * len(expected)
        assert not seen & set(expected)
        seen |= set(expected)
        # class k of the split is global class ids[k]: same images, same order
        ids = [i for i, c in enumerate(classes) if c["split"] == split]
        for k in (0, len(ids) // 2, len(ids) - 1):
            assert torch.equal(part.images[part.indices_of(k)], images[labels == ids[k]])
    assert seen == {c["name"] for c in classes}


def test_validation_is_val_and_domains_filter() -> None:
    val = load_split("glyphs", "val")
    assert load_split("glyphs", "validation").class_names == val.class_names
    greek = load_split("glyphs", "val", domains=["greek"])
    assert set(greek.class_domains) == {"greek"}
    wanted = [i for i, d in enumerate(val.class_domains) if d == "greek"]
    assert greek.class_names == [val.class_names[i] for i in wanted]
    assert torch.equal(greek.images, val.select_classes(wanted).images)
    two = load_split("glyphs", "test", domains=["latin", "symbols"])
    assert set(two.class_domains) == {"latin", "symbols"}


def test_glyph_episodes_5_way_5_shot_15_query() -> None:
    test = load_split("glyphs", "test")
    sampler = EpisodeSampler(test, way=5, shot=5, query=15, seed=0)
    episode = sampler.episode(0)
    assert episode.support_x.shape == (25, 3, 32, 32) and episode.query_x.shape == (75, 3, 32, 32)
    assert not set(episode.support_idx.tolist()) & set(episode.query_idx.tolist())
    assert test.labels[episode.query_idx].tolist() == [c for c in episode.classes for _ in range(15)]


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown glyph domain"):
        load_split("glyphs", "test", domains=["klingon"])
    with pytest.raises(DatasetError, match="unknown split"):
        load_split("glyphs", "dev")
    with pytest.raises(DatasetError, match="seed"):
        load_split("glyphs", "test", seed=-1)
    with pytest.raises(DatasetError, match="image_size"):
        load_split("glyphs", "test", image_size=4)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DatasetError, match="cannot write the glyph benchmark cache"):
        load_split("glyphs", "test", cache_dir=tmp_path / "a-file")
    assert issubclass(DatasetError, TgrHubError) and issubclass(DatasetError, ValueError)


# --- determinism and the cache ------------------------------------------------------------


def test_build_is_deterministic(tensors: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = tensors
    table = glyphs.select_classes(0)
    picked = [next(i for i, c in enumerate(table) if c.domain == d) for d in GLYPH_DOMAINS]
    again, _ = glyphs._render_all([table[i] for i in picked], 0, 32, INSTANCES)
    again = torch.from_numpy(again).permute(0, 3, 1, 2)
    for n, i in enumerate(picked):
        assert torch.equal(again[n * INSTANCES:(n + 1) * INSTANCES], images[labels == i])
    other, _ = glyphs._render_all([table[picked[0]]], 1, 32, INSTANCES)  # another seed, other images
    assert not torch.equal(torch.from_numpy(other).permute(0, 3, 1, 2), images[labels == picked[0]])
    # the seed moves classes between splits, not in or out of the benchmark
    seed1 = glyphs.select_classes(1)
    assert [c.name for c in seed1] == [c.name for c in table]
    assert [c.split for c in seed1] != [c.split for c in table]
    assert [c.split for c in glyphs.select_classes(0)] == [c.split for c in table]


def test_cache_is_reused(glyph_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (glyph_folder / "meta.json").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached benchmark was rebuilt")

    monkeypatch.setattr(glyphs, "_render_all", no_rebuild)
    monkeypatch.setattr(glyphs, "choose_glyphs", no_rebuild)
    assert build_glyphs() == glyph_folder
    assert load_split("glyphs", "train").num_classes > 0
    assert (glyph_folder / "meta.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_concurrent_builders_do_not_corrupt_the_cache(small_cache: Path) -> None:
    results: list[Path | BaseException] = []
    start = threading.Barrier(2)

    def build() -> None:
        start.wait()
        try:
            results.append(build_glyphs(0, 16, instances=2, cache_dir=small_cache, with_hf=False))
        except BaseException as error:  # noqa: BLE001 - reported below
            results.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folder = glyphs.glyph_cache_dir(0, 16, 2, small_cache)
    assert results == [folder, folder]
    expected = [folder.name, glyphs.choice_cache_path(small_cache).name]
    assert sorted(p.name for p in small_cache.iterdir()) == sorted(expected)  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["images.safetensors", "meta.json"]
    small = glyphs.load_glyph_split("test", cache_dir=small_cache, image_size=16, instances=2)
    assert small.class_names == load_split("glyphs", "test").class_names
    assert small.class_counts().tolist() == [2] * small.num_classes


def test_a_build_finished_meanwhile_by_another_process_is_kept(small_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_render = glyphs._render_all
    theirs: list[tuple[Path, int, int]] = []

    def render_while_another_process_finishes(*args, **kwargs):
        monkeypatch.setattr(glyphs, "_render_all", real_render)
        folder = build_glyphs(0, 16, instances=1, cache_dir=small_cache, with_hf=False)  # "the other process"
        theirs.append((folder, folder.stat().st_ino, (folder / "meta.json").stat().st_mtime_ns))
        return real_render(*args, **kwargs)

    monkeypatch.setattr(glyphs, "_render_all", render_while_another_process_finishes)
    folder = build_glyphs(0, 16, instances=1, cache_dir=small_cache, with_hf=False)
    # ours was dropped: the folder is still theirs, untouched
    assert theirs == [(folder, folder.stat().st_ino, (folder / "meta.json").stat().st_mtime_ns)]
    assert glyphs.load_glyph_split("val", image_size=16, instances=1, cache_dir=small_cache).class_counts().max() == 1
    assert not [p for p in small_cache.iterdir() if p.name.startswith(".")]  # our temporary folder is gone


def test_stale_cache_is_rebuilt(small_cache: Path) -> None:
    folder = build_glyphs(0, 16, instances=1, cache_dir=small_cache, with_hf=False)
    first = glyphs.load_glyph_split("train", image_size=16, instances=1, cache_dir=small_cache)
    assert first.images.shape[1:] == (3, 16, 16)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta["font_fingerprint"] = "fonts-of-another-matplotlib"
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    again = glyphs.load_glyph_split("train", image_size=16, instances=1, cache_dir=small_cache)
    rebuilt = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert rebuilt["font_fingerprint"] != meta["font_fingerprint"]
    assert torch.equal(again.images, first.images)
    assert not [p for p in small_cache.iterdir() if p.name.startswith(".")]  # no temporary folder left


# --- the datasets.Dataset view -------------------------------------------------------------


def test_glyphs_as_a_datasets_dataset(classes: list[dict], tensors: tuple[torch.Tensor, torch.Tensor]) -> None:
    import datasets

    images, labels = tensors
    dd = load_glyph_dataset()
    assert isinstance(dd, datasets.DatasetDict) and set(dd) == {"train", "validation", "test"}
    for key, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        part = dd[key]
        assert set(part.column_names) == {"image", "label", "domain"}
        assert isinstance(part.features["image"], datasets.Image)
        assert isinstance(part.features["label"], datasets.ClassLabel)
        assert part.features["label"].names == [c["name"] for c in classes]
        assert part.features["domain"] == datasets.Value("string")
        assert part.num_rows == INSTANCES * sum(c["split"] == split for c in classes)
    row_labels = np.asarray(dd["validation"].select_columns(["label"]).with_format("numpy")[:]["label"])
    assert {classes[i]["split"] for i in row_labels.tolist()} == {"val"}
    # rows are the tensor images, losslessly (PNG)
    first = dd["test"][0]
    label = first["label"]
    assert first["domain"] == classes[label]["domain"]
    assert torch.equal(torch.from_numpy(np.array(first["image"].convert("RGB"))).permute(2, 0, 1),
                       images[labels == label][0])


def test_saved_glyph_dataset_round_trips_through_load_split(glyph_folder: Path, tmp_path: Path) -> None:
    # the hf/ copy is a save_to_disk DatasetDict with class-disjoint train/validation/test:
    # load_split uses those splits and the domain column, and gets the same split back
    part = load_split(str(glyph_folder / "hf"), "val", image_size=32, cache_dir=tmp_path)
    reference = load_split("glyphs", "val")
    assert part.class_names == reference.class_names
    assert part.class_domains == reference.class_domains
    assert torch.equal(part.images, reference.images) and torch.equal(part.labels, reference.labels)


# --- other datasets --------------------------------------------------------------------------

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 128)]


def make_imagefolder(root: Path, per_class: int = 4) -> Path:
    """Ten classes of solid-colour images (sizes vary), one sub-folder each."""
    for c, colour in enumerate(COLOURS):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + 3 * i, 24), colour).save(folder / f"{i}.png")
    return root


def test_imagefolder_splits_by_class(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "colours")
    names = sorted(f"class_{c}" for c in range(10))  # ClassLabel order: sorted folder names
    expected = split_classes(10, seed=3)  # hand computation: 6 / 2 / 2 classes
    seen = set()
    for split in ("train", "val", "test"):
        part = load_split(str(root), split, image_size=16, seed=3, cache_dir=tmp_path / "cache")
        assert part.class_names == [names[i] for i in expected[split]]
        assert part.class_domains == ["colours"] * len(expected[split])
        assert part.images.shape == (4 * len(expected[split]), 3, 16, 16) and part.images.dtype == torch.uint8
        assert part.class_counts().tolist() == [4] * len(expected[split])
        for k, name in enumerate(part.class_names):
            colour = torch.tensor(COLOURS[int(name.split("_")[1])], dtype=torch.uint8)
            assert (part.images[part.indices_of(k)] == colour[None, :, None, None]).all()
        seen |= set(part.class_names)
    assert seen == set(names)
    other = load_split(str(root), "test", image_size=16, seed=4, cache_dir=tmp_path / "cache")
    assert other.class_names == [names[i] for i in split_classes(10, seed=4)["test"]]


def test_imagefolder_cache_needs_no_datasets_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_imagefolder(tmp_path / "colours")
    first = load_split(str(root), "train", image_size=16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "datasets").glob("*.safetensors"))) == 1

    def no_open(*args, **kwargs):
        raise AssertionError("the converted dataset was not taken from the cache")

    monkeypatch.setattr(sources, "open_source", no_open)
    again = load_split(str(root), "train", image_size=16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, first.images) and again.class_names == first.class_names
    monkeypatch.undo()
    Image.new("RGB", (20, 24), (1, 2, 3)).save(root / "class_0" / "new.png")  # the folder changed: re-read
    changed = load_split(str(root), "train", image_size=16, cache_dir=tmp_path / "cache")
    assert changed.class_counts().sum() == first.class_counts().sum() + ("class_0" in first.class_names)


def test_save_to_disk_with_string_labels_and_centre_crop(tmp_path: Path) -> None:
    import datasets

    # 40x20 images: red | green (the centre 20x20) | blue; a centre crop keeps only green
    strip = np.zeros((20, 40, 3), np.uint8)
    strip[:, :10, 0] = 255
    strip[:, 10:30, 1] = 255
    strip[:, 30:, 2] = 255
    words = ["cat", "dog", "emu", "fox", "gnu"]
    rows = {"img": [Image.fromarray(strip) for _ in range(15)], "labels": [words[i % 5] for i in range(15)]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"img": datasets.Image(), "labels": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "animals"))
    expected = split_classes(5, seed=0)  # 3 / 1 / 1
    part = load_split(str(tmp_path / "animals"), "train", image_size=10, cache_dir=tmp_path / "cache")
    assert part.class_names == [words[i] for i in expected["train"]]
    assert part.class_counts().tolist() == [3, 3, 3]
    centre = part.images[:, :, 2:-2, 2:-2]  # away from the resampled border
    assert (centre[:, 1] >= 250).all() and (centre[:, 0] <= 5).all() and (centre[:, 2] <= 5).all()


def test_dataset_dict_with_shared_classes_is_split_by_class(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcdefghij"))})

    def part(labels: list[int]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8), (10 * label, 0, 0)) for label in labels], "label": labels},
            features=features)

    # train and test share every class: not usable as they are, so all images are pooled
    shared = datasets.DatasetDict({"train": part(list(range(10)) * 2), "test": part(list(range(10)))})
    shared.save_to_disk(str(tmp_path / "shared"))
    test = load_split(str(tmp_path / "shared"), "test", image_size=8, seed=1, cache_dir=tmp_path / "cache")
    assert test.class_names == [list("abcdefghij")[i] for i in split_classes(10, seed=1)["test"]]
    assert test.class_counts().tolist() == [3, 3]
    # class-disjoint train/validation/test are used as given, whatever the seed
    own = datasets.DatasetDict({"train": part([0, 1, 2, 3] * 2), "validation": part([4, 5] * 2),
                                "test": part([6, 7, 8, 9] * 2)})
    own.save_to_disk(str(tmp_path / "own"))
    for seed in (0, 5):
        test = load_split(str(tmp_path / "own"), "test", image_size=8, seed=seed, cache_dir=tmp_path / "cache")
        assert test.class_names == ["g", "h", "i", "j"]
        assert (test.images[:, 0, 0, 0] == torch.tensor([60, 70, 80, 90])[test.labels]).all()


def test_splits_that_number_their_classes_separately_are_taken_per_split(tmp_path: Path) -> None:
    """Integer labels 0..63 / 0..15 / 0..19 (a CIFAR-FS-style upload): label 3 of test is not label 3 of train."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})

    def part(split_code: int, classes: int) -> datasets.Dataset:  # pixel (split, class): the true identity
        labels = list(range(classes)) * 2
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8), (40 * split_code, 10 * c, 0)) for c in labels], "label": labels},
            features=features)

    numbered = datasets.DatasetDict({"train": part(1, 6), "validation": part(2, 3), "test": part(3, 4)})
    numbered.save_to_disk(str(tmp_path / "numbered"))
    for split, code, count in (("train", 1, 6), ("val", 2, 3), ("test", 3, 4)):
        loaded = load_split(str(tmp_path / "numbered"), split, image_size=8, cache_dir=tmp_path / "cache")
        key = "validation" if split == "val" else split
        assert loaded.class_names == [f"{key}/{c}" for c in range(count)] and loaded.class_split == "dataset"
        assert (loaded.images[:, 0, 0, 0] == 40 * code).all()  # every image comes from its own split
        assert (loaded.images[:, 1, 0, 0] == 10 * loaded.labels).all()
    # the control: one shared numbering with equal counts (an image-level split) is still pooled by class
    shared = datasets.DatasetDict({"train": part(1, 9), "validation": part(2, 9), "test": part(3, 9)})
    shared.save_to_disk(str(tmp_path / "shared"))
    pooled = load_split(str(tmp_path / "shared"), "test", image_size=8, seed=0, cache_dir=tmp_path / "cache")
    assert pooled.class_split == "seeded-60/20/20:0" and not pooled.class_names[0].startswith("test/")


def test_source_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from huggingface_hub import constants

    with pytest.raises(DatasetError, match="neither an existing folder nor a Hub dataset id"):
        load_split(str(tmp_path / "no" / "such folder"), "test", cache_dir=tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        load_split(str(tmp_path / "file.txt"), "test", cache_dir=tmp_path)
    no_image = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    no_image.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DatasetError, match="no image column"):
        load_split(str(tmp_path / "text"), "test", cache_dir=tmp_path)
    no_label = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 2},
                                          features=datasets.Features({"image": datasets.Image()}))
    no_label.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(DatasetError, match="no label column"):
        load_split(str(tmp_path / "unlabelled"), "test", cache_dir=tmp_path)
    colours = make_imagefolder(tmp_path / "colours", per_class=1)
    with pytest.raises(DatasetError, match="no test classes in domains"):
        load_split(str(colours), "test", domains=["latin"], cache_dir=tmp_path)
    # a Hub id that cannot be fetched (offline) is a DatasetError, not a raw ConnectionError
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="cannot load Hub dataset 'someone/no-such-dataset' .*no local folder"):
        load_split("someone/no-such-dataset", "test", cache_dir=tmp_path)
