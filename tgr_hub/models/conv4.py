"""The few-shot-standard Conv4 backbone, registered with timm as ``conv4``.

Conv4 is 4 x [Conv3x3 (padding 1), BatchNorm, ReLU, MaxPool2] with the same width in every
block (reference width 32). As in the few-shot literature (and the reference code of the
TGR authors), the features are the *flattened* output of the last block, so the feature size
depends on the input size: ``width * (img_size // 16) ** 2`` (128 for width 32 at 32x32).
That makes the model fixed-input-size in timm's sense: its ``pretrained_cfg`` has
``fixed_input_size=True`` and timm passes ``img_size`` from ``input_size`` when it rebuilds
the model from a saved ``config.json``. ``global_pool="avg"`` (or ``"max"``) gives a
size-independent ``width``-dimensional feature instead.

    import tgr_hub, timm
    model = timm.create_model("conv4", num_classes=5)          # [B,3,32,32] -> [B,5]
    backbone = timm.create_model("conv4", num_classes=0)       # [B,3,32,32] -> [B,128]
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .layout import fast_layout

__all__ = ["Conv4"]

_POOLS = ("flatten", "avg", "max")


def _block(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Conv4 with timm's classifier API.

    Args:
        num_classes: size of the linear head; 0 makes the model a feature extractor.
        in_chans: input channels.
        width: channels of every block (reference 32).
        img_size: input height/width (at least 16); only used for ``global_pool="flatten"``,
            where it fixes the feature size ``width * (h // 16) * (w // 16)``.
        global_pool: ``"flatten"`` (reference), ``"avg"`` or ``"max"``.
        drop_rate: dropout before the head.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: int = 32,
        img_size: int | tuple[int, int] = 32,
        global_pool: str = "flatten",
        drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"Conv4 got unexpected arguments: {', '.join(sorted(kwargs))}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.width = width
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(
            _block(in_chans, width), _block(width, width), _block(width, width), _block(width, width)
        )
        self.feature_info = [dict(num_chs=width, reduction=2 ** (i + 1), module=f"blocks.{i}") for i in range(4)]
        self._set_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _set_pool(self, global_pool: str) -> None:
        if global_pool not in _POOLS:
            raise ValueError(f"conv4 global_pool must be one of {_POOLS}, got {global_pool!r}")
        self.global_pool = global_pool
        if global_pool == "flatten":
            h, w = self.img_size
            if h < 16 or w < 16:
                raise ValueError(f"conv4 with global_pool='flatten' needs img_size >= 16, got {self.img_size}")
            # four floor-halving max-pools leave h // 16 rows (84 px: 5, as in the few-shot literature)
            self.num_features = self.width * (h // 16) * (w // 16)
        else:
            self.num_features = self.width
        self.head_hidden_size = self.num_features
        # timm reads this trait when deciding whether img_size is a construction argument
        self._traits = dict(getattr(self, "_traits", {}), fixed_input_size=global_pool == "flatten")

    # --- timm model API ------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^blocks\.0", blocks=r"^blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (0: no head)."""
        if global_pool is not None and global_pool != "":
            self._set_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> feature map [B, width, H/16, W/16]."""
        x = fast_layout(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            from timm.models import checkpoint_seq

            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map [B, width, h, w] -> features [B, num_features] or logits [B, num_classes]."""
        if self.global_pool == "flatten":
            x = x.flatten(1)
        elif self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        else:
            x = x.amax(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, num_classes] (features [B, num_features] when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "fixed_input_size": True,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "blocks.0.0",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"conv4": _cfg(), "conv4_w64": _cfg()})


def _create_conv4(variant: str, pretrained: bool = False, **kwargs: Any) -> Conv4:
    return build_model_with_cfg(Conv4, variant, pretrained, **kwargs)


@register_model
def conv4(pretrained: bool = False, **kwargs: Any) -> Conv4:
    """Conv4, width 32 (the few-shot reference backbone)."""
    return _create_conv4("conv4", pretrained, **dict(dict(width=32), **kwargs))


@register_model
def conv4_w64(pretrained: bool = False, **kwargs: Any) -> Conv4:
    """Conv4, width 64 (ProtoNet's original width)."""
    return _create_conv4("conv4_w64", pretrained, **dict(dict(width=64), **kwargs))
