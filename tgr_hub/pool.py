"""The teacher pool: parse a ``repo-list.txt`` and load its entries as :class:`PoolMember`.

Grammar of a repo-list file (one entry per line)::

    # comment                          whole-line comment; blank lines are ignored too
    org/name                           a Hub model repo (latest commit of the default branch)
    org/name@REVISION                  ... at a branch, tag or commit sha
    hf-hub:org/name[@REVISION]         the same, with timm's prefix
    ./pool/t03   ../x   /abs   ~/x     a local folder
    local-dir:/abs/path  local-dir:rel a local folder, with timm's prefix
    org/name@v1.0   # trailing comment  a ``#`` at the start of the line or after a space starts a comment

Relative local paths resolve against the folder that holds the list file, not the working
directory, so a pool folder can be moved as a whole.

Ambiguity rule: an entry is a *local folder* only when it starts with ``./``, ``../``, ``/``,
``~`` or ``local-dir:`` (or is ``.``/``..``); anything else of the form ``org/name`` is a Hub
repo id, even if a folder of that name happens to exist next to the list (a warning then
suggests writing ``./org/name``). This keeps a list's meaning independent of the disk it is
read on. Local entries take no ``@REVISION`` (an ``@`` is part of the path).

Loading (:func:`load_pool`) builds each teacher with timm from its ``config.json`` and loads
its safetensors weights strictly (see :func:`tgr_hub.models.hub_layout.create_from_folder`);
no code from a folder or repo is ever executed, and pickled weights are refused unless
``allow_pickle=True``. Hub entries are resolved to a local snapshot by
:func:`tgr_hub.hub.resolve_hub_entry`, which pins the commit sha. Every error is a typed
:class:`~tgr_hub.errors.PoolError` whose message starts with ``LIST_FILE:LINE:``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import hub
from .errors import (
    EmptyPoolError,
    NotAClassifierError,
    PoolError,
    PoolListNotFoundError,
    PoolSyntaxError,
    RepoIdError,
    TeacherNotFoundError,
)
from .labels import resolve_label_names
from .models import fast_layout
from .models.hub_layout import create_from_folder
from .repo_id import LOCAL_PREFIX, RepoRef, is_local_ref, parse_repo_ref

__all__ = [
    "PoolEntry",
    "PoolMember",
    "PoolListNotFoundError",
    "parse_pool_list",
    "parse_pool_text",
    "load_pool",
    "load_member",
    "member_from_folder",
    "pool_folders",
]

_logger = logging.getLogger(__name__)


@dataclass
class PoolEntry:
    """One entry of a repo-list file.

    Attributes:
        kind: ``"local"`` (a folder) or ``"hub"`` (a Hub model repo).
        target: for ``local``, the resolved absolute folder path; for ``hub``, the repo id ``org/name``.
        revision: the ``@REVISION`` of a Hub entry (branch, tag or commit), else None.
        line: 1-based line number in the list file.
        source: the entry as written in the list (without comment and surrounding spaces).
        list_path: the list file the entry comes from (for error messages), or None.
    """

    kind: Literal["local", "hub"]
    target: str
    revision: str | None
    line: int
    source: str
    list_path: str | None = None

    @property
    def where(self) -> str:
        """``LIST_FILE:LINE`` (or ``line N``) for messages."""
        return f"{self.list_path}:{self.line}" if self.list_path else f"line {self.line}"

    @property
    def ref(self) -> RepoRef:
        """The Hub repository of a ``hub`` entry (what :mod:`tgr_hub.hub` resolves)."""
        if self.kind != "hub":
            raise PoolError(
                f"{self.source} is a local folder, not a Hub repository", path=self.list_path, line=self.line
            )
        return RepoRef(self.target, self.revision)


def _strip_comment(text: str) -> str:
    # '#' starts a comment at the start of a line or after whitespace; Hub ids never contain '#'
    match = re.search(r"(^|\s)#", text)
    return (text[: match.start()] if match else text).strip()


def _parse_entry(text: str, line: int, base: Path, list_path: str | None) -> PoolEntry:
    def syntax(message: str) -> PoolSyntaxError:
        return PoolSyntaxError(
            f"{message}: {text!r}",
            path=list_path,
            line=line,
            hint="write org/name, org/name@REVISION, hf-hub:org/name, ./relative/folder, /abs/folder or local-dir:PATH",
        )

    if is_local_ref(text):
        raw = text[len(LOCAL_PREFIX) :] if text.startswith(LOCAL_PREFIX) else text
        raw = raw.strip()
        if not raw:
            raise syntax("local-dir: needs a folder path")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base / path
        return PoolEntry("local", str(path.resolve()), None, line, text, list_path)

    try:
        ref = parse_repo_ref(text)
    except RepoIdError as error:
        raise syntax(error.args[0]) from None
    if (base / ref.repo_id).is_dir():
        _logger.warning(
            "%s:%d: %r is read as a Hub repo id; a local folder of that name exists, write ./%s to use it",
            list_path,
            line,
            ref.repo_id,
            ref.repo_id,
        )
    return PoolEntry("hub", ref.repo_id, ref.revision, line, text, list_path)


def parse_pool_text(text: str, *, base: str | Path = ".", list_path: str | None = None) -> list[PoolEntry]:
    """Parse repo-list text (see the module docstring for the grammar).

    Args:
        text: the file's content.
        base: folder that relative local paths resolve against.
        list_path: file name used in error messages.

    Raises:
        PoolSyntaxError: a line matches no entry form (the message names ``list_path:line``).
    """
    base = Path(base).expanduser().resolve()
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        entry_text = _strip_comment(raw)
        if entry_text:
            entries.append(_parse_entry(entry_text, number, base, list_path))
    return entries


def parse_pool_list(path: str | Path) -> list[PoolEntry]:
    """Parse a repo-list file into entries; relative local paths resolve against its folder.

    Raises:
        PoolListNotFoundError: the file does not exist.
        PoolSyntaxError: a line matches no entry form (message names ``FILE:LINE``).
    """
    path = Path(path)
    if not path.is_file():
        raise PoolListNotFoundError(
            f"pool list {path} does not exist", hint="pass a repo-list.txt (tgr-hub make-pool writes one)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PoolSyntaxError(f"pool list {path} is not UTF-8 text") from None
    return parse_pool_text(text, base=path.parent, list_path=str(path))


@dataclass(eq=False)
class PoolMember:
    """A loaded teacher, ready to classify images in [0, 1].

    Attributes:
        name: short unique display name (folder or repo name, e.g. ``"t03"``).
        source: the entry as written in the list (or a path / repo id when loaded directly).
        model: eval mode, ``requires_grad`` False; ``model(normalized [B,C,H,W]) -> [B, num_classes]``.
        architecture: timm architecture name.
        label_names: ``num_classes`` class names: the config's, timm's ImageNet synsets for an
            ImageNet classifier without them, else ``NAME:INDEX`` (:func:`tgr_hub.labels.resolve_label_names`).
        input_size: ``(C, H, W)`` the model was trained at.
        mean, std: per-channel normalisation of the model's inputs.
        revision: commit sha for Hub entries.
        repo_id: ``org/name`` for Hub entries, None for local folders.
        folder: the local folder the weights were read from.
        config: the folder's ``config.json``.
        label_descriptions: readable descriptions of label names that have one, e.g. ImageNet's
            ``{"n01440764": "tench, Tinca tinca"}`` (see :mod:`tgr_hub.labels`).
    """

    name: str
    source: str
    model: nn.Module
    architecture: str
    label_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    revision: str | None = None
    repo_id: str | None = None
    folder: Path | None = None
    config: dict = field(default_factory=dict, repr=False)
    label_descriptions: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Prepare images for the model: resize (only if needed) and normalise.

        Args:
            images01: ``[B, C, H, W]`` float in [0, 1].

        Returns:
            ``[B, input_size[0], input_size[1], input_size[2]]``, ``(x - mean) / std``.
            Differentiable in ``images01`` (model inversion back-propagates through it).
        """
        if images01.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images01.shape)}")
        channels, height, width = self.input_size
        x = images01
        if x.shape[1] != channels:
            if channels == 1:
                x = x.mean(dim=1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1)
            else:
                raise ValueError(f"{self.name} expects {channels}-channel images, got {x.shape[1]} channels")
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return fast_layout((x - mean) / std)

    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> logits ``[B, num_classes]`` (gradients flow to the images)."""
        return self.model(self.normalize(images01))

    def to(self, device: torch.device | str) -> PoolMember:
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self


def _triple(value, default: float, count: int) -> tuple[float, ...]:
    if value is None:
        return (default,) * count
    if isinstance(value, (int, float)):
        return (float(value),) * count
    values = tuple(float(v) for v in value)
    return values * count if len(values) == 1 else values


def member_from_folder(
    folder: str | Path,
    *,
    name: str | None = None,
    source: str | None = None,
    revision: str | None = None,
    repo_id: str | None = None,
    allow_pickle: bool = False,
) -> PoolMember:
    """Load one teacher folder (timm Hub layout) as a :class:`PoolMember`.

    ``revision`` and ``repo_id`` say where a Hub teacher came from (None for a local folder).

    Raises:
        TeacherNotFoundError, NotAClassifierError, UnknownArchitectureError,
        WeightsMismatchError, PickleRefusedError (messages name the folder).
    """
    folder = Path(folder)
    model, config = create_from_folder(folder, allow_pickle=allow_pickle)
    if config["num_classes"] < 1:
        raise NotAClassifierError(f"{folder} holds a feature extractor (num_classes 0), not a classifier")
    cfg = config["pretrained_cfg"]
    timm_cfg = cast(Any, model).pretrained_cfg  # set by timm on the models it builds
    size = tuple(int(v) for v in (cfg.get("input_size") or timm_cfg.get("input_size") or (3, 224, 224)))
    channels = size[0]
    mean = _triple(cfg.get("mean", timm_cfg.get("mean")), 0.0, channels)
    std = _triple(cfg.get("std", timm_cfg.get("std")), 1.0, channels)
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise NotAClassifierError(
            f"{folder}/config.json: mean/std must have {channels} values (std > 0), got {mean}, {std}"
        )
    name = name or folder.name
    labels = resolve_label_names(config, name)  # its own names, timm's ImageNet synsets, or name:index
    model.requires_grad_(False)
    model.eval()
    return PoolMember(
        name=name,
        source=source if source is not None else str(folder),
        model=model,
        architecture=config["architecture"],
        label_names=labels.names,
        input_size=(size[0], size[1], size[2]),
        mean=mean,
        std=std,
        revision=revision,
        repo_id=repo_id,
        folder=folder,
        config=config,
        label_descriptions=labels.descriptions,
    )


def _located(error: PoolError, entry: PoolEntry) -> PoolError:
    """Re-raise ``error`` with the entry's ``FILE:LINE`` in front (if it does not have one yet)."""
    if error.line is not None:
        return error
    message = error.args[0] if error.args else str(error)
    try:
        located = type(error)(message, path=entry.list_path or "<pool>", line=entry.line, hint=error.hint)
    except TypeError:  # a subclass with another constructor: keep it, prefix the location
        return error
    return located


