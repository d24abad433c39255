"""Hub datasets end to end, over real HTTP with the real ``datasets`` / ``huggingface_hub`` clients.

A small CIFAR-FS-shaped benchmark (32 px, class-disjoint train / validation / test) is pushed to
the test Hub with ``datasets``' own ``push_to_hub`` and tagged ``v1``; a later commit moves
``main`` past the tag, so a recorded revision shows which commit a run really used. Then:
``make-pool``, ``train --preset smoke`` and ``evaluate`` by id, ``evaluate`` again offline from the
cache alone, a paper recipe at 84 px, class-split files and the built-in CUB split, and the
converted-image cache (keyed by commit and image size, uint8).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import WRITE_TOKEN  # noqa: E402  (tests/ is on sys.path)
from tgr_hub.data import load_split, sources
from tgr_hub.data.class_splits import read_class_split
from tgr_hub.data.episodes import channel_stats
from tgr_hub.errors import ConfigError, DatasetError

BENCH = "tgr-org/cifarfs-tiny"
SINGLE = "tgr-org/birds-one-split"
MINI = "tgr-org/mini-tiny"
CLASSES = {"train": [f"train_{i}" for i in range(6)], "validation": [f"val_{i}" for i in range(5)],
           "test": [f"test_{i}" for i in range(5)]}
PER_CLASS = 12


def _class_image(code: int, index: int, size: tuple[int, int]) -> Image.Image:
    """A class-dependent colour with a per-image pattern: distinct, deterministic pixels."""
    rng = np.random.default_rng([code, index])
    base = np.array([(37 * code) % 256, (91 * code + 40) % 256, (53 * code + 90) % 256], dtype=np.int64)
    noise = rng.integers(-30, 31, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _benchmark(names_by_split: dict[str, list[str]], size: tuple[int, int], per_class: int = PER_CLASS):
    """A DatasetDict with one ClassLabel over all classes, each split holding its own classes."""
    import datasets

    names = [n for split in names_by_split.values() for n in split]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    parts = {}
    for split, split_names in names_by_split.items():
        rows: dict[str, list] = {"image": [], "label": []}
        for name in split_names:
            code = names.index(name)
            for i in range(per_class):
                rows["image"].append(_class_image(code, i, size))
                rows["label"].append(code)
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(parts)


@pytest.fixture(scope="module")
def pushed(hub_server) -> dict[str, str]:
    """Push the benchmarks; return the commit ids: ``v1`` (tagged) and ``main`` (one commit later)."""
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE_TOKEN)
    _benchmark(CLASSES, (32, 32)).push_to_hub(BENCH, token=WRITE_TOKEN)
    v1 = api.dataset_info(BENCH).sha
    api.create_tag(BENCH, tag="v1", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"notes\n", path_in_repo="NOTES.md", repo_id=BENCH, repo_type="dataset")
    main = api.dataset_info(BENCH).sha
    # one split only (image-level, as CUB uploads are), class names numbered like CUB's
    _benchmark({"train": [f"{i:03d}.bird_{i}" for i in range(1, 10)]}, (40, 30), per_class=3).push_to_hub(
        SINGLE, token=WRITE_TOKEN)
    # miniImageNet-shaped: 84 px recipe, images larger than 84 px and not square (centre crop + resize)
    _benchmark(CLASSES, (100, 90), per_class=10).push_to_hub(MINI, token=WRITE_TOKEN)
    assert v1 != main
    return {"v1": v1, "main": main}


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Subprocess environment with its own Hub / datasets caches (so offline means: what these runs fetched)."""
    root = tmp_path_factory.mktemp("hub-datasets-cli")
    return {"HF_HUB_CACHE": str(root / "hub"), "HF_DATASETS_CACHE": str(root / "datasets"),
            "TGR_HUB_CACHE": str(root / "tgr"), "HF_HUB_OFFLINE": "0"}


def _cli(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tgr_hub.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)
    return done


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


# --- loading by id -----------------------------------------------------------------------------


