"""Class-disjoint splits, ImageSplit and the N-way K-shot EpisodeSampler, on hand-made data.

Each synthetic image encodes its own identity: channel 0 holds its class, channel 1 its
index within the class, so every episode can be checked image by image.
"""

from __future__ import annotations

import pytest
import torch

from tgr_hub.data import Episode, EpisodeSampler, ImageSplit, normalize_split, split_classes
from tgr_hub.errors import DatasetError, EpisodeError


def make_split(counts: list[int], size: int = 4) -> ImageSplit:
    """Class c has counts[c] images; pixel (0, 0) of channel 0 is c, of channel 1 the index in the class."""
    images, labels = [], []
    for c, n in enumerate(counts):
        for i in range(n):
            image = torch.zeros(3, size, size, dtype=torch.uint8)
            image[0].fill_(c)
            image[1].fill_(i)
            image[2].fill_(200)
            images.append(image)
            labels.append(c)
    # interleave the classes so indices_of is not trivially a range
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return ImageSplit(
        images=torch.stack(images)[order],
        labels=torch.tensor(labels, dtype=torch.int64)[order],
        class_names=[f"toy/c{c}" for c in range(len(counts))],
        class_domains=["toy"] * len(counts),
    )


# --- split_classes ---------------------------------------------------------------------


@pytest.mark.parametrize("n, sizes", [(10, (6, 2, 2)), (7, (5, 1, 1)), (3, (1, 1, 1)), (51, (31, 10, 10)),
                                      (56, (34, 11, 11)), (334, (200, 67, 67)), (2, (2, 0, 0)), (0, (0, 0, 0))])
def test_split_classes_sizes_are_60_20_20_by_hand(n: int, sizes: tuple[int, int, int]) -> None:
    parts = split_classes(n, seed=0)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == sizes
    everything = parts["train"] + parts["val"] + parts["test"]
    assert sorted(everything) == list(range(n))  # disjoint and covering
    assert all(parts[k] == sorted(parts[k]) for k in parts)


def test_split_classes_is_seeded() -> None:
    assert split_classes(40, seed=3) == split_classes(40, seed=3)
    assert split_classes(40, seed=3) != split_classes(40, seed=4)


def test_split_classes_is_the_seeded_permutation() -> None:
    import numpy as np

    order = np.random.default_rng(5).permutation(10)  # hand computation of the documented rule
    parts = split_classes(10, seed=5)
    assert parts["train"] == sorted(order[:6].tolist())
    assert parts["val"] == sorted(order[6:8].tolist())
    assert parts["test"] == sorted(order[8:].tolist())


def test_normalize_split() -> None:
    assert [normalize_split(s) for s in ("train", "val", "validation", "VAL", "test", "meta-test")] == \
        ["train", "val", "val", "val", "test", "test"]
    with pytest.raises(DatasetError, match="unknown split"):
        normalize_split("dev")


# --- ImageSplit ------------------------------------------------------------------------


def test_image_split_basics() -> None:
    split = make_split([3, 5, 2, 4])
    assert split.num_classes == 4 and split.image_size == 4 and len(split) == 14
    assert split.class_counts().tolist() == [3, 5, 2, 4]
    for c in range(4):
        idx = split.indices_of(c)
        assert idx.tolist() == torch.nonzero(split.labels == c).flatten().tolist()
        assert (split.images[idx, 0, 0, 0] == c).all()
    with pytest.raises(IndexError):
        split.indices_of(4)