def load_member(
    entry: PoolEntry,
    *,
    allow_pickle: bool = False,
    name: str | None = None,
    resolved: tuple[Path, str] | None = None,
) -> PoolMember:
    """Resolve and load one entry (local folder, or Hub repo via :mod:`tgr_hub.hub`).

    Args:
        entry: the entry.
        allow_pickle: accept pickle-only weights.
        name: display name (default: folder or repo name).
        resolved: for a Hub entry, its ``(snapshot folder, commit sha)`` if already resolved.

    Raises:
        PoolError subclasses whose message starts with ``LIST_FILE:LINE:``.
    """
    try:
        if entry.kind == "local":
            folder = Path(entry.target)
            if not folder.is_dir():
                raise TeacherNotFoundError(
                    f"teacher folder {folder} does not exist" + (" (it is a file)" if folder.exists() else ""),
                    hint="relative paths resolve against the folder of the list file",
                )
            return member_from_folder(folder, name=name, source=entry.source, allow_pickle=allow_pickle)
        if resolved is None:
            resolved = hub.resolve_hub_entry(entry.ref, allow_pickle=allow_pickle, where=(entry.list_path, entry.line))
        folder, sha = resolved
        return member_from_folder(
            Path(folder),
            name=name or entry.ref.name,
            source=entry.source,
            revision=sha,
            repo_id=entry.target,
            allow_pickle=allow_pickle,
        )
    except PoolError as error:
        raise _located(error, entry) from None


