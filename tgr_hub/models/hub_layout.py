"""timm's Hub folder layout: ``config.json`` + ``model.safetensors``.

A folder written by :func:`save_timm_folder` is what ``timm.save_for_hf`` writes (the config
is produced by timm's own ``save_config_for_hf`` where the model is a timm model), so plain
timm loads it: ``timm.create_model("local-dir:FOLDER", pretrained=True)`` locally and
``timm.create_model("hf-hub:org/name", pretrained=True)`` once uploaded (for Conv4,
``import tgr_hub`` first). The config looks like::

    {"architecture": "conv4", "num_classes": 5, "num_features": 128, "global_pool": "flatten",
     "label_names": ["latin/A", ...], "model_args": {...},
     "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [...], "std": [...], ...}}

:func:`create_from_folder` is the *checked* loader used for pool members and meta-models: it
refuses pickled weights unless asked, never runs code from the folder, and turns every way a
folder can be wrong into a typed :mod:`tgr_hub.errors` error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import (
    ConfigError,
    NotAClassifierError,
    PickleRefusedError,
    TeacherNotFoundError,
    UnknownArchitectureError,
    WeightsMismatchError,
)
from ..io import save_safetensors_atomic, write_json_atomic

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PICKLE_PATTERNS",
    "save_timm_folder",
    "read_timm_config",
    "find_weights",
    "create_from_folder",
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Pickled checkpoint names timm would also load from a folder (refused unless opted in).
PICKLE_PATTERNS = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "*.pth", "*.pth.tar", "*.bin", "*.pt")
# pretrained_cfg keys that describe *source* weights (ImageNet checkpoints etc.), not a model we trained.
_SOURCE_META_KEYS = (
    "tag",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
    "description",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "file",
    "source",
    "state_dict",
    "test_input_size",
    "test_pool_size",
    "test_crop_pct",
    "min_input_size",
    "label_offset",
    "label_descriptions",
)
_RESERVED_KEYS = (
    "architecture",
    "num_classes",
    "num_features",
    "label_names",
    "pretrained_cfg",
    "model_args",
    "global_pool",
)


def _pretrained_cfg_fields() -> set[str]:
    from timm.models import PretrainedCfg

    return {f.name for f in dataclasses.fields(PretrainedCfg)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _timm_config(model: nn.Module, architecture: str, pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config timm itself would write for ``model`` (empty dict when that is not possible)."""
    if not hasattr(model, "pretrained_cfg"):
        return {}
    try:
        from timm.models._hub import save_config_for_hf
    except ImportError:  # pragma: no cover - timm without the helper
        return {}
    overlay = {k: v for k, v in pretrained_cfg.items() if k in _pretrained_cfg_fields()}
    overlay["architecture"] = architecture
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NAME
        try:
            save_config_for_hf(model, str(path), model_config={"pretrained_cfg": overlay})
        except (ValueError, TypeError, KeyError, AssertionError) as error:
            _logger.debug("timm's save_config_for_hf failed (%s); writing the config directly", error)
            return {}
        return json.loads(path.read_text())


