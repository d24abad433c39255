"""The one parser of repository references, and the typed errors that replaced asserts on user input."""

from __future__ import annotations

import pytest
import torch

from tgr_hub.errors import ConfigError, DatasetError, GroupingError, RepoIdError
from tgr_hub.repo_id import RepoRef, is_local_ref, is_repo_id, parse_repo_ref


@pytest.mark.parametrize(("text", "expected"), [
    ("org/name", RepoRef("org/name")),
    ("  org/name@v1.0  ", RepoRef("org/name", "v1.0")),
    ("hf-hub:timm/resnet18.a1_in1k", RepoRef("timm/resnet18.a1_in1k")),
    ("hf-hub:timm/resnet18.a1_in1k@" + "a" * 40, RepoRef("timm/resnet18.a1_in1k", "a" * 40)),
    ("a/b@refs/pr/1", RepoRef("a/b", "refs/pr/1")),
    ("A1/x_y-z.w", RepoRef("A1/x_y-z.w")),
])
def test_references_parse(text: str, expected: RepoRef) -> None:
    assert parse_repo_ref(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("name", "not an org/name"),
    ("org/na me", "spaces"),
    ("org/name@", "must be followed by a revision"),
    ("org/name@a@b", "more than one '@'"),
    ("org/na--me", "not a Hub repo id"),
    ("org/..", "not a Hub repo id"),
    ("-org/name", "not a Hub repo id"),
    ("org/name@-x", "invalid revision"),
    ("a/b/c", "not a Hub repo id"),
])
def test_bad_references_say_why(text: str, why: str) -> None:
    with pytest.raises(RepoIdError, match=why):
        parse_repo_ref(text)


def test_datasets_may_omit_the_namespace() -> None:
    assert parse_repo_ref("mnist@main", namespace=False) == RepoRef("mnist", "main")
    assert parse_repo_ref("org/ds", namespace=False) == RepoRef("org/ds")
    assert is_repo_id("mnist", namespace=False) and not is_repo_id("mnist")


@pytest.mark.parametrize("text", ["./t03", "../x", "/abs/p", "~/x", "local-dir:rel", ".", ".."])
def test_local_references_are_known_by_their_form(text: str) -> None:
    assert is_local_ref(text)


def test_hub_references_are_not_local() -> None:
    assert not is_local_ref("org/name") and not is_local_ref("hf-hub:org/name")


def test_ref_label_and_name() -> None:
    assert RepoRef("org/name", "v1").label == "org/name@v1" and RepoRef("org/name").label == "org/name"
    assert RepoRef("org/name").name == "name"


# --- typed errors instead of asserts on user input ------------------------------------------


def test_split_fractions_that_leave_no_train_class_are_a_dataset_error() -> None:
    from tgr_hub.data.episodes import split_classes

    with pytest.raises(DatasetError, match="too few"):
        split_classes(3, seed=0, fractions=(0.0, 0.5, 0.5))  # 2 val + 2 test of 3 classes
    with pytest.raises(DatasetError, match="invalid"):
        split_classes(10, seed=0, fractions=(0.0, 0.7, 0.6))


def test_groups_that_miss_a_teacher_are_a_grouping_error() -> None:
    from tgr_hub.group import groups_to_labels

    assert groups_to_labels([[0, 2], [1]], 3).tolist() == [0, 1, 0]
    with pytest.raises(GroupingError, match=r"do not cover the teachers \[2\]"):
        groups_to_labels([[0], [1]], 3)


def test_save_timm_folder_checks_its_arguments(tmp_path) -> None:
    from tgr_hub.models.hub_layout import save_timm_folder

    model = torch.nn.Linear(2, 3)
    model.num_classes = 3
    cfg = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(ConfigError, match="num_classes 4"):
        save_timm_folder(model, tmp_path, architecture="x", num_classes=4, label_names=None, pretrained_cfg=cfg)
    with pytest.raises(ConfigError, match="needs mean, std"):
        save_timm_folder(model, tmp_path, architecture="x", num_classes=3, label_names=None,
                         pretrained_cfg={"input_size": (3, 8, 8)})
    with pytest.raises(ConfigError, match="2 label names for 3 classes"):
        save_timm_folder(model, tmp_path, architecture="x", num_classes=3, label_names=["a", "b"], pretrained_cfg=cfg)
    with pytest.raises(ConfigError, match="clash"):
        save_timm_folder(model, tmp_path, architecture="x", num_classes=3, label_names=None, pretrained_cfg=cfg,
                         extra={"num_classes": 1})
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_a_server_reply_without_a_commit_sha_is_a_hub_error() -> None:
    from types import SimpleNamespace

    from tgr_hub.errors import HubError
    from tgr_hub.hub.resolve import _model_info

    class Reply:  # what a mirror that omits the commit would answer (the request itself is not the test)
        def __init__(self, sha):
            self.sha = sha

        def model_info(self, repo_id, **kwargs):
            return SimpleNamespace(sha=self.sha, siblings=[SimpleNamespace(rfilename="config.json")])

    assert _model_info(Reply("a" * 40), "org/x", None, None) == ("a" * 40, ["config.json"])
    for bad in (None, "main", "A" * 40):
        with pytest.raises(HubError, match="gave no commit sha for org/x@v1"):
            _model_info(Reply(bad), "org/x", "v1", None)