def test_float_images_is_uint8_over_255() -> None:
    split = make_split([2, 2])
    idx = torch.tensor([3, 0])
    out = split.float_images(idx)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    assert torch.equal(out, split.images[idx].float() / 255.0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_select_classes_relabels_in_the_given_order() -> None:
    split = make_split([3, 5, 2, 4])
    sub = split.select_classes([3, 1])
    assert sub.class_names == ["toy/c3", "toy/c1"] and sub.class_domains == ["toy", "toy"]
    assert sub.class_counts().tolist() == [4, 5]
    # new label 0 holds the images of old class 3, new label 1 those of old class 1
    assert (sub.images[sub.labels == 0, 0, 0, 0] == 3).all()
    assert (sub.images[sub.labels == 1, 0, 0, 0] == 1).all()
    with pytest.raises(DatasetError):
        split.select_classes([1, 1])
    with pytest.raises(DatasetError):
        split.select_classes([7])


def test_a_malformed_image_split_is_a_dataset_error() -> None:
    images, labels = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    ImageSplit(images, labels, ["a", "b"], ["toy", "toy"])  # well formed
    with pytest.raises(DatasetError, match=r"\[N, 3, H, W\] uint8"):
        ImageSplit(images.float(), labels, ["a", "b"], ["toy", "toy"])
    with pytest.raises(DatasetError, match="labels must be"):
        ImageSplit(images, labels[:3], ["a", "b"], ["toy", "toy"])
    with pytest.raises(DatasetError, match="class domains"):
        ImageSplit(images, labels, ["a", "b"], ["toy"])
    with pytest.raises(DatasetError, match=r"0\.\.1, got 0\.\.2"):
        ImageSplit(images, torch.tensor([0, 1, 2, 1]), ["a", "b"], ["toy", "toy"])


# --- EpisodeSampler --------------------------------------------------------------------


def check_episode(split: ImageSplit, episode: Episode, way: int, shot: int, query: int) -> None:
    """Exact counts, labels, distinct classes, no support/query overlap, images of the right class."""
    assert episode.support_x.shape == (way * shot, 3, 4, 4) and episode.support_x.dtype == torch.float32
    assert episode.query_x.shape == (way * query, 3, 4, 4)
    assert episode.support_y.tolist() == [c for c in range(way) for _ in range(shot)]
    assert episode.query_y.tolist() == [c for c in range(way) for _ in range(query)]
    assert len(episode.classes) == way == len(set(episode.classes))
    support, query_idx = episode.support_idx.tolist(), episode.query_idx.tolist()
    assert len(set(support)) == len(support) and len(set(query_idx)) == len(query_idx)
    assert not set(support) & set(query_idx)
    # every image belongs to the split class its episode label names
    for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
        true_class = (x[:, 0, 0, 0] * 255).round().long()
        assert true_class.tolist() == [episode.classes[int(label)] for label in y]
    assert torch.equal(episode.support_x, split.float_images(episode.support_idx))
    assert torch.equal(episode.query_x, split.float_images(episode.query_idx))


def test_episodes_have_exact_shape_and_no_overlap() -> None:
    split = make_split([20] * 8)
    sampler = EpisodeSampler(split, way=5, shot=3, query=4, seed=0)
    for index in range(30):
        check_episode(split, sampler.episode(index), 5, 3, 4)


def test_one_shot_and_whole_classes() -> None:
    split = make_split([6] * 5)
    episode = EpisodeSampler(split, way=5, shot=1, query=5, seed=2).episode(0)
    check_episode(split, episode, 5, 1, 5)
    # shot + query == class size: each class is used whole
    assert sorted(episode.support_idx.tolist() + episode.query_idx.tolist()) == list(range(30))


def test_episodes_are_a_function_of_seed_and_index() -> None:
    split = make_split([10] * 12)
    a = EpisodeSampler(split, way=5, shot=2, query=3, seed=7)
    b = EpisodeSampler(split, way=5, shot=2, query=3, seed=7)
    forward = [a.episode(i) for i in range(6)]
    backward = [b.episode(i) for i in reversed(range(6))][::-1]  # other call order, fresh sampler
    for x, y in zip(forward, backward):
        assert x.classes == y.classes
        assert torch.equal(x.support_idx, y.support_idx) and torch.equal(x.query_idx, y.query_idx)
        assert torch.equal(x.support_x, y.support_x)
    assert torch.equal(a.episode(3).query_idx, forward[3].query_idx)  # repeatable
    other_seed = EpisodeSampler(split, way=5, shot=2, query=3, seed=8)
    assert any(other_seed.episode(i).support_idx.tolist() != forward[i].support_idx.tolist() for i in range(6))
    assert len({tuple(e.support_idx.tolist()) for e in forward}) == 6  # episodes differ from each other
    assert [other_seed.episode(i).classes for i in range(6)] != [e.classes for e in forward]  # the classes too


def test_iteration_is_episode_zero_one_two() -> None:
    split = make_split([5] * 6)
    sampler = EpisodeSampler(split, way=3, shot=1, query=2, seed=1)
    stream = iter(sampler)
    for index in range(3):
        assert torch.equal(next(stream).support_idx, sampler.episode(index).support_idx)


def test_every_class_gets_drawn() -> None:
    split = make_split([4] * 10)
    sampler = EpisodeSampler(split, way=5, shot=1, query=1, seed=0)
    seen = {c for i in range(40) for c in sampler.episode(i).classes}
    assert seen == set(range(10))


def test_too_few_classes_raises() -> None:
    with pytest.raises(EpisodeError, match="5-way episode needs 5 classes but the split has only 4"):
        EpisodeSampler(make_split([10] * 4), way=5, shot=1, query=1)


def test_too_few_images_raises() -> None:
    with pytest.raises(EpisodeError, match="needs 20 images in each of 5 classes"):
        EpisodeSampler(make_split([19] * 6), way=5, shot=5, query=15)


def test_small_classes_are_skipped_when_enough_remain() -> None:
    split = make_split([2, 10, 10, 1, 10])
    sampler = EpisodeSampler(split, way=3, shot=2, query=2, seed=0)
    assert sampler.eligible == [1, 2, 4]
    for index in range(10):
        episode = sampler.episode(index)
        assert sorted(episode.classes) == [1, 2, 4]
        check_episode(split, episode, 3, 2, 2)
    with pytest.raises(EpisodeError, match="only 3 of 5 classes"):
        EpisodeSampler(split, way=4, shot=2, query=2)


@pytest.mark.parametrize("kwargs", [dict(way=0, shot=1, query=1), dict(way=2, shot=0, query=1),
                                    dict(way=2, shot=1, query=-1), dict(way=2, shot=1, query=1, seed=-1)])
def test_invalid_episode_shapes_raise(kwargs: dict) -> None:
    with pytest.raises(EpisodeError):
        EpisodeSampler(make_split([5] * 3), **kwargs)


def test_negative_index_raises() -> None:
    with pytest.raises(EpisodeError):
        EpisodeSampler(make_split([5] * 3), way=2, shot=1, query=1).episode(-1)


def test_query_zero_gives_support_only_episodes() -> None:
    split = make_split([3] * 4)
    episode = EpisodeSampler(split, way=4, shot=3, query=0, seed=0).episode(0)
    assert episode.query_x.shape == (0, 3, 4, 4) and episode.support_x.shape == (12, 3, 4, 4)
