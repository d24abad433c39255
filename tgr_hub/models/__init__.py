"""Model backbones and the timm Hub folder layout.

Importing this package registers the Conv4 backbone with timm (``conv4``, ``conv4_w64``).
"""

from __future__ import annotations

from . import conv4  # noqa: F401  (registers conv4 with timm)
from .conv4 import Conv4
from .hub_layout import create_from_folder, read_timm_config, save_timm_folder
from .layout import fast_layout

__all__ = ["Conv4", "create_from_folder", "fast_layout", "read_timm_config", "save_timm_folder"]