@pytest.mark.slow
def test_pushed_benchmark_loads_by_id_with_its_own_splits(pushed, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="tgr_hub.data.sources"):
        parts = {s: load_split(f"{BENCH}@v1", s, image_size=32, cache_dir=tmp_path) for s in ("train", "val", "test")}
    assert "its own class-disjoint splits" in caplog.text
    for split, key in (("train", "train"), ("val", "validation"), ("test", "test")):
        part = parts[split]
        assert part.class_names == CLASSES[key]  # the dataset's own splits, as they are
        assert part.revision == pushed["v1"] and part.class_split == "dataset"
        assert part.images.dtype == torch.uint8 and part.images.shape == (PER_CLASS * len(CLASSES[key]), 3, 32, 32)
        names = [n for s in CLASSES.values() for n in s]
        for k, name in enumerate(part.class_names):  # pixels are the pushed ones (32 px: no resampling)
            expected = np.stack([np.asarray(_class_image(names.index(name), i, (32, 32))) for i in range(PER_CLASS)])
            got = part.images[part.indices_of(k)].permute(0, 2, 3, 1).numpy()
            assert np.array_equal(got, expected)
    head = load_split(BENCH, "test", image_size=32, cache_dir=tmp_path)
    assert head.revision == pushed["main"]


@pytest.mark.slow
def test_converted_images_are_cached_by_commit_and_image_size(pushed, hub_server, tmp_path: Path,
                                                              monkeypatch) -> None:
    key = dict(split="test", name="cifarfs-tiny", image_size=32)
    at_v1 = sources.source_cache_key(BENCH, fingerprint=f"hub:{pushed['v1']}", **key)
    path_v1 = sources.source_cache_path(tmp_path, at_v1)
    assert path_v1 == sources.source_cache_path(tmp_path, dict(at_v1))
    assert path_v1 != sources.source_cache_path(
        tmp_path, sources.source_cache_key(BENCH, fingerprint=f"hub:{pushed['main']}", **key))
    assert path_v1 != sources.source_cache_path(
        tmp_path, sources.source_cache_key(BENCH, fingerprint=f"hub:{pushed['v1']}", **{**key, "image_size": 40}))

    first = load_split(f"{BENCH}@v1", "test", image_size=32, cache_dir=tmp_path)  # via the tag
    assert path_v1.is_file()  # cached under the commit the tag resolved to

    def no_open(*args, **kwargs):
        raise AssertionError("the Hub dataset was opened although its converted images are cached")

    before = len(hub_server.requests)
    monkeypatch.setattr(sources, "open_source", no_open)
    again = load_split(f"{BENCH}@{pushed['v1']}", "test", image_size=32, cache_dir=tmp_path)
    assert len(hub_server.requests) == before  # a commit id is found in the cache without asking the Hub
    assert torch.equal(again.images, first.images) and again.revision == pushed["v1"]
    monkeypatch.undo()
    larger = load_split(f"{BENCH}@{pushed['v1']}", "test", image_size=40, cache_dir=tmp_path)
    assert larger.images.shape[-1] == 40 and larger.images.dtype == torch.uint8
    assert len(list((tmp_path / "datasets").glob("*.safetensors"))) == 2


