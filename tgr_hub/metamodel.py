"""The meta-model: a timm backbone (``num_classes=0``) plus the data config it expects.

A :class:`MetaModel` maps images in [0, 1] to features; it resizes and normalises inside,
so every caller (learners, evaluation, the demo) passes raw ``[0, 1]`` images, as it does
to pool members. It is saved in timm's Hub layout, so plain timm loads the backbone:

    import tgr_hub, timm                       # tgr_hub registers conv4 with timm
    backbone = timm.create_model("local-dir:runs/x/meta_model", pretrained=True)
    # backbone(normalised images) == MetaModel(images in [0, 1])

Folder layout (written by :func:`save_meta_model`)::

    config.json        architecture, num_classes 0, num_features, pretrained_cfg{input_size, mean, std, ...}
    model.safetensors  the backbone's state dict (including BatchNorm running statistics)
    tgr_config.json    optional: run config, pool, groups, metrics
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import seeds
from .errors import ConfigError, PoolError, RunFolderError
from .io import write_json_atomic
from .models.hub_layout import CONFIG_NAME, WEIGHTS_NAME, create_from_folder, save_timm_folder
from .run_record import RunRecord

logger = logging.getLogger(__name__)

__all__ = [
    "TGR_CONFIG_NAME",
    "MetaModel",
    "create_meta_model",
    "find_meta_model_folder",
    "load_meta_model",
    "save_meta_model",
]

TGR_CONFIG_NAME = "tgr_config.json"


def _triple(values: Any, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else (values,)))
    return values * channels if len(values) == 1 else values


class MetaModel(nn.Module):
    """A feature extractor for few-shot learning: ``[B, 3, H, W]`` in [0, 1] -> ``[B, D]``.

    Attributes:
        backbone: timm model built with ``num_classes=0`` (its forward returns features).
        architecture: timm architecture name (``"conv4"``, ``"resnet10t"``...).
        input_size: ``(C, H, W)`` the backbone takes; other sizes are resized (bilinear).
        mean, std: per-channel normalisation applied after resizing.
        model_args: timm construction arguments to rebuild the backbone (saved in config.json).
        tgr_config: contents of ``tgr_config.json`` when loaded from a folder, else None.
    """

    backbone: Any  # a timm model: num_features, pretrained_cfg... are not declared by nn.Module
    _mean: Tensor  # buffers (register_buffer in __init__)
    _std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        architecture: str,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        model_args: dict[str, Any] | None = None,
        tgr_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if getattr(backbone, "num_classes", 0) != 0:
            raise ConfigError(f"the meta-model backbone must have num_classes=0, got {backbone.num_classes}")
        self.backbone = backbone
        self.architecture = architecture
        self.input_size = tuple(int(v) for v in input_size)
        self.mean = _triple(mean, self.input_size[0])
        self.std = _triple(std, self.input_size[0])
        if len(self.mean) != self.input_size[0] or len(self.std) != self.input_size[0] or min(self.std) <= 0:
            raise ConfigError(f"mean/std must have {self.input_size[0]} values (std > 0), got {mean}, {std}")
        self.model_args = dict(model_args or {})
        self.tgr_config = tgr_config
        # non-persistent: not in the state dict (the backbone's weights are the whole checkpoint),
        # but they follow .to(device)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        """``D``, the size of the features :meth:`forward` returns."""
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    @property
    def learner(self) -> str | None:
        """The meta-learner this model was trained with (from ``tgr_config.json``), if known."""
        train = (self.tgr_config or {}).get("train") or {}
        return train.get("learner")

    def normalize(self, images01: Tensor) -> Tensor:
        """``[B, C, H', W']`` in [0, 1] -> ``[B, C, H, W]`` resized (if needed) and normalised."""
        if images01.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images01.shape)}")
        x = images01
        if x.shape[1] != self.input_size[0]:
            if x.shape[1] == 1:
                x = x.expand(-1, self.input_size[0], -1, -1)
            else:
                raise ValueError(f"the meta-model expects {self.input_size[0]}-channel images, got {x.shape[1]}")
        if tuple(x.shape[-2:]) != self.input_size[1:]:
            # same resize as PoolMember.normalize, so teachers and meta-model see the same pixels
            x = F.interpolate(x, size=self.input_size[1:], mode="bilinear", align_corners=False, antialias=True)
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def forward(self, images01: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> features ``[B, D]``."""
        return self.backbone(self.normalize(images01))

    def pretrained_cfg(self) -> dict[str, Any]:
        """The data config saved as ``pretrained_cfg`` in config.json."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": 0,
        }


def _build_backbone(arch: str, image_size: int, pretrained: bool) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    from .models import conv4  # noqa: F401  (registers conv4)

    if not timm.is_model(arch):
        raise ConfigError(f"unknown architecture {arch!r}", hint="use conv4 or a timm model name, e.g. resnet10t")
    kwargs: dict[str, Any] = {}
    cfg = get_pretrained_cfg(arch)
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = image_size  # fixed-size models (conv4 'flatten', ViTs) are built for it
    return timm.create_model(arch, pretrained=pretrained, num_classes=0, **kwargs)


def create_meta_model(arch: str = "conv4", image_size: int = 32, seed: int = 0, pretrained: bool = False) -> MetaModel:
    """A freshly initialised meta-model.

    Args:
        arch: timm architecture (``conv4`` is registered by ``import tgr_hub``).
        image_size: input height = width the backbone takes.
        seed: seeds the weight initialisation (the global RNG state is left untouched).
        pretrained: start from timm's pretrained weights (needs them in the local cache or
            network access); mean/std then come from the pretrained config.

    Returns:
        The meta-model in train mode.
    """
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8, got {image_size}")
    with seeds.seeded_torch(seed):  # timm initialises from the global CPU RNG
        backbone = _build_backbone(arch, image_size, pretrained)
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    channels = int((cfg.get("input_size") or (3,))[0])
    mean = cfg.get("mean", (0.5,) * channels)
    std = cfg.get("std", (0.5,) * channels)
    model_args = dict(getattr(backbone, "_model_args", {}))  # what timm records to rebuild it
    return MetaModel(backbone, arch, (channels, image_size, image_size), mean, std, model_args=model_args)


def save_meta_model(model: MetaModel, folder: str | Path, *, tgr_config: dict[str, Any] | None = None) -> None:
    """Save in timm's Hub layout (config.json + model.safetensors), atomically per file.

    Args:
        model: the meta-model.
        folder: output folder (created; other files in it are kept).
        tgr_config: written as ``tgr_config.json`` when given (run config, pool, metrics...).
    """
    folder = Path(folder)
    save_timm_folder(
        model.backbone,
        folder,
        architecture=model.architecture,
        num_classes=0,
        label_names=None,
        pretrained_cfg=model.pretrained_cfg(),
    )
    if tgr_config is not None:
        write_json_atomic(folder / TGR_CONFIG_NAME, tgr_config, default=str)
        model.tgr_config = tgr_config
    logger.info("saved meta-model (%s, %d features) to %s", model.architecture, model.feature_dim, folder)


def find_meta_model_folder(path: str | Path) -> Path:
    """The meta-model folder at ``path``: ``path`` itself or ``path/meta_model``.

    Raises:
        RunFolderError: neither holds ``config.json`` and ``model.safetensors``.
    """
    path = Path(path)
    if not path.exists():
        raise RunFolderError(f"{path} does not exist", hint="pass a meta-model folder or a run folder")
    for candidate in (path, path / "meta_model"):
        if (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    if (path / CONFIG_NAME).is_file():
        raise RunFolderError(
            f"{path} has {CONFIG_NAME} but no {WEIGHTS_NAME}", hint="the meta-model was not saved completely"
        )
    raise RunFolderError(
        f"{path} holds no meta-model ({CONFIG_NAME} + {WEIGHTS_NAME}, there or in {path / 'meta_model'})",
        hint="pass the folder written by save_meta_model / tgr-hub train",
    )


def load_meta_model(folder: str | Path) -> MetaModel:
    """Load a meta-model saved by :func:`save_meta_model` (safetensors only, strict).

    Args:
        folder: the meta-model folder, or a run folder with a ``meta_model`` subfolder.

    Returns:
        The meta-model in eval mode, with ``tgr_config`` read from ``tgr_config.json`` if present.

    Raises:
        RunFolderError: the folder, config.json or model.safetensors is missing, or the
            config/weights are not a feature extractor timm can build.
    """
    folder = find_meta_model_folder(folder)
    try:
        backbone, config = create_from_folder(folder, allow_pickle=False)
    except PoolError as error:  # reported as pool errors by the shared loader; here it is a run folder
        raise RunFolderError(
            f"meta-model {folder}: {error.args[0] if error.args else error}", hint=error.hint
        ) from None
    if config["num_classes"] != 0:
        raise RunFolderError(
            f"{folder} holds a {config['num_classes']}-way classifier, not a meta-model (num_classes must be 0)",
            hint="to evaluate a teacher's backbone, use the average baseline or re-save it with num_classes 0",
        )
    cfg = config["pretrained_cfg"]
    timm_cfg = cast(Any, backbone).pretrained_cfg  # set by timm on the models it builds
    size = tuple(int(v) for v in (cfg.get("input_size") or timm_cfg.get("input_size")))
    tgr_path = folder / TGR_CONFIG_NAME
    tgr_config = RunRecord.read(tgr_path).to_dict() if tgr_path.is_file() else None
    model = MetaModel(
        backbone,
        config["architecture"],
        (size[0], size[1], size[2]),
        cfg.get("mean", (0.5,) * size[0]),
        cfg.get("std", (0.5,) * size[0]),
        model_args=config.get("model_args") or {},
        tgr_config=tgr_config,
    )
    model.eval()
    return model
