"""The pool resolver, local half: repo-list grammar, loading, and every bad-input error."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest
import safetensors.torch
import torch

import tgr_hub
import torch.nn.functional as F
from torch import nn

import tgr_hub  # noqa: F401
import timm
from tgr_hub.errors import (EmptyPoolError, NotAClassifierError, PickleRefusedError, PoolError, PoolSyntaxError,
                            TeacherNotFoundError, UnknownArchitectureError, WeightsMismatchError)
from tgr_hub.models import fast_layout, save_timm_folder
import tgr_hub.pool as pool_module
from tgr_hub.repo_id import RepoRef
from tgr_hub.pool import PoolListNotFoundError, load_pool, parse_pool_list, parse_pool_text

MEAN = (0.25, 0.5, 0.75)
STD = (0.5, 0.25, 0.125)


def make_teacher(folder: Path, arch: str = "conv4", labels=("latin/A", "latin/B", "latin/C"), seed: int = 0,
                 size: int = 32) -> nn.Module:
    """A randomly initialised teacher saved in timm's layout (the pool code does not care about training)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = {"img_size": size} if arch == "conv4" else {}
        model = timm.create_model(arch, num_classes=len(labels), **kwargs).eval()
    save_timm_folder(model, folder, architecture=arch, num_classes=len(labels), label_names=list(labels),
                     pretrained_cfg={"input_size": (3, size, size), "mean": MEAN, "std": STD})
    return model


def write_list(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- grammar ---------------------------------------------------------------------------


def test_parse_every_entry_form(tmp_path):
    (tmp_path / "lists").mkdir()
    listing = write_list(
        tmp_path / "lists" / "repo-list.txt",
        "# a pool",
        "",
        "timm/resnet18.a1_in1k",
        "me/teacher-3@v1.0   # pinned tag",
        "me/teacher-4@0123456789abcdef0123456789abcdef01234567",
        "hf-hub:org/name",
        "hf-hub:org/name@refs/pr/1",
        "./pool/t03",
        "../elsewhere/t04",
        "/abs/t05",
        "local-dir:/abs/t06",
        "local-dir:rel/t07",
        "   ./indented#not-a-comment  # but this is",
        "~/t08",
    )
    entries = parse_pool_list(listing)
    base = (tmp_path / "lists").resolve()
    got = [(e.kind, e.target, e.revision, e.line) for e in entries]
    assert got == [
        ("hub", "timm/resnet18.a1_in1k", None, 3),
        ("hub", "me/teacher-3", "v1.0", 4),
        ("hub", "me/teacher-4", "0123456789abcdef0123456789abcdef01234567", 5),
        ("hub", "org/name", None, 6),
        ("hub", "org/name", "refs/pr/1", 7),
        ("local", str(base / "pool" / "t03"), None, 8),
        ("local", str((base / ".." / "elsewhere" / "t04").resolve()), None, 9),
        ("local", "/abs/t05", None, 10),
        ("local", "/abs/t06", None, 11),
        ("local", str(base / "rel" / "t07"), None, 12),
        ("local", str(base / "indented#not-a-comment"), None, 13),
        ("local", str(Path("~/t08").expanduser().resolve()), None, 14),
    ]
    assert entries[1].source == "me/teacher-3@v1.0" and entries[10].source == "./indented#not-a-comment"
    assert all(e.list_path == str(listing) for e in entries)


def test_org_name_is_hub_even_if_a_local_folder_exists(tmp_path, caplog):
    (tmp_path / "org" / "name").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="tgr_hub.pool"):
        entries = parse_pool_list(write_list(tmp_path / "l.txt", "org/name", "./org/name"))
    assert [(e.kind, e.target) for e in entries] == [("hub", "org/name"), ("local", str((tmp_path / "org" / "name").resolve()))]
    assert "write ./org/name" in caplog.text


@pytest.mark.parametrize("line", [
    "resnet18",                 # no org
    "org/name extra",           # two tokens
    "org/name@v1@v2",           # two revisions
    "org/name@",                # empty revision
    "hf-hub:",                  # nothing after the prefix
    "local-dir:",               # nothing after the prefix
    "https://huggingface.co/org/name",
    "org//name",
    "org/na--me",
    "a/b/c",
])
def test_unknown_entry_syntax_names_file_and_line(tmp_path, line):
    listing = write_list(tmp_path / "repo-list.txt", "# header", "good/repo", line)
    with pytest.raises(PoolSyntaxError) as info:
        parse_pool_list(listing)
    assert str(info.value).startswith(f"{listing}:3: ")
    assert info.value.path == str(listing) and info.value.line == 3
    assert isinstance(info.value, ValueError)


