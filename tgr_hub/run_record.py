"""The run record: what ``tgr_config.json`` holds, as a type.

``tgr-hub train`` writes it beside the meta-model; config loading (a saved record is a valid
``--config`` file), the model card and the Space read it. On disk it is one JSON object: the
run config's sections at the top level (``seed``, ``preset``, ``data``, ``recover``, ...,
``eval``), then the record's own keys (:data:`RECORD_KEYS`)::

    {"seed": 0, "preset": "smoke", "data": {...}, ..., "eval": {...},
     "tgr_hub_version": "0.1.0",
     "data_source": {"dataset": "glyphs", "revision": null, "class_split": null},
     "pool_members": [{"name", "kind", "repo_id", "source", "revision", "architecture",
                       "num_classes", "label_names", "input_size",
                       "label_descriptions" (only when some label has one)}, ...],
     "groups": [["t00", "t02"], ["t01", "t03"]],          # teacher names
     "metrics": {"val": {"best_step", "1shot"}, "test": {"1shot": {"mean", "ci95", ...}}},
     "history": {"task_loss": [[step, value], ...], ...},
     "timings_s": {"pool": 0.2, ...},
     "device": "cuda:0"}                                    # where the stages ran

Records written before ``kind``/``repo_id`` existed still load: the kind of a member is then
read from its ``source`` by :mod:`tgr_hub.repo_id`, the one parser of repository references.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .errors import RepoIdError, RunFolderError
from .io import write_json_atomic
from .repo_id import is_local_ref, is_repo_id, parse_repo_ref

__all__ = ["RECORD_KEYS", "MemberRecord", "RunRecord", "config_part", "describe_pool"]


class Teacher(Protocol):
    """What the record reads from a loaded teacher (:class:`tgr_hub.pool.PoolMember` has it all)."""

    name: str
    repo_id: str | None
    source: str
    revision: str | None
    architecture: str
    label_names: list[str]
    label_descriptions: dict[str, str]
    input_size: tuple[int, int, int]

    @property
    def num_classes(self) -> int: ...


#: The keys of ``tgr_config.json`` that are not run config sections.
RECORD_KEYS = ("tgr_hub_version", "data_source", "pool_members", "groups", "metrics", "history", "timings_s", "device")


@dataclass
class MemberRecord:
    """One teacher of the pool, as the run recorded it.

    Attributes:
        name: display name (unique in the pool).
        kind: ``"hub"`` (a Hub model repository) or ``"local"`` (a folder).
        repo_id: ``org/name`` for a Hub teacher, else None.
        source: the pool entry as written in the list.
        revision: the commit sha a Hub teacher resolved to (None for a local folder).
        architecture: timm architecture.
        num_classes, label_names: the teacher's classes.
        input_size: ``[C, H, W]`` the teacher takes.
        label_descriptions: readable names of labels that have one (e.g. ImageNet synsets,
            :mod:`tgr_hub.labels`); left out of the JSON when empty.
    """

    name: str
    kind: Literal["hub", "local"]
    repo_id: str | None
    source: str
    revision: str | None
    architecture: str
    num_classes: int
    label_names: list[str]
    input_size: list[int]
    label_descriptions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_member(cls, member: Teacher) -> MemberRecord:
        """The record of a loaded teacher."""
        return cls(
            name=member.name,
            kind="hub" if member.repo_id else "local",
            repo_id=member.repo_id,
            source=member.source,
            revision=member.revision,
            architecture=member.architecture,
            num_classes=member.num_classes,
            label_names=list(member.label_names),
            input_size=list(member.input_size),
            label_descriptions=dict(member.label_descriptions),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberRecord:
        """Read one ``pool_members`` entry (old records without ``kind``/``repo_id`` too)."""
        source = str(data.get("source") or "")
        kind, repo_id = data.get("kind"), data.get("repo_id")
        if kind not in ("hub", "local"):  # written before the kind was recorded: read it from the source
            kind, repo_id = ("hub", repo_id) if isinstance(repo_id, str) and is_repo_id(repo_id) else ("local", None)
            if kind == "local" and source and not is_local_ref(source) and not Path(source).is_absolute():
                with contextlib.suppress(RepoIdError):  # not a repository reference: a folder named without ./
                    kind, repo_id = "hub", parse_repo_ref(source).repo_id
        labels = [str(label) for label in data.get("label_names") or []]
        return cls(
            name=str(data.get("name", "")),
            kind="hub" if kind == "hub" else "local",
            repo_id=repo_id if kind == "hub" else None,
            source=source,
            revision=data.get("revision"),
            architecture=str(data.get("architecture", "?")),
            num_classes=int(data.get("num_classes", len(labels))),
            label_names=labels,
            input_size=[int(v) for v in data.get("input_size") or []],
            label_descriptions={str(k): str(v) for k, v in (data.get("label_descriptions") or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["label_descriptions"]:  # absent when there are none, as the records always had it
            del data["label_descriptions"]
        return data


def describe_pool(members: Sequence[Teacher]) -> list[dict[str, Any]]:
    """JSON-able description of the pool (``pool.json``, ``pool_members`` of the record)."""
    return [MemberRecord.from_member(m).to_dict() for m in members]


def config_part(data: dict[str, Any]) -> dict[str, Any]:
    """The run config sections of a ``tgr_config.json`` object (the record's own keys removed)."""
    return {k: v for k, v in data.items() if k not in RECORD_KEYS}


@dataclass
class RunRecord:
    """What ``tgr_config.json`` holds.

    Attributes:
        config: the run config, as :meth:`tgr_hub.config.RunConfig.to_dict` gives it.
        tgr_hub_version: the version that wrote the record.
        data_source: the dataset as resolved, ``{"dataset", "revision", "class_split"}`` (a Hub
            dataset's commit and the class split used); None (``null``) when unknown, e.g. in
            records written before it existed.
        pool_members: the pool, pinned.
        groups: the teacher groups, as lists of teacher names.
        metrics: ``{"val": {...}, "test": {"1shot": {"mean", "ci95", ...}, ...}}``.
        history: training curves, ``{name: [[step, value], ...]}``.
        timings_s: seconds per stage.
        device: where the stages ran (Accelerate's device, e.g. ``"cpu"`` or ``"cuda:0"``); None
            in records written before it existed.
    """

    config: dict[str, Any]
    tgr_hub_version: str = ""
    data_source: dict[str, Any] | None = None
    pool_members: list[MemberRecord] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``tgr_config.json`` (config sections first, then the record's keys)."""
        return {
            **self.config,
            "tgr_hub_version": self.tgr_hub_version,
            "data_source": self.data_source,
            "pool_members": [m.to_dict() for m in self.pool_members],
            "groups": [list(g) for g in self.groups],
            "metrics": self.metrics,
            "history": self.history,
            "timings_s": self.timings_s,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Read a ``tgr_config.json`` object; keys a record lacks get empty values."""
        members = [MemberRecord.from_dict(m) for m in data.get("pool_members") or [] if isinstance(m, dict)]
        names = [m.name for m in members]
        groups = []
        for group in data.get("groups") or []:  # names; very old records held teacher indices
            groups.append([names[g] if isinstance(g, int) and 0 <= g < len(names) else str(g) for g in group])
        source = data.get("data_source")
        return cls(
            config=config_part(data),
            tgr_hub_version=str(data.get("tgr_hub_version") or ""),
            data_source=dict(source) if isinstance(source, dict) else None,
            pool_members=members,
            groups=groups,
            metrics=dict(data.get("metrics") or {}),
            history=dict(data.get("history") or {}),
            timings_s=dict(data.get("timings_s") or {}),
            device=str(data["device"]) if data.get("device") else None,
        )

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """Read ``tgr_config.json``.

        Raises:
            RunFolderError: the file is missing or is not a JSON object.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunFolderError(
                f"{path} does not exist", hint="tgr-hub train writes it beside the meta-model"
            ) from None
        except (OSError, ValueError) as error:
            raise RunFolderError(
                f"cannot read {path}: {error}", hint="it must be the JSON file tgr-hub train wrote"
            ) from None
        if not isinstance(data, dict):
            raise RunFolderError(f"{path} is not a JSON object", hint="it must be the JSON file tgr-hub train wrote")
        return cls.from_dict(data)

    def write(self, path: str | Path) -> None:
        """Write ``tgr_config.json`` atomically."""
        write_json_atomic(path, self.to_dict(), default=str)

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by its dotted name (``"train.learner"``), or ``default``."""
        node: Any = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    @property
    def hub_teachers(self) -> list[str]:
        """The distinct Hub repositories of the pool, in pool order."""
        ids: list[str] = []
        for member in self.pool_members:
            if member.repo_id and member.repo_id not in ids:
                ids.append(member.repo_id)
        return ids
