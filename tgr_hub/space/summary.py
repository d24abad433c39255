"""The meta-model behind the app: loading it (folder or Hub id) and describing it in markdown.

What the app shows about a model (teachers, groups, accuracy) is read from its run record
(``tgr_config.json``, :class:`~tgr_hub.run_record.RunRecord`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import RepoIdError, RunFolderError
from ..metamodel import load_meta_model
from ..repo_id import parse_repo_ref
from ..run_record import MemberRecord, RunRecord

logger = logging.getLogger(__name__)


@dataclass
class AppModel:
    """A meta-model loaded for the app, with what the app shows about it.

    Attributes:
        model_id: what the user gave (Hub id or folder).
        model: the meta-model, eval mode.
        folder: local folder holding its files.
        tgr_config: contents of ``tgr_config.json`` (empty if absent).
        learner: adaptation method (``"protonet"`` or ``"maml"``).
        inner_steps: fine-tuning steps (MAML).
        inner_lr: fine-tuning step size (MAML).
        card_url: the model card's address (Hub ids) or ``None``.
        heatmap: path of the dissimilarity heatmap figure, if present.
    """

    model_id: str
    model: nn.Module
    folder: Path
    tgr_config: dict[str, Any] = field(default_factory=dict)
    learner: str = "protonet"
    inner_steps: int = 10
    inner_lr: float = 0.01
    card_url: str | None = None
    heatmap: Path | None = None


def _resolve_folder(model_id: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder for ``model_id``, and the Hub repo id when it was downloaded from the Hub."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path, None
    looks_local = model_id.startswith((".", "/", "~")) or (str(path.parent) not in ("", ".") and path.parent.is_dir())
    if looks_local:
        raise RunFolderError(
            f"meta-model folder {model_id} does not exist",
            hint="pass a meta-model folder, a run folder, or a Hub repo id (owner/name)",
        )
    from .. import hub  # the one place that talks to the Hub; imported when a Hub id is given

    try:
        ref = parse_repo_ref(model_id)
    except RepoIdError:
        raise RunFolderError(
            f"meta-model {model_id!r} is neither a local folder nor a Hub id (owner/name)",
            hint="set TGR_MODEL_ID to a meta-model folder or a Hub repo id",
        ) from None
    return Path(hub.download_meta_model(ref.repo_id, revision or ref.revision)), ref.repo_id


def load_app_model(model_id: str, *, revision: str | None = None) -> AppModel:
    """Load the meta-model named by ``model_id`` (local folder or Hub id) for the app.

    Args:
        model_id: a meta-model folder (timm layout + ``tgr_config.json``) or a Hub repo id
            (``owner/name``, optionally ``@revision``).
        revision: Hub revision (branch, tag or commit).

    Returns:
        The :class:`AppModel`.
    """
    if not model_id or not str(model_id).strip():
        raise RunFolderError("no meta-model given", hint="set TGR_MODEL_ID to a meta-model folder or a Hub repo id")
    model_id = str(model_id).strip()
    folder, repo_id = _resolve_folder(model_id, revision)
    model = load_meta_model(folder)
    model.eval()
    tgr_config: dict[str, Any] = dict(getattr(model, "tgr_config", None) or {})
    record = RunRecord.from_dict(tgr_config)
    learner = str(record.setting("train.learner", "protonet")).lower()
    method = str(record.setting("eval.method", "auto")).lower()
    if method in ("protonet", "finetune"):
        learner = "protonet" if method == "protonet" else "maml"
    if learner != "protonet":
        learner = "maml"  # maml, fomaml, maml2, finetune: all adapt by fine-tuning
    inner_steps = int(record.setting("eval.inner_steps", 10))
    inner_lr = float(record.setting("eval.inner_lr", 0.01))
    card_url = None
    if repo_id is not None:
        from ..hub import hub_endpoint

        card_url = f"{hub_endpoint()}/{repo_id}"
        # hub.download_meta_model fetched the figures into the snapshot, at the weights' commit
        heatmap = folder / "dissimilarity.png" if (folder / "dissimilarity.png").is_file() else None
    else:
        places = [folder, folder / "figures"] + ([folder.parent] if folder.name == "meta_model" else [])  # run layout
        heatmap = next((p / "dissimilarity.png" for p in places if (p / "dissimilarity.png").is_file()), None)
    logger.info("loaded meta-model %s (%s adaptation)", model_id, learner)
    return AppModel(
        model_id=model_id,
        model=model,
        folder=folder,
        tgr_config=tgr_config,
        learner=learner,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        card_url=card_url,
        heatmap=heatmap,
    )


def _percent(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) and value <= 1.0 else str(value)


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown bullets for the metrics recorded in tgr_config.json (test episodes first)."""
    lines = []
    test = metrics.get("test") if isinstance(metrics.get("test"), Mapping) else None
    for key, value in (test or {}).items():
        if isinstance(value, Mapping) and isinstance(value.get("mean"), (int, float)):
            way, shot, episodes = value.get("way"), value.get("shot"), value.get("episodes")
            what = f"{way}-way {shot}-shot" if way and shot else str(key)
            ci = value.get("ci95")
            text = f"- {what}: **{_percent(value['mean'])}**"
            if isinstance(ci, (int, float)):
                text += f" ± {ci * 100:.2f}"
            lines.append(text + (f" ({episodes} test episodes)" if episodes else ""))
    for key, value in metrics.items():
        if key == "test" and lines:
            continue
        if isinstance(value, Mapping):
            parts = [
                f"{k} {_percent(v['mean']) if isinstance(v, Mapping) and 'mean' in v else _percent(v)}"
                for k, v in value.items()
                if isinstance(v, (int, float, Mapping)) and k != "best_step"
            ]
            if parts:
                lines.append(f"- {key}: " + ", ".join(parts))
        elif isinstance(value, (int, float)):
            lines.append(f"- {key}: {_percent(value)}")
    return lines