def test_missing_list_file(tmp_path):
    with pytest.raises(PoolListNotFoundError, match="does not exist") as info:
        load_pool(tmp_path / "nope.txt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, PoolError)


def test_empty_pool(tmp_path):
    listing = write_list(tmp_path / "repo-list.txt", "# only comments", "", "   # and blanks")
    with pytest.raises(EmptyPoolError) as info:
        load_pool(listing)
    assert str(listing) in str(info.value) and "no teacher" in str(info.value)
    assert parse_pool_text("") == []


# --- loading ---------------------------------------------------------------------------


def test_load_local_members(tmp_path):
    models = [make_teacher(tmp_path / "pool" / "t00", "conv4", seed=0),
              make_teacher(tmp_path / "pool" / "t01", "resnet10t", labels=("greek/alpha", "greek/beta"), seed=1),
              make_teacher(tmp_path / "other" / "t00", "conv4", seed=2, size=48)]
    listing = write_list(tmp_path / "pool" / "repo-list.txt", "./t00", f"local-dir:{tmp_path / 'pool' / 't01'}",
                         "../other/t00  # same folder name")
    members = load_pool(listing)
    assert [m.name for m in members] == ["t00", "t01", "t00-2"]
    assert [m.source for m in members] == ["./t00", f"local-dir:{tmp_path / 'pool' / 't01'}", "../other/t00"]
    assert [m.architecture for m in members] == ["conv4", "resnet10t", "conv4"]
    assert members[1].label_names == ["greek/alpha", "greek/beta"] and members[1].num_classes == 2
    assert [m.input_size for m in members] == [(3, 32, 32), (3, 32, 32), (3, 48, 48)]
    assert members[0].folder == (tmp_path / "pool" / "t00").resolve() and members[0].revision is None
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for member, model in zip(members, models):
        assert member.mean == MEAN and member.std == STD
        assert not member.model.training
        assert not any(p.requires_grad for p in member.model.parameters())
        size = member.input_size[1:]
        resized = x if size == (32, 32) else F.interpolate(x, size=size, mode="bilinear", antialias=True)
        expected = (resized - mean) / std
        assert torch.equal(member.normalize(x), expected)
        with torch.no_grad():
            assert torch.equal(member.logits(x), model(fast_layout(expected)))  # the layout teachers run in
    # model inversion needs gradients with respect to the images
    images = x.clone().requires_grad_(True)
    members[0].logits(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_hub_entries_go_through_resolve_hub_entry(tmp_path, monkeypatch):
    snapshot = tmp_path / "cache" / "snap"
    model = make_teacher(snapshot, "conv4")
    calls = []

    def resolve_hub_entry(ref: RepoRef, *, allow_pickle: bool, where: tuple):
        calls.append((ref.repo_id, ref.revision, allow_pickle, where[1]))
        return snapshot, "a" * 40

    # the pool hands hub plain values (a RepoRef and where it was written); hub knows nothing of pools
    fake = types.ModuleType("tgr_hub.hub")
    fake.resolve_hub_entry = resolve_hub_entry
    monkeypatch.setattr(pool_module, "hub", fake)
    members = load_pool(write_list(tmp_path / "l.txt", "me/teacher@main"), allow_pickle=True)
    assert calls == [("me/teacher", "main", True, 1)]
    assert members[0].name == "teacher" and members[0].revision == "a" * 40 and members[0].source == "me/teacher@main"
    assert members[0].repo_id == "me/teacher"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(members[0].logits(x), model(members[0].normalize(x)))

    def missing(ref, *, allow_pickle, where):
        raise TeacherNotFoundError("repo me/teacher has no config.json")

    fake.resolve_hub_entry = missing
    listing = write_list(tmp_path / "l2.txt", "", "me/teacher")
    with pytest.raises(TeacherNotFoundError, match=rf"^{listing}:2: repo me/teacher has no config.json"):
        load_pool(listing)

    # several Hub entries: resolved together (concurrently) by resolve_many
    batches = []

    def resolve_many(refs, allow_pickle=False, *, progress=True, wheres=None):
        batches.append([(r.repo_id, r.revision) for r in refs])
        return [(snapshot, f"{i}" * 40) for i in range(len(refs))]

    fake.resolve_many = resolve_many
    listing = write_list(tmp_path / "l3.txt", "me/a", "./local  # not a Hub entry", "me/b@v2")
    make_teacher(tmp_path / "local")
    members = load_pool(listing)
    assert batches == [[("me/a", None), ("me/b", "v2")]]
    assert [(m.name, m.revision) for m in members] == [("a", "0" * 40), ("local", None), ("b", "1" * 40)]


# --- every bad entry: typed error naming FILE:LINE ---------------------------------------


def _expect(listing: Path, line: int, error: type, match: str) -> PoolError:
    with pytest.raises(error) as info:
        load_pool(listing)
    message = str(info.value)
    assert message.startswith(f"{listing}:{line}: "), message
    assert match in message, message
    assert info.value.line == line and info.value.path == str(listing)
    return info.value


def test_missing_folder(tmp_path):
    make_teacher(tmp_path / "t00")
    listing = write_list(tmp_path / "repo-list.txt", "./t00", "./t01")
    error = _expect(listing, 2, TeacherNotFoundError, f"teacher folder {(tmp_path / 't01').resolve()} does not exist")
    assert isinstance(error, FileNotFoundError)


def test_missing_config(tmp_path):
    make_teacher(tmp_path / "t00")
    (tmp_path / "t00" / "config.json").unlink()
    _expect(write_list(tmp_path / "repo-list.txt", "./t00"), 1, TeacherNotFoundError, "has no config.json")


def test_missing_weights(tmp_path):
    make_teacher(tmp_path / "t00")
    (tmp_path / "t00" / "model.safetensors").unlink()
    _expect(write_list(tmp_path / "repo-list.txt", "# c", "./t00"), 2, TeacherNotFoundError, "has no weights file")


def test_unknown_architecture(tmp_path):
    make_teacher(tmp_path / "t00")
    config = json.loads((tmp_path / "t00" / "config.json").read_text())
    config["architecture"] = "my_secret_net"
    (tmp_path / "t00" / "config.json").write_text(json.dumps(config))
    _expect(write_list(tmp_path / "repo-list.txt", "./t00"), 1, UnknownArchitectureError,
            "names architecture 'my_secret_net', which timm does not know")


def test_weights_that_do_not_match_the_config(tmp_path):
    make_teacher(tmp_path / "t00", labels=("a", "b", "c"))
    make_teacher(tmp_path / "t01")
    # t00: the config says 4 classes, the weights have 3
    config = json.loads((tmp_path / "t00" / "config.json").read_text())
    config["num_classes"], config["label_names"] = 4, ["a", "b", "c", "d"]
    (tmp_path / "t00" / "config.json").write_text(json.dumps(config))
    listing = write_list(tmp_path / "repo-list.txt", "./t00")
    error = _expect(listing, 1, WeightsMismatchError, "shape mismatch fc.bias (3,) vs (4,), fc.weight (3, 128) vs (4, 128)")
    assert "do not fit" in str(error)
    # t01: a tensor is missing and an unknown one is present
    state = safetensors.torch.load_file(str(tmp_path / "t01" / "model.safetensors"))
    state["extra.weight"] = state.pop("blocks.3.1.running_var")
    safetensors.torch.save_file(state, str(tmp_path / "t01" / "model.safetensors"))
    listing = write_list(tmp_path / "repo-list.txt", "", "./t01")
    error = _expect(listing, 2, WeightsMismatchError, "missing blocks.3.1.running_var")
    assert "unexpected extra.weight" in str(error)


def test_pickle_only_weights_refused_unless_opted_in(tmp_path):
    model = make_teacher(tmp_path / "t00")
    (tmp_path / "t00" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "t00" / "pytorch_model.bin")
    listing = write_list(tmp_path / "repo-list.txt", "./t00")
    error = _expect(listing, 1, PickleRefusedError, "has only pickled weights (pytorch_model.bin)")
    assert "allow-pickle" in str(error)
    members = load_pool(listing, allow_pickle=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(members[0].logits(x), model(members[0].normalize(x)))


def test_pickle_with_arbitrary_objects_is_not_unpickled(tmp_path):
    from conftest import PAYLOAD_RUNS, CodeRunningPickle

    model = make_teacher(tmp_path / "t00")
    (tmp_path / "t00" / "model.safetensors").unlink()
    torch.save({"state_dict": model.state_dict(), "hook": CodeRunningPickle("pool")}, tmp_path / "t00" / "model.pth")
    PAYLOAD_RUNS.clear()
    listing = write_list(tmp_path / "repo-list.txt", "./t00")
    with pytest.raises(PickleRefusedError):  # no opt-in: the file is not opened
        load_pool(listing)
    with pytest.raises(WeightsMismatchError, match="weights_only=True"):  # opt-in: weights_only refuses the object
        load_pool(listing, allow_pickle=True)
    assert PAYLOAD_RUNS == []
    # the control: a plain unpickling of that file does run the payload's code
    torch.load(tmp_path / "t00" / "model.pth", weights_only=False)
    assert PAYLOAD_RUNS == ["pool"]
    PAYLOAD_RUNS.clear()


def test_feature_extractor_is_not_a_teacher(tmp_path):
    model = timm.create_model("conv4", num_classes=0)
    save_timm_folder(model, tmp_path / "m", architecture="conv4", num_classes=0, label_names=None,
                     pretrained_cfg={"input_size": (3, 32, 32), "mean": MEAN, "std": STD})
    _expect(write_list(tmp_path / "repo-list.txt", "./m"), 1, NotAClassifierError, "not a classifier")
