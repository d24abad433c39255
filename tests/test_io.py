"""tgr_hub.io: atomic writes whose files follow the umask like any other file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tgr_hub.io import atomic_path, copy_atomic, save_safetensors_atomic, write_json_atomic, write_text_atomic
from tgr_hub.metamodel import create_meta_model, save_meta_model


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_meta_model_files_follow_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    model = create_meta_model("conv4", image_size=32, seed=0)
    folder = tmp_path / "meta"
    with umask(mask):
        save_meta_model(model, folder, tgr_config={"seed": 0, "metrics": {}})
    for name in ("config.json", "model.safetensors", "tgr_config.json"):
        assert _mode(folder / name) == expected, (name, oct(_mode(folder / name)))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tgr_config.json"]


def test_writes_round_trip_and_leave_no_temporary_file(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a" / "b.txt", "héllo\n")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    write_json_atomic(tmp_path / "c.json", {"x": [1, 2]})
    assert (tmp_path / "c.json").read_text() == json.dumps({"x": [1, 2]}, indent=2) + "\n"
    tensors = {"w": torch.arange(6.0).view(2, 3).t()}  # not contiguous: saved all the same
    save_safetensors_atomic(tmp_path / "t.safetensors", tensors, metadata={"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["w"], tensors["w"])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.txt", "c.json", "t.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_copy_atomic_copies_files_and_folders_and_leaves_nothing_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "src"
    (source / "inner").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "inner" / "b.bin").write_bytes(b"\x00\x01")
    copy_atomic(source, tmp_path / "copy")
    assert (tmp_path / "copy" / "a.txt").read_text() == "a"
    assert (tmp_path / "copy" / "inner" / "b.bin").read_bytes() == b"\x00\x01"
    copy_atomic(source / "a.txt", tmp_path / "one.txt")
    assert (tmp_path / "one.txt").read_text() == "a"

    # a copy killed after its files are written, before the rename, leaves no target and no temporary
    import shutil

    real_copytree = shutil.copytree

    def killed_after_copying(src, dst, *args, **kwargs):
        real_copytree(src, dst, *args, **kwargs)
        if Path(src) == source:  # the top-level call (copytree recurses through its own name)
            raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copytree", killed_after_copying)
    with pytest.raises(KeyboardInterrupt):
        copy_atomic(source, tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "one.txt", "src"]