def _member_name(member: MemberRecord, index: int) -> str:
    name = member.name or f"t{index:02d}"
    source = member.source
    if member.revision and "@" not in source:
        source = f"{source}@{str(member.revision)[:12]}"
    extra = ", ".join(str(x) for x in (source, member.architecture) if x)
    return f"{name} ({extra})" if extra else name


def model_summary_markdown(app_model: AppModel) -> str:
    """Markdown describing the model: architecture, adaptation, pool, groups, accuracy, card link."""
    model = app_model.model
    config = app_model.tgr_config
    arch = getattr(model, "architecture", type(model).__name__)
    input_size = tuple(getattr(model, "input_size", ()))
    lines = [
        f"**Meta-model:** `{app_model.model_id}`  ",
        f"**Backbone:** `{arch}`"
        + (f", input {input_size[-2]}x{input_size[-1]}" if len(input_size) == 3 else "")
        + (f", {model.feature_dim}-d features" if hasattr(model, "feature_dim") else "")
        + "  ",
    ]
    if app_model.learner == "protonet":
        lines.append("**Adaptation:** ProtoNet (class prototypes in feature space)  ")
    else:
        lines.append(f"**Adaptation:** MAML fine-tuning ({app_model.inner_steps} steps, lr {app_model.inner_lr:g})  ")
    record = RunRecord.from_dict(config)
    members = record.pool_members
    if members:
        lines += ["", f"**Teacher pool** ({len(members)} models, no training data used):", ""]
        lines += [f"- {_member_name(m, i)}" for i, m in enumerate(members)]
    if record.groups:
        lines += ["", f"**Task groups** ({len(record.groups)}, from the Fisher dissimilarity of the teachers):", ""]
        lines += [f"- G{g}: " + ", ".join(group) for g, group in enumerate(record.groups)]
    metric_lines = _metric_lines(record.metrics)
    if metric_lines:
        lines += ["", "**Few-shot accuracy** (mean ± 95% confidence interval):", "", *metric_lines]
    else:
        lines += ["", "_No few-shot accuracy recorded with this model._"]
    if app_model.card_url:
        lines += ["", f"[Model card]({app_model.card_url})"]
    return "\n".join(lines)