@pytest.mark.slow
def test_unknown_hub_dataset_is_a_dataset_error(pushed, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot load Hub dataset 'tgr-org/no-such-benchmark'"):
        load_split("tgr-org/no-such-benchmark", "test", cache_dir=tmp_path)


def test_a_dataset_error_never_repeats_a_token_the_hub_echoes(hf_token, tmp_path: Path, monkeypatch) -> None:
    """Dataset failures are worded by the one Hub translator, which scrubs tokens.

    ``datasets`` quotes the Hub's answer in its errors, and a server or proxy may echo the token
    there (seen with the test Hub's ``echo_token`` fault when ``datasets`` asks the API with an
    empty cache; with a warm cache it takes another path, so the echo is played here directly)."""
    import datasets

    def echoing(repo_id, **kwargs):  # datasets wraps the Hub's answer in its own exception types
        raise FileNotFoundError(f"403 Forbidden: injected fault 403 (token {hf_token}) for {repo_id}")

    monkeypatch.setattr(datasets, "load_dataset_builder", echoing)
    with pytest.raises(DatasetError) as refused:
        load_split(f"{BENCH}@main", "test", cache_dir=tmp_path)
    message = str(refused.value)
    assert message.startswith(f"cannot load Hub dataset '{BENCH}@main'") and "(token ***)" in message
    assert hf_token not in message


# --- the CLI by id, then offline ------------------------------------------------------------------


@pytest.mark.slow
def test_make_pool_train_evaluate_by_id_then_offline(pushed, hub_server, cli_env, tmp_path: Path) -> None:
    dataset = f"{BENCH}@v1"
    _ok(_cli("make-pool", "--dataset", dataset, "--domains", "*", "--teachers", "2", "--epochs", "1",
             "--preset", "smoke", "--out", str(tmp_path / "pool"), "--no-progress", env=cli_env))
    pool = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert pool["dataset"] == dataset and pool["dataset_revision"] == pushed["v1"] and pool["class_split"] == "dataset"
    teacher_classes = {n for m in pool["members"] for n in m["label_names"]}
    assert teacher_classes <= set(CLASSES["train"])  # teachers see meta-train classes only

    _ok(_cli("train", "--preset", "smoke", "--dataset", dataset, "--pool", str(tmp_path / "pool" / "repo-list.txt"),
             "--out", str(tmp_path / "run"), env=cli_env))
    record = json.loads((tmp_path / "run" / "tgr_config.json").read_text())
    assert record["data"]["dataset"] == dataset
    assert record["data_source"] == {"dataset": dataset, "revision": pushed["v1"], "class_split": "dataset"}
    assert set(record["metrics"]["test"]) == {"1shot", "5shot"}

    done = _ok(_cli("evaluate", str(tmp_path / "run"), "--preset", "smoke", "--dataset", dataset, "--episodes", "4",
                    "--no-progress", "--json", str(tmp_path / "online.json"), env=cli_env))
    online = json.loads((tmp_path / "online.json").read_text())
    assert online["dataset_revision"] == pushed["v1"] and pushed["v1"][:12] in done.stdout

    # offline, from the datasets cache alone: a fresh converted-image cache forces a real read
    before = len(hub_server.requests)
    offline_env = {**cli_env, "HF_HUB_OFFLINE": "1", "TGR_HUB_CACHE": str(tmp_path / "fresh-tgr-cache")}
    _ok(_cli("evaluate", str(tmp_path / "run"), "--preset", "smoke", "--dataset", dataset, "--episodes", "4",
             "--no-progress", "--json", str(tmp_path / "offline.json"), env=offline_env))
    offline = json.loads((tmp_path / "offline.json").read_text())
    assert offline["dataset_revision"] == pushed["v1"]
    assert offline["results"] == online["results"]  # same images, same episodes, same model
    # a commit the cache does not hold is refused offline, not silently replaced by the cached one
    refused = _cli("evaluate", str(tmp_path / "run"), "--preset", "smoke", "--dataset", f"{BENCH}@{pushed['main']}",
                   "--episodes", "4", "--no-progress", env=offline_env)
    assert refused.returncode != 0 and "not in the cache" in refused.stderr
    assert len(hub_server.requests) == before  # nothing reached the Hub while offline


@pytest.mark.slow
def test_recipe_make_pool_and_smoke_train_at_84px(pushed, cli_env, tmp_path: Path) -> None:
    dataset = f"{MINI}@main"
    common = ("--recipe", "mini-imagenet", "--dataset", dataset)
    _ok(_cli("make-pool", *common, "--teachers", "2", "--epochs", "1", "--out", str(tmp_path / "pool"),
             "--no-progress", env=cli_env))
    pool = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert pool["image_size"] == 84 and pool["archs"] == ["conv4"] and pool["domains"] == ["mini-tiny"]
    teacher = json.loads((tmp_path / "pool" / "t00" / "config.json").read_text())
    assert teacher["pretrained_cfg"]["input_size"] == [3, 84, 84]

    _ok(_cli("train", *common, "--preset", "smoke", "--pool", str(tmp_path / "pool" / "repo-list.txt"),
             "--out", str(tmp_path / "run"), env=cli_env))
    record = json.loads((tmp_path / "run" / "tgr_config.json").read_text())
    assert record["recipe"] == "mini-imagenet" and record["preset"] == "smoke"
    assert record["data"]["image_size"] == 84 and record["data"]["dataset"] == dataset
    assert record["data_source"]["revision"] == hub_revision(MINI)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 84, 84]