def _resolve_hub_entries(entries: list[PoolEntry], allow_pickle: bool, progress: bool) -> dict[int, tuple[Path, str]]:
    """Resolve all Hub entries up front, concurrently (:func:`tgr_hub.hub.resolve_many`)."""
    hub_entries = [e for e in entries if e.kind == "hub"]
    if len(hub_entries) < 2:
        return {}  # load_member resolves a single entry itself
    try:
        results = hub.resolve_many(
            [e.ref for e in hub_entries],
            allow_pickle=allow_pickle,
            progress=progress,
            wheres=[(e.list_path, e.line) for e in hub_entries],
        )
    except PoolError as error:
        if error.line is None:  # name the first entry of that repo, at least
            culprit = next((e for e in hub_entries if e.target in str(error)), hub_entries[0])
            raise _located(error, culprit) from None
        raise
    return {id(e): (Path(folder), sha) for e, (folder, sha) in zip(hub_entries, results)}


def pool_folders(pool_dir: str | Path) -> list[Path]:
    """The local teacher folders of ``POOL/repo-list.txt``, in list order (empty if there is no list)."""
    listing = Path(pool_dir) / "repo-list.txt"
    if not listing.is_file():
        return []
    return [Path(e.target) for e in parse_pool_list(listing) if e.kind == "local"]


