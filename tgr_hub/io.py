"""Atomic file writes: text, JSON, safetensors, copies and anything written through a path.

Every file tgr-hub writes into a run folder, a pool folder or a cache goes through here. A
file is written under a temporary name in its own folder (``.NAME.<random>.tmp``) and renamed
over the target, so a reader sees the old file or the whole new one, never a half-written
one, and a killed writer leaves at most a ``*.tmp`` file that no reader picks up.

The temporary file is created like any other file (``open`` with mode 0666 less the umask),
not with :func:`tempfile.mkstemp`, whose 0600 would make a run folder on shared storage
unreadable for everyone else: with the usual umask 022 the files are 0644, with 077 they
are 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_path",
    "copy_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "save_safetensors_atomic",
]

#: Every temporary name ends with this; listings (figures, Space files) skip such names.
TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | Path, *, mkdir: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block ends without error.

    The caller writes the file (or a whole folder) at the yielded path with any writer
    (``save_file``, ``savefig``, ``Image.save``, ``shutil.copytree``...). A writer that infers the
    format from the name must be told the format: the temporary name ends in ``.tmp``. On an
    error the temporary file or folder is removed. A folder replaces only a missing or empty one.

    Args:
        path: the final file.
        mkdir: create the parent folder first.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def copy_atomic(source: str | Path, target: str | Path) -> None:
    """Copy a file or a whole folder to ``target`` atomically (a reader never sees half a copy).

    Files keep their permissions and times (``shutil.copy2``); ``target`` must not exist yet.
    """
    source, target = Path(source), Path(target)
    with atomic_path(target) as tmp:
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (permissions: 0666 less the umask)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (permissions: 0666 less the umask)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2, **dumps: Any) -> None:
    """Write ``data`` as JSON (``indent=2``, a final newline) to ``path`` atomically.

    Args:
        path: the file.
        data: anything :func:`json.dumps` takes.
        indent: JSON indentation.
        **dumps: further :func:`json.dumps` options (``default=str``, ``ensure_ascii=False``...).
    """
    write_text_atomic(path, json.dumps(data, indent=indent, **dumps) + "\n")


def save_safetensors_atomic(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` (name -> tensor, any device) as a safetensors file, atomically.

    Tensors are detached, moved to the CPU and made contiguous first (safetensors needs that).
    The file is serialised in memory and written here: ``safetensors.torch.save_file`` creates
    its files with mode 0600 whatever the umask.
    """
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_bytes_atomic(path, save(flat, metadata=metadata))