def hub_revision(repo_id: str) -> str:
    from huggingface_hub import HfApi

    return HfApi().dataset_info(repo_id).sha


# --- class splits ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_class_split_file_is_respected(pushed, tmp_path: Path, caplog) -> None:
    names = [f"{i:03d}.bird_{i}" for i in range(1, 10)]
    split_file = tmp_path / "split.json"
    chosen = {"train": names[4:], "validation": [names[0], names[2]], "test": [1, 3]}  # names and ClassLabel ids
    split_file.write_text(json.dumps(chosen))
    with caplog.at_level(logging.INFO, logger="tgr_hub.data.sources"):
        parts = {s: load_split(SINGLE, s, image_size=16, cache_dir=tmp_path, class_split=str(split_file))
                 for s in ("train", "val", "test")}
    assert f"the class split file:{split_file}" in caplog.text
    assert parts["train"].class_names == names[4:]
    assert parts["val"].class_names == [names[0], names[2]]
    assert parts["test"].class_names == [names[1], names[3]]
    assert all(p.class_split == f"file:{split_file}" and p.class_counts().tolist() == [3] * p.num_classes
               for p in parts.values())

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tgr_hub.data.sources"):  # without a file: the seeded fallback
        seeded = load_split(SINGLE, "test", image_size=16, cache_dir=tmp_path, seed=5)
    assert "seeded 60/20/20 class split (seed 5)" in caplog.text and seeded.class_split == "seeded-60/20/20:5"
    from tgr_hub.data import split_classes

    assert seeded.class_names == [names[i] for i in split_classes(9, seed=5)["test"]]

    split_file.write_text(json.dumps({**chosen, "test": ["no-such-bird"]}))
    with pytest.raises(DatasetError, match="test class 'no-such-bird' is not in the dataset"):
        load_split(SINGLE, "test", image_size=16, cache_dir=tmp_path, class_split=str(split_file))
    split_file.write_text(json.dumps({**chosen, "test": [names[0]]}))
    with pytest.raises(DatasetError, match="is in both val and test"):
        load_split(SINGLE, "test", image_size=16, cache_dir=tmp_path, class_split=str(split_file))
    split_file.write_text(json.dumps({"train": names}))
    with pytest.raises(DatasetError, match="lacks the val, test split"):
        read_class_split(str(split_file))


@pytest.mark.slow
def test_class_split_flag_reaches_evaluate(pushed, cli_env, tmp_path: Path) -> None:
    names = [f"{i:03d}.bird_{i}" for i in range(1, 10)]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": names[:3], "validation": names[3:5], "test": names[5:]}))
    _ok(_cli("evaluate", "--baseline", "random", "--dataset", SINGLE, "--class-split", str(split_file),
             "--way", "2", "--shot", "1", "--query", "2", "--episodes", "2", "--image-size", "16", "--no-progress",
             "--json", str(tmp_path / "out.json"), env=cli_env))
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["class_split"] == f"file:{split_file}" and out["dataset_revision"] == hub_revision(SINGLE)


