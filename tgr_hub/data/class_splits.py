"""Standard class splits (meta-train / meta-val / meta-test) for datasets that ship none.

A class split is either a JSON file::

    {"train": ["001.Black_footed_Albatross", ...], "validation": [...], "test": [...]}

whose entries are class names or integer class ids (a ``ClassLabel`` index, or the value of an
integer label column), or the name of a built-in split (:data:`BUILTIN_CLASS_SPLITS`). Classes a
file leaves out are not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .episodes import SPLIT_NAMES, normalize_split

logger = logging.getLogger(__name__)


def _cub_chen2019(names: Sequence[str]) -> dict[str, list[int]]:
    """The usual CUB-200-2011 split of Chen et al. 2019 ("A Closer Look at Few-shot
    Classification"): with the 200 classes in their official order ``001.`` ... ``200.``
    (index i = number - 1), train is i % 2 == 0 (100 classes), val i % 4 == 1 (50), test i % 4 == 3 (50)."""
    if len(names) != 200:
        raise DatasetError(
            f"the built-in cub-200 split needs the 200 CUB-200-2011 classes, the dataset has {len(names)}",
            hint="pass --class-split FILE with its own class lists instead",
        )
    numbered = [re.match(r"^\s*(\d{1,3})\s*[._ ]", n) for n in names]
    # names like "001.Black_footed_Albatross" carry the official number; else the label order is taken as official
    order = [int(m.group(1)) - 1 for m in numbered if m is not None] if all(numbered) else list(range(200))
    if sorted(order) != list(range(200)):
        raise DatasetError(
            "the dataset's CUB class numbers are not 001..200, each once",
            hint="pass --class-split FILE with its own class lists instead",
        )
    assignment: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for code, i in enumerate(order):
        assignment["train" if i % 2 == 0 else "val" if i % 4 == 1 else "test"].append(code)
    return assignment


#: Built-in splits: name -> (description, rule mapping the class names to split class codes).
BUILTIN_CLASS_SPLITS: dict[str, tuple[str, Callable[[Sequence[str]], dict[str, list[int]]]]] = {
    "cub-200": ("CUB-200-2011 100/50/50 classes (Chen et al. 2019)", _cub_chen2019),
}


@dataclass(frozen=True)
class ClassSplit:
    """A class split to apply to a dataset.

    Attributes:
        name: what the log and the run record call it (``builtin:cub-200``, ``file:PATH``).
        key: a stable identity of its content (part of the converted-image cache key).
        lists: for a file: ``{"train"|"val"|"test": [class name or id, ...]}``; None for a built-in.
    """

    name: str
    key: str
    lists: dict[str, list[str | int]] | None = None

    def assign(self, names: Sequence[str], ids: Sequence[int] | None) -> dict[str, list[int]]:
        """The class codes (indices into ``names``) of each split.

        Args:
            names: ``[C]`` class names, in code order.
            ids: ``[C]`` the integer id of each class (its ``ClassLabel`` index or integer label
                value), or None when labels are strings (then a file must list names).

        Returns:
            ``{"train": [...], "val": [...], "test": [...]}``: disjoint, non-empty, sorted.

        Raises:
            DatasetError: an unknown class, a class in two splits, or an empty split.
        """
        if self.lists is None:
            assignment = BUILTIN_CLASS_SPLITS[self.name.split(":", 1)[1]][1](names)
        else:
            by_name = {n: c for c, n in enumerate(names)}
            by_id = {int(v): c for c, v in enumerate(ids)} if ids is not None else {}
            assignment = {}
            for split, entries in self.lists.items():
                codes = []
                for entry in entries:
                    code = by_id.get(entry) if isinstance(entry, int) else by_name.get(str(entry))
                    if code is None:
                        known = ", ".join(list(names)[:5]) + (", ..." if len(names) > 5 else "")
                        raise DatasetError(
                            f"class split {self.name}: {split} class {entry!r} is not in the dataset",
                            hint=f"use its class names ({known})"
                            + (" or integer class ids" if ids is not None else ""),
                        )
                    codes.append(code)
                assignment[split] = codes
        seen: dict[int, str] = {}
        for split in SPLIT_NAMES:
            for code in assignment[split]:
                if code in seen and seen[code] != split:
                    raise DatasetError(
                        f"class split {self.name}: class {names[code]!r} is in both {seen[code]} and {split}",
                        hint="meta-train, meta-val and meta-test classes must be disjoint",
                    )
                seen[code] = split
            if not assignment[split]:
                raise DatasetError(f"class split {self.name}: the {split} split has no class")
        unused = len(names) - len(seen)
        if unused:
            logger.info("class split %s leaves %d of %d classes out", self.name, unused, len(names))
        return {split: sorted(set(assignment[split])) for split in SPLIT_NAMES}


def read_class_split(value: str) -> ClassSplit:
    """A built-in split by name (:data:`BUILTIN_CLASS_SPLITS`) or a JSON file of class lists.

    Raises:
        DatasetError: neither a built-in name nor a readable file with train, validation and test lists.
    """
    if value in BUILTIN_CLASS_SPLITS:
        return ClassSplit(name=f"builtin:{value}", key=f"builtin:{value}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"class split {value!r} is neither a built-in split nor a file",
            hint=f"built-in splits: {', '.join(BUILTIN_CLASS_SPLITS)}; or a JSON file "
            '{"train": [...], "validation": [...], "test": [...]}',
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read the class split file {path}: {error}") from error
    if not isinstance(data, dict):
        raise DatasetError(f"class split file {path} must hold a JSON object of class lists")
    lists: dict[str, list[str | int]] = {}
    for key, entries in data.items():
        split = normalize_split(key)  # DatasetError on anything but train / val(idation) / test
        if split in lists:
            raise DatasetError(f"class split file {path} lists the {split} split twice")
        if not isinstance(entries, list) or not all(
            isinstance(e, (str, int)) and not isinstance(e, bool) for e in entries
        ):
            raise DatasetError(f"class split file {path}: {key} must be a list of class names or integer ids")
        lists[split] = list(entries)
    missing = [s for s in SPLIT_NAMES if s not in lists]
    if missing:
        raise DatasetError(
            f"class split file {path} lacks the {', '.join(missing)} split(s)",
            hint='it needs {"train": [...], "validation": [...], "test": [...]}',
        )
    canonical = json.dumps({s: lists[s] for s in SPLIT_NAMES}, sort_keys=True)
    return ClassSplit(
        name=f"file:{path}", key="file:" + hashlib.sha256(canonical.encode()).hexdigest()[:20], lists=lists
    )