def save_timm_folder(
    model: nn.Module,
    folder: str | Path,
    *,
    architecture: str,
    num_classes: int,
    label_names: list[str] | None,
    pretrained_cfg: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` in timm's Hub layout (``config.json`` + ``model.safetensors``).

    Each file is written under a temporary name and renamed, weights first, so a folder with a
    ``config.json`` is always complete. Other files in the folder (README.md...) are kept.

    Args:
        model: the model; its ``state_dict()`` is saved. A timm model (created by
            ``timm.create_model``) gets the config timm's own exporter produces.
        folder: output folder (created).
        architecture: timm model name, e.g. ``"conv4"`` or ``"resnet10t"``.
        num_classes: classifier size (0 for a feature extractor); must equal ``model.num_classes``
            when the model has that attribute.
        label_names: ``num_classes`` class names (classifier index -> name), or None.
        pretrained_cfg: data config of the weights; must contain the true ``input_size``
            ``(C, H, W)``, ``mean`` and ``std``; other timm ``PretrainedCfg`` fields are kept.
        extra: additional top-level config keys (must not clash with timm's).
    """
    folder = Path(folder)
    model_classes = getattr(model, "num_classes", num_classes)
    if model_classes != num_classes:
        raise ConfigError(
            f"num_classes {num_classes} != the model's num_classes {model_classes}",
            hint="pass the classifier size the model was built with",
        )
    missing = [key for key in ("input_size", "mean", "std") if key not in pretrained_cfg]
    if missing:
        raise ConfigError(
            f"pretrained_cfg needs {', '.join(missing)}",
            hint="give the input_size (C, H, W), mean and std the weights were trained with",
        )
    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if len(label_names) != num_classes:
            raise ConfigError(
                f"{len(label_names)} label names for {num_classes} classes",
                hint="give one name per class, in classifier order",
            )
    extra = dict(extra or {})
    clash = set(extra) & set(_RESERVED_KEYS)
    if clash:
        raise ConfigError(
            f"extra config keys clash with timm's config keys: {sorted(clash)}",
            hint="rename them (e.g. with a tgr_ prefix)",
        )

    config = _timm_config(model, architecture, pretrained_cfg)
    if config:
        cfg = config["pretrained_cfg"]
        if tuple(pretrained_cfg["input_size"]) != tuple(cast(Any, model).pretrained_cfg.get("input_size", ())):
            cfg["pool_size"] = None  # the registry's pool size is for its own input size
        for key in _SOURCE_META_KEYS:
            if key not in pretrained_cfg:
                cfg.pop(key, None)
    else:
        # not a timm-built model: the same fields, written directly
        config = {
            "architecture": architecture,
            "num_classes": num_classes,
            "num_features": int(getattr(model, "num_features", 0) or 0),
            "pretrained_cfg": {},
        }
        cfg = config["pretrained_cfg"]
    allowed = _pretrained_cfg_fields()
    for key, value in pretrained_cfg.items():
        if key in allowed:
            cfg[key] = value
        else:
            _logger.debug("dropping %s: not a timm pretrained_cfg field", key)
    cfg.pop("architecture", None)  # timm keeps it at the top level only
    cfg["num_classes"] = num_classes
    for key in ("label_names", "label_descriptions", "label_offset"):
        cfg.pop(key, None)  # timm keeps label names at the top level
    config["architecture"] = architecture
    config["num_classes"] = num_classes
    if label_names:
        config["label_names"] = label_names
    else:
        config.pop("label_names", None)
    # timm puts pretrained_cfg last; keep that order for readability
    config["pretrained_cfg"] = config.pop("pretrained_cfg")
    config.update(extra)
    config = _jsonable(config)

    folder.mkdir(parents=True, exist_ok=True)

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_safetensors_atomic(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    write_json_atomic(folder / CONFIG_NAME, config)
    _logger.debug("saved %s (%s, %d classes) to %s", architecture, WEIGHTS_NAME, num_classes, folder)


def read_timm_config(folder: str | Path) -> dict[str, Any]:
    """Read and check ``FOLDER/config.json``.

    Legacy single-dict configs (no ``pretrained_cfg``) are converted the way timm converts them.

    Returns:
        The config with at least ``architecture`` (str), ``num_classes`` (int),
        ``pretrained_cfg`` (dict), ``model_args`` (dict) and ``label_names`` (list[str] or None).

    Raises:
        TeacherNotFoundError: the folder or its config.json does not exist.
        NotAClassifierError: config.json is not valid JSON or lacks what a timm config has.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise TeacherNotFoundError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise TeacherNotFoundError(
            f"{folder} has no {CONFIG_NAME}",
            hint="a timm model folder needs config.json and model.safetensors (timm.models.save_for_hf writes both)",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotAClassifierError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise NotAClassifierError(f"{path} must hold a JSON object")
    if "pretrained_cfg" not in config:  # legacy single-dict format
        legacy = dict(config)
        config = {"architecture": legacy.pop("architecture", None), "num_features": legacy.pop("num_features", None)}
        if "labels" in legacy:
            legacy["label_names"] = legacy.pop("labels")
        for key in ("num_classes", "label_names"):
            if key in legacy:
                config[key] = legacy.pop(key)
        config["pretrained_cfg"] = legacy
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise NotAClassifierError(f"{path} has no 'architecture'", hint="it does not look like a timm model config")
    cfg = config.get("pretrained_cfg")
    if not isinstance(cfg, dict):
        raise NotAClassifierError(f"{path}: 'pretrained_cfg' must be an object")
    if "num_classes" not in config:
        config["num_classes"] = cfg.get("num_classes")
    num_classes = config["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise NotAClassifierError(f"{path}: 'num_classes' must be a non-negative integer, got {num_classes!r}")
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise NotAClassifierError(f"{path}: 'model_args' must be an object")
    config["model_args"] = model_args
    labels = config.get("label_names", cfg.get("label_names"))
    if isinstance(labels, dict):  # timm allows {index: name} when there are gaps
        try:
            by_index = {int(k): str(v) for k, v in labels.items()}
        except ValueError:
            raise NotAClassifierError(f"{path}: 'label_names' keys must be class indices") from None
        labels = [by_index.get(i, str(i)) for i in range(num_classes)]
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or len(labels) != num_classes:
            raise NotAClassifierError(
                f"{path}: 'label_names' must list {num_classes} names (one per class), "
                f"got {len(labels) if isinstance(labels, (list, tuple)) else labels!r}"
            )
        labels = [str(name) for name in labels]
    config["label_names"] = labels
    size = cfg.get("input_size")
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3):
        raise NotAClassifierError(f"{path}: pretrained_cfg.input_size must be [C, H, W], got {size!r}")
    return config


def find_weights(folder: str | Path) -> tuple[Path | None, list[Path]]:
    """Locate weights in a folder.

    Returns:
        ``(safetensors_file, pickle_files)``: ``model.safetensors`` if present, else the first
        ``*.safetensors`` by name (or None); and the pickled checkpoints found.
    """
    folder = Path(folder)
    safe: Path | None = folder / WEIGHTS_NAME
    if not (folder / WEIGHTS_NAME).is_file():
        candidates = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
        safe = candidates[0] if candidates else None
    pickles: list[Path] = []
    for pattern in PICKLE_PATTERNS:
        for p in sorted(folder.glob(pattern)):
            if p.is_file() and p not in pickles:
                pickles.append(p)
    return safe, pickles


def _load_state_dict(folder: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], Path]:
    safe, pickles = find_weights(folder)
    if safe is not None:
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(safe), device="cpu"), safe
        except Exception as error:  # safetensors raises its own SafetensorError
            raise WeightsMismatchError(f"{safe} cannot be read as safetensors: {error}") from None
    if pickles:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{folder} has only pickled weights ({', '.join(p.name for p in pickles)})",
                hint="pickle files can run code when loaded; convert them to model.safetensors, "
                "or pass --allow-pickle (allow_pickle=True) to load them with torch.load(weights_only=True)",
            )
        path = pickles[0]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses arbitrary objects
            raise WeightsMismatchError(f"{path} cannot be loaded with weights_only=True: {error}") from None
        for key in ("state_dict", "model", "state_dict_ema"):  # common training-checkpoint wrappers
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsMismatchError(f"{path} does not hold a state dict of tensors")
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        return state, path
    raise TeacherNotFoundError(
        f"{folder} has no weights file",
        hint=f"expected {WEIGHTS_NAME} (or another *.safetensors file) next to config.json",
    )


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, ignore: tuple[str, ...] = ()
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state`` fits ``model`` exactly (names and shapes).

    Keys starting with one of ``ignore`` are left out of the comparison.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore)}
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {_summarise(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_summarise(shapes)} (file vs config)")
        raise WeightsMismatchError(
            f"weights in {where} do not fit the model its config.json describes: {'; '.join(parts)}",
            hint="check architecture, num_classes and model_args in config.json",
        )


def _is_timm_model(name: str) -> bool:
    import timm

    from . import conv4  # noqa: F401  (make sure conv4 is registered)

    return bool(timm.is_model(name))


def create_from_folder(
    folder: str | Path,
    *,
    allow_pickle: bool = False,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the timm model a Hub-layout folder describes and load its weights strictly.

    Nothing from the folder is executed: the architecture must be registered with timm
    (built-in, or ``conv4`` via ``import tgr_hub``), weights come from safetensors, and pickled
    weights are only read when ``allow_pickle`` is set, then with ``weights_only=True``.

    Args:
        folder: folder with ``config.json`` and weights.
        allow_pickle: accept ``pytorch_model.bin`` / ``*.pth`` when no safetensors exist.
        num_classes: build with another head size instead of the config's; the saved
            classifier is then dropped and everything else is loaded strictly.

    Returns:
        ``(model, config)``: the model in eval mode (gradients still enabled) and the config
        from :func:`read_timm_config`.

    Raises:
        TeacherNotFoundError, NotAClassifierError, UnknownArchitectureError,
        WeightsMismatchError, PickleRefusedError.
    """
    import timm

    folder = Path(folder)
    config = read_timm_config(folder)
    arch = config["architecture"]
    if not _is_timm_model(arch):
        raise UnknownArchitectureError(
            f"{folder / CONFIG_NAME} names architecture {arch!r}, which timm does not know",
            hint=f"upgrade timm (installed {timm.__version__}) or use a registered architecture; "
            "tgr-hub never runs model code from a folder",
        )
    state, weights_path = _load_state_dict(folder, allow_pickle)

    cfg = {k: v for k, v in config["pretrained_cfg"].items() if k in _pretrained_cfg_fields()}
    for key in ("input_size", "mean", "std", "test_input_size", "min_input_size", "pool_size", "test_pool_size"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    for key in (
        "url",
        "file",
        "hf_hub_id",
        "hf_hub_filename",
        "source",
        "state_dict",
        "label_names",
        "label_descriptions",
    ):
        cfg.pop(key, None)
    cfg["architecture"] = arch
    cfg["num_classes"] = config["num_classes"]
    model_args = dict(config["model_args"])
    model_args.pop("num_classes", None)
    for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"):
        model_args.pop(key, None)
    target_classes = config["num_classes"] if num_classes is None else num_classes
    try:
        model: Any = timm.create_model(
            arch, pretrained=False, num_classes=target_classes, pretrained_cfg=cfg, **model_args
        )
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as error:
        raise NotAClassifierError(
            f"timm cannot build {arch!r} from {folder / CONFIG_NAME}: {error}",
            hint="check model_args and pretrained_cfg in config.json",
        ) from None

    ignore: tuple[str, ...] = ()
    if target_classes != config["num_classes"]:
        classifier = config["pretrained_cfg"].get("classifier") or model.pretrained_cfg.get("classifier")
        if not classifier:
            raise NotAClassifierError(
                f"{folder / CONFIG_NAME} names no classifier layer, so its head cannot be replaced"
            )
        names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        ignore = tuple(f"{name}." for name in names)
    check_state_dict(model, state, str(weights_path), ignore=ignore)
    if ignore:
        state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    model.load_state_dict(state, strict=not ignore)
    model.eval()
    # model.pretrained_cfg describes these weights, like timm's local-dir loading does
    model.pretrained_cfg = dict(model.pretrained_cfg, **{"source": "local-dir", "file": str(folder)})
    model.pretrained_cfg["label_names"] = config["label_names"]
    return model, config