def test_builtin_cub_split_is_the_usual_100_50_50() -> None:
    names = [f"{i:03d}.species_{i}" for i in range(1, 201)]
    rule = read_class_split("cub-200")
    assignment = rule.assign(names, list(range(200)))
    assert [len(assignment[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    # Chen et al. 2019: class number n (1-based): train if n is odd, val if n % 4 == 2, test if n % 4 == 0
    assert all((n % 2 == 1) == (n - 1 in assignment["train"]) for n in range(1, 201))
    assert assignment["val"][:3] == [1, 5, 9] and assignment["test"][:3] == [3, 7, 11]
    shuffled = list(np.random.default_rng(0).permutation(names))  # labels in another order: the numbers decide
    again = rule.assign(shuffled, list(range(200)))
    for split in ("train", "val", "test"):
        assert sorted(shuffled[c] for c in again[split]) == sorted(names[c] for c in assignment[split])
    with pytest.raises(DatasetError, match="needs the 200 CUB-200-2011 classes"):
        rule.assign(names[:10], list(range(10)))
    with pytest.raises(DatasetError, match="neither a built-in split nor a file"):
        read_class_split("cub-201")


# --- recipes ------------------------------------------------------------------------------------


def test_recipes_set_the_paper_benchmarks() -> None:
    from tgr_hub.config import load_config
    from tgr_hub.recipes import RECIPES

    assert set(RECIPES) == {"cifar-fs", "mini-imagenet", "cub"}
    sizes = {"cifar-fs": 32, "mini-imagenet": 84, "cub": 84}
    for name, recipe in RECIPES.items():
        cfg = load_config(recipe=name)
        assert cfg.recipe == name and cfg.preset == "paper" and cfg.data.image_size == sizes[name]
        assert cfg.data.dataset == recipe.dataset and cfg.pool.teachers == 100 and cfg.pool.way == 5
        assert cfg.train.arch == "conv4" and cfg.pool.domains == ["*"]
    assert load_config(recipe="cub").data.class_split == "cub-200"
    assert load_config(recipe="cifar-fs").data.class_split is None  # the dataset's own splits
    # flags and --set override a recipe; a preset chosen explicitly is kept
    cfg = load_config(preset="smoke", recipe="cifar-fs", values={"data": {"dataset": BENCH}},
                      overrides=["pool.teachers=3"])
    assert (cfg.preset, cfg.data.dataset, cfg.pool.teachers, cfg.data.image_size) == ("smoke", BENCH, 3, 32)
    with pytest.raises(ConfigError, match="unknown recipe 'omniglot'"):
        load_config(recipe="omniglot")
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    for recipe in RECIPES.values():  # the user guide's recipe table names every recipe and dataset id
        assert f"--recipe {recipe.name}" in guide and recipe.dataset in guide


# --- memory -------------------------------------------------------------------------------------


def test_decoding_fills_one_uint8_buffer(tmp_path: Path, monkeypatch) -> None:
    """84 px images are decoded into one uint8 array: no float32 copy, no list of arrays then stacked."""
    import datasets

    count, size = 600, 84
    names = [f"c{i}" for i in range(10)]
    rows = {"image": [_class_image(i % 10, i, (90, 96)) for i in range(count)], "label": [i % 10 for i in range(count)]}
    folder = tmp_path / "big"
    datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})).save_to_disk(str(folder))
    written = []
    # measured: decoding only (writing the cache serialises one more copy, inside safetensors)
    monkeypatch.setattr(sources, "_write_cache", lambda path, split: written.append(path))
    tracemalloc.start()
    try:
        part = load_split(str(folder), "train", image_size=size, cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    uint8_bytes = part.images.numel()
    assert written and part.images.dtype == torch.uint8 and part.images.shape == (360, 3, size, size)
    # the buffer plus one batch of encoded (incompressible: ~raw-sized) images; float32 would be 4x the
    # buffer, a list of arrays then stacked 2x
    batch = sources.DECODE_BATCH * 90 * 96 * 3
    assert peak < uint8_bytes + 1.5 * batch + 2**20, (peak, uint8_bytes, batch)


def test_channel_stats_match_a_float64_reference() -> None:
    images = torch.randint(0, 256, (37, 3, 9, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=5)
    reference = images.to(torch.float64) / 255
    torch.testing.assert_close(mean, reference.mean(dim=(0, 2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(std, reference.std(dim=(0, 2, 3)), rtol=0, atol=1e-10)
    with pytest.raises(DatasetError, match="uint8"):
        channel_stats(reference)


def test_conv4_takes_84px_images_as_in_the_literature() -> None:
    import timm

    import tgr_hub  # noqa: F401  (registers conv4)

    backbone = timm.create_model("conv4", num_classes=0, img_size=84).eval()
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, 84, 84))
        feature_map = backbone.forward_features(torch.rand(2, 3, 84, 84))
    assert feature_map.shape == (2, 32, 5, 5)  # 84 -> 42 -> 21 -> 10 -> 5
    assert features.shape == (2, backbone.num_features) and backbone.num_features == 32 * 5 * 5
    with pytest.raises(ValueError, match="needs img_size >= 16"):
        timm.create_model("conv4", num_classes=0, img_size=12)
