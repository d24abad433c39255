"""Class names of a teacher: its own ``label_names``, timm's ImageNet metadata, or ``<teacher>:<index>``.

Most timm ImageNet checkpoints on the Hub carry no ``label_names`` in their ``config.json``.
Their classes are still well known: timm ships the ImageNet label spaces (``timm.data``'s
:class:`~timm.data.ImageNetInfo`), and :func:`~timm.data.infer_imagenet_subset` tells the space
from the classifier size (1000: ImageNet-1k, 11821: timm's ImageNet-12k, 21841/21842/21843 and
11221: the ImageNet-21k/22k variants). :func:`resolve_label_names` uses them, so that the
classes of ImageNet teachers are named by their WordNet synset ids (``n01440764``, timm's own
``label_names`` convention) with human-readable descriptions (``tench, Tinca tinca``). Two
teachers that both know ``n01440764`` then hold the same class, which the memory bank treats
as one (see :meth:`tgr_hub.bank.MemoryBank.sample_episode`).

What decides:

- ``label_names`` in the config win (used as they are);
- else the classifier size, after removing ``pretrained_cfg.label_offset`` leading outputs (a
  background class of some TensorFlow ports; those outputs keep ``<teacher>:<index>``), must
  be an ImageNet label space, and the ``pretrained_cfg.tag`` (``a1_in1k``,
  ``in22k_ft_in1k``, ``in12k``...), when there is one, must name that space: its last ``in1k``
  / ``in12k`` / ``in21k`` / ``in22k`` token decides, and a tag without one (a model trained on
  another dataset) is not guessed at;
- else every class is ``<teacher>:<index>``, shared with no other teacher, and a warning says so.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = ["TeacherLabels", "imagenet_label_space", "resolve_label_names"]

logger = logging.getLogger(__name__)

# timm's names of its ImageNet label spaces (infer_imagenet_subset) by the dataset token of a tag
_SPACES_OF_TAG = {
    "in1k": {"imagenet-1k"},
    "in12k": {"imagenet-12k"},
    # "21k" and "22k" are used loosely for the same fall11 release and its remappings
    "in21k": {"imagenet-21k-goog", "imagenet-21k-miil", "imagenet-22k", "imagenet-22k-ms"},
    "in22k": {"imagenet-21k-goog", "imagenet-21k-miil", "imagenet-22k", "imagenet-22k-ms"},
}
_TAG_TOKEN = re.compile(r"(?<![a-z0-9])(in1k|in12k|in21k|in22k)(?![a-z0-9])")


@dataclass
class TeacherLabels:
    """A teacher's class names.

    Attributes:
        names: ``num_classes`` names, classifier index -> name.
        descriptions: readable description of names that have one (``{"n01440764": "tench, Tinca tinca"}``).
        source: ``"config"`` (its own label_names), a timm ImageNet space (``"imagenet-1k"``...) or
            ``"index"`` (the ``<teacher>:<index>`` fallback).
    """

    names: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    source: str = "config"


def _tag_token(tag: str) -> str | None:
    tokens = _TAG_TOKEN.findall(tag.lower())
    return tokens[-1] if tokens else None  # "in22k_ft_in1k": fine-tuned last on in1k


def imagenet_label_space(config: dict[str, Any]) -> tuple[str, int] | None:
    """The timm ImageNet label space of a classifier config without label names.

    Args:
        config: a timm config as :func:`tgr_hub.models.hub_layout.read_timm_config` returns it.

    Returns:
        ``(space, offset)``: timm's subset name (``"imagenet-1k"``...) and the number of leading
        outputs that are not ImageNet classes; ``None`` when it is not an ImageNet classifier.
    """
    from timm.data import infer_imagenet_subset

    cfg = config.get("pretrained_cfg") or {}
    num_classes = int(config.get("num_classes") or 0)
    tag = str(cfg.get("tag") or "")
    token = _tag_token(tag)
    if tag and token is None:
        return None  # tagged with another dataset: its classes are not ImageNet's
    offset = int(cfg.get("label_offset") or 0)
    # timm's exporter drops label_offset once applied; a config may still carry a stale one
    for size, skip in ((num_classes - offset, offset), (num_classes, 0)) if offset > 0 else ((num_classes, 0),):
        space = infer_imagenet_subset({"num_classes": size}) if size > 0 else None
        if space is not None and (token is None or space in _SPACES_OF_TAG[token]):
            return space, skip
    return None


@lru_cache(maxsize=4)
def _imagenet_info(space: str):
    from timm.data import ImageNetInfo

    return ImageNetInfo(space)


def resolve_label_names(config: dict[str, Any], teacher: str) -> TeacherLabels:
    """The class names of a teacher (see the module docstring for the rules).

    Args:
        config: its timm config (``read_timm_config``), with ``num_classes``, ``label_names``
            (list or None), ``pretrained_cfg`` and optionally ``label_descriptions``.
        teacher: its display name, for the ``<teacher>:<index>`` fallback and the log.
    """
    num_classes = int(config["num_classes"])
    own = config.get("label_names")
    if own:
        described = config.get("label_descriptions")
        descriptions = {str(k): str(v) for k, v in described.items()} if isinstance(described, dict) else {}
        return TeacherLabels([str(name) for name in own], descriptions, "config")
    found = imagenet_label_space(config)
    if found is None:
        tag = (config.get("pretrained_cfg") or {}).get("tag")
        logger.warning(
            "%s: config.json has no label_names and its %d classes%s match no ImageNet label space timm knows; "
            "its classes are named %s:0..%s:%d and shared with no other teacher (add label_names to config.json "
            "to share them)",
            teacher,
            num_classes,
            f" (tag {tag!r})" if tag else "",
            teacher,
            teacher,
            num_classes - 1,
        )
        return TeacherLabels([f"{teacher}:{i}" for i in range(num_classes)], {}, "index")
    space, offset = found
    info = _imagenet_info(space)
    assert info.num_classes() == num_classes - offset, (space, info.num_classes(), num_classes, offset)
    names = [f"{teacher}:{i}" for i in range(offset)]
    names += [info.index_to_label_name(i) for i in range(num_classes - offset)]
    descriptions = {name: info.label_name_to_description(name) for name in names[offset:]}
    logger.info(
        "%s: no label_names in config.json; its %d classes are timm's %s synsets%s",
        teacher,
        num_classes - offset,
        space,
        f" (after {offset} background output(s))" if offset else "",
    )
    return TeacherLabels(names, descriptions, space)