def load_pool(path: str | Path, *, allow_pickle: bool = False, progress: bool = False) -> list[PoolMember]:
    """Parse a repo-list file and load every entry as a :class:`PoolMember`.

    Args:
        path: the repo-list file.
        allow_pickle: accept pickle-only weights (read with ``torch.load(weights_only=True)``).
        progress: show a tqdm bar.

    Returns:
        The members, in list order, with unique names (``t03``, ``t03-2``, ...).

    Raises:
        PoolListNotFoundError, PoolSyntaxError, EmptyPoolError, TeacherNotFoundError,
        NotAClassifierError, UnknownArchitectureError, WeightsMismatchError, PickleRefusedError,
        and the Hub errors of :mod:`tgr_hub.hub`: all name ``LIST_FILE:LINE``.
    """
    entries = parse_pool_list(path)
    if not entries:
        raise EmptyPoolError(
            f"pool list {path} lists no teacher",
            path=None,
            hint="add one entry per line: org/name[@REVISION] or ./local/folder",
        )
    seen: dict[tuple[str, str, str | None], int] = {}
    for entry in entries:
        key = (entry.kind, entry.target, entry.revision)
        if key in seen:
            _logger.warning("%s: %s repeats line %d; it will be loaded twice", entry.where, entry.source, seen[key])
        seen.setdefault(key, entry.line)
    from .progress import progress_bar

    resolved = _resolve_hub_entries(entries, allow_pickle, progress)
    members: list[PoolMember] = []
    names: set[str] = set()
    for entry in progress_bar(entries, desc="loading pool", unit="teacher", disable=not progress):
        base = Path(entry.target).name if entry.kind == "local" else entry.target.split("/")[-1]
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.add(name)
        member = load_member(entry, allow_pickle=allow_pickle, name=name, resolved=resolved.get(id(entry)))
        _logger.debug(
            "%s: loaded %s (%s, %d classes)", entry.where, member.name, member.architecture, member.num_classes
        )
        members.append(member)
    _logger.info("loaded %d teachers from %s", len(members), path)
    return members
