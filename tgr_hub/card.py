"""Model cards (``README.md``) for meta-models and teachers, and the Space's README.

Cards are built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` and
:class:`~huggingface_hub.ModelCardData` from what a run folder holds: ``tgr_config.json``
(run config, pinned pool, groups, metrics), the meta-model's ``config.json`` and its figures.
The metadata block carries ``library_name: timm``, the license, the tags, the
``pipeline_tag``, ``base_model`` (the Hub teachers the meta-model was learned from) and the
evaluation results as ``model-index``; the body explains what the model is, how it was made,
how to load and adapt it, and its limitations. Nothing here touches the network, and no
token is ever read.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData

from .run_record import RunRecord

__all__ = [
    "META_MODEL_TAGS",
    "build_model_card",
    "build_space_readme",
    "build_teacher_card",
    "eval_results_from_metrics",
    "model_card_data",
]

META_MODEL_TAGS = ["few-shot", "meta-learning", "data-free", "tgr", "timm", "image-feature-extraction"]
# A meta-model maps an image to a feature vector; classes come from a few examples at use time.
META_MODEL_PIPELINE = "image-feature-extraction"
PAPER = "Task Groupings Regularization: Data-Free Meta-Learning with Heterogeneous Pre-trained Models"
PAPER_URL = "https://arxiv.org/abs/2405.16560"
_SHOT = re.compile(r"^(\d+)[-_ ]?shots?$")

BUILT_IN_DATASETS = {"glyphs": "tgr-hub glyphs (built-in synthetic few-shot benchmark)"}

_META_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ intro }}

{{ facts }}

## Evaluation

{{ results }}

## How it was made

Nothing of the teachers' training data was used. The meta-model was learned in four stages
(see [TGR]({{ paper_url }}) and the full settings in [`tgr_config.json`](tgr_config.json)):

1. **Pool.** {{ pool_count }} pre-trained classifiers, each pinned to the commit it resolved to:

{{ pool_table }}

2. **Pseudo-tasks by model inversion.** For each teacher, a generator synthesised images that the
   teacher classifies confidently and whose BatchNorm statistics match the teacher's, one
   pseudo-task per teacher and class subset (kept in a memory bank and replayed).
3. **Task groups.** Each teacher's pseudo-task was embedded with the diagonal Fisher information
   of a probe network; the pairwise dissimilarity of the embeddings was split by spectral
   clustering into groups of *dissimilar* teachers:

{{ groups }}

{{ heatmap }}

4. **Meta-training with implicit gradient regularisation.** At each step, tasks from one group
   were combined so that the update favours directions on which their gradients agree (IGR),
   alternating with replay episodes that mix classes across teachers. The best meta-validation
   checkpoint was kept.

{{ curve }}

Main settings:

{{ config_table }}

<details>
<summary>Full run config</summary>

```json
{{ config_json }}
```

</details>

## How to use

### As a timm feature extractor

```python
import timm
import torch
import tgr_hub  # noqa: F401  registers tgr-hub's backbones (e.g. conv4) with timm

model = timm.create_model("hf-hub:{{ repo_id }}", pretrained=True).eval()
config = timm.data.resolve_data_config({}, model=model)   # input size, mean, std
transform = timm.data.create_transform(**config)
with torch.no_grad():
    features = model(transform(image).unsqueeze(0))        # [1, {{ feature_dim }}]
```

### Adapt it to your own classes with tgr-hub

```python
import torch
from tgr_hub.hub import download_meta_model
from tgr_hub.learners import ProtoNet
from tgr_hub.metamodel import load_meta_model

meta = load_meta_model(download_meta_model("{{ repo_id }}"))   # images in [0, 1]; resizes and normalises inside
# support_x: [N*K, 3, H, W] float in [0, 1], support_y: [N*K] labels 0..N-1, query_x: [Q, 3, H, W]
classifier = ProtoNet().adapt(meta, support_x, support_y)
probabilities = classifier.predict_proba(query_x)           # [Q, N]
```

Or from the command line: `tgr-hub demo {{ repo_id }}` starts the few-shot demo locally.
{{ space_line }}

### The demo's `classify` API

The demo app (a Space, or `tgr-hub demo`) has a named endpoint `classify` that adapts to
labelled support images and classifies query images in one stateless call:

```python
from gradio_client import Client, handle_file

client = Client("OWNER/SPACE")  # or the local URL printed by `tgr-hub demo {{ repo_id }}`
result = client.predict(
    [handle_file("a1.png"), handle_file("a2.png"), handle_file("b1.png")],  # support images
    "a, a, b",                                                             # one label per support image
    [handle_file("query.png")],                                            # images to classify
    api_name="/classify",
)
# {"classes": [...], "predictions": [{"image", "label", "confidence", "probabilities": {...}}], "notes": [...]}
```

## Limitations

- The meta-model learned only from what its {{ pool_count }} teachers knew, through synthetic
  images; it inherits their biases and blind spots, and it is evaluated here on
  {{ dataset_name }} only. Expect lower accuracy on images unlike the teachers' domains.
- It is a small backbone (`{{ architecture }}`, input {{ input_size }}) for few-shot learning;
  it is not an ImageNet-scale feature extractor, and other input sizes are resized.
- Few-shot predictions from 1 to 5 examples per class are uncertain by nature: check the
  confidence intervals above, and do not use it for decisions about people or safety.

## Citation

```bibtex
@inproceedings{wei2024tgr,
  title     = { {{- paper -}} },
  author    = {Wei, Yongxian and others},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}
```

*Made with tgr-hub {{ version }}.*
"""

_TEACHER_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A {{ num_classes }}-way `{{ architecture }}` image classifier (timm), one *teacher* of a
tgr-hub pool: tgr-hub learns few-shot meta-models from pools of such
classifiers without their training data.

| | |
|---|---|
| Architecture | `{{ architecture }}` ({{ num_classes }} classes) |
| Input | {{ input_size }}, mean {{ mean }}, std {{ std }} |
{{ extra_rows }}
Classes: {{ labels }}

## How to use

```python
import timm
import tgr_hub  # noqa: F401  registers tgr-hub's backbones (e.g. conv4) with timm

model = timm.create_model("hf-hub:{{ repo_id }}", pretrained=True).eval()
```

As a teacher, list it in a pool file (`{{ repo_id }}@COMMIT` pins it) for `tgr-hub train --pool`.

## Limitations

A small classifier trained for a few classes only; it is meant as a teacher for tgr-hub, not
for use on its own.
"""


# --- reading a run ------------------------------------------------------------------------


def _run_files(run_or_model_folder: str | Path) -> tuple[Path, RunRecord, dict[str, Any], list[str]]:
    """``(model folder, run record, timm config, figure names)`` of a run or meta-model folder.

    A folder without ``tgr_config.json`` gives an empty record (a card without the run's details);
    one that cannot be read is a :class:`RunFolderError`.
    """
    from .metamodel import TGR_CONFIG_NAME, find_meta_model_folder
    from .models.hub_layout import read_timm_config

    run = Path(run_or_model_folder)
    model_folder = find_meta_model_folder(run)
    found = [p for p in (model_folder / TGR_CONFIG_NAME, run / TGR_CONFIG_NAME) if p.is_file()]
    record = RunRecord.read(found[0]) if found else RunRecord(config={})
    config = read_timm_config(model_folder)
    figures = sorted(
        {
            p.name
            for folder in (model_folder, run)
            for pattern in ("*.png", "figures/*.png")
            for p in folder.glob(pattern)
            if ".tmp" not in p.name
        }
    )
    return model_folder, record, config, figures


def _pct(value: Any) -> float:
    """Accuracy as a percentage (metrics may be stored as fractions or percentages)."""
    value = float(value)
    return 100.0 * value if abs(value) <= 1.0 else value


def _shot_results(split_metrics: Any) -> list[tuple[int, float, float | None, dict[str, Any]]]:
    """``(shot, mean %, ci95 %, raw)`` for each ``"Kshot"`` entry of one split's metrics.

    An entry is either ``{"mean", "ci95", "way", "episodes", ...}`` (what
    :func:`tgr_hub.evaluate.evaluate_model` returns) or a bare accuracy.
    """
    rows: list[tuple[int, float, float | None, dict[str, Any]]] = []
    if not isinstance(split_metrics, dict):
        return rows
    for key, value in split_metrics.items():
        match = _SHOT.match(str(key).strip().lower())
        if not match:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {"mean": value}
        if not isinstance(value, dict) or not isinstance(value.get("mean"), (int, float)):
            continue
        ci = value.get("ci95")
        rows.append((int(match.group(1)), _pct(value["mean"]), _pct(ci) if ci is not None else None, value))
    return sorted(rows, key=lambda row: row[0])


def _dataset(record: RunRecord) -> tuple[str, str]:
    dataset = str(record.setting("data.dataset") or "glyphs")
    return dataset, BUILT_IN_DATASETS.get(dataset, dataset)


def eval_results_from_metrics(record: RunRecord, splits: tuple[str, ...] = ("test",)) -> list[EvalResult]:
    """One :class:`EvalResult` per split and shot: N-way K-shot accuracy in percent, with its CI."""
    dataset, dataset_name = _dataset(record)
    eval_cfg = record.setting("eval") or {}
    metrics = record.metrics
    results = []
    for split in splits:
        for shot, mean, ci, raw in _shot_results(metrics.get(split)):
            way = int(raw.get("way") or eval_cfg.get("way") or 5)
            episodes = raw.get("episodes") or eval_cfg.get("episodes")
            name = f"{way}-way {shot}-shot accuracy (%)"
            if ci is not None:
                name += f", ±{ci:.2f} 95% CI"
            if episodes:
                name += f" over {episodes} episodes"
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name=f"{way}-way {shot}-shot image classification",
                    dataset_type=dataset,
                    dataset_name=f"{dataset_name}, meta-{split} classes",
                    dataset_config=f"{way}-way-{shot}-shot",
                    dataset_split=split,
                    metric_type="accuracy",
                    metric_value=round(mean, 2),
                    metric_name=name,
                )
            )
    return results


def model_card_data(record: RunRecord, repo_id: str, *, license: str = "apache-2.0") -> ModelCardData:
    """The metadata block of a meta-model card."""
    base = record.hub_teachers
    return ModelCardData(
        library_name="timm",
        license=license,
        tags=list(META_MODEL_TAGS),
        pipeline_tag=META_MODEL_PIPELINE,
        base_model=base or None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results_from_metrics(record) or None,
        metrics=["accuracy"],
    )


# --- body sections ------------------------------------------------------------------------


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _size(config: dict[str, Any]) -> str:
    size = (config.get("pretrained_cfg") or {}).get("input_size")
    return f"{size[1]}×{size[2]}" if isinstance(size, (list, tuple)) and len(size) == 3 else "?"


def _pool_table(record: RunRecord) -> str:
    members = record.pool_members
    if not members:
        return "   (the pool is not recorded in tgr_config.json)"
    lines = [
        "   | # | teacher | source | commit | architecture | classes | input |",
        "   |---|---|---|---|---|---|---|",
    ]
    for index, member in enumerate(members):
        repo_id = member.repo_id
        source = f"[{_md(repo_id)}](https://huggingface.co/{repo_id})" if repo_id else f"`{_md(member.source)}`"
        commit = f"`{str(member.revision)[:12]}`" if member.revision else "local"
        labels = member.label_names
        classes: Any = member.num_classes
        if labels:
            described = member.label_descriptions
            shown = ", ".join(
                f"{label} ({described[label]})" if described.get(label) else str(label) for label in labels[:5]
            ) + (", …" if len(labels) > 5 else "")
            classes = f"{classes} ({_md(shown)})"
        size = member.input_size
        size_text = f"{size[-2]}×{size[-1]}" if len(size) >= 2 else ""
        lines.append(
            f"   | {index} | {_md(member.name or index)} | {source} | {commit} | "
            f"`{_md(member.architecture)}` | {classes} | {size_text} |"
        )
    return "\n".join(lines)


def _groups(record: RunRecord) -> str:
    lines = [f"   - group {index}: {', '.join(group)}" for index, group in enumerate(record.groups)]
    return "\n".join(lines) if lines else "   - (no grouping recorded)"


def _results(record: RunRecord) -> str:
    metrics = record.metrics
    eval_cfg = record.setting("eval") or {}
    _, dataset_name = _dataset(record)
    lines = []
    for split, title in (("test", "meta-test"), ("val", "meta-validation")):
        for shot, mean, ci, raw in _shot_results(metrics.get(split)):
            way = int(raw.get("way") or eval_cfg.get("way") or 5)
            default_episodes = eval_cfg.get("episodes") if split == "test" else record.setting("train.val_episodes")
            episodes = raw.get("episodes") or default_episodes or ""
            ci_text = f"± {ci:.2f}" if ci is not None else ""
            lines.append(f"| {title} | {way}-way {shot}-shot | {mean:.2f} | {ci_text} | {episodes} |")
    if not lines:
        return "No evaluation was recorded for this model."
    head = [
        f"Accuracy (%) on few-shot episodes of unseen classes of {dataset_name}, with 95% confidence intervals:",
        "",
        "| split | task | accuracy | 95% CI | episodes |",
        "|---|---|---|---|---|",
    ]
    baselines = metrics.get("baselines")
    tail = []
    if isinstance(baselines, dict) and baselines:
        tail = [
            "",
            "Baselines on the same episodes:",
            "",
            "| baseline | task | accuracy | 95% CI |",
            "|---|---|---|---|",
        ]
        for name, values in baselines.items():
            for shot, mean, ci, _ in _shot_results(values if isinstance(values, dict) else {}):
                tail.append(f"| {_md(name)} | {shot}-shot | {mean:.2f} | {f'± {ci:.2f}' if ci is not None else ''} |")
    return "\n".join(head + lines + tail)


def _config_table(record: RunRecord) -> str:
    keys = [
        ("seed", "seed"),
        ("preset", "preset"),
        ("data.dataset", "benchmark"),
        ("data.image_size", "image size"),
        ("train.arch", "backbone"),
        ("train.learner", "learner"),
        ("train.iterations", "iterations"),
        ("train.teachers_per_step", "teachers per step"),
        ("train.beta", "IGR β"),
        ("train.igr_order", "IGR order"),
        ("train.lr", "learning rate"),
        ("train.igr_loss", "IGR task loss"),
        ("train.distill_weight", "distillation weight"),
        ("train.replay", "replay"),
        ("group.strategy", "grouping"),
        ("group.num_groups", "groups"),
        ("embed.method", "task embedding"),
        ("recover.steps", "inversion steps"),
        ("recover.images_per_class", "images per class"),
        ("eval.way", "eval way"),
        ("eval.shots", "eval shots"),
        ("eval.episodes", "eval episodes"),
    ]
    rows = ["| setting | value |", "|---|---|"]
    for dotted, title in keys:
        node = record.setting(dotted)
        if node is not None:
            rows.append(f"| {title} | `{_md(json.dumps(node) if isinstance(node, (list, dict, bool)) else node)}` |")
    return "\n".join(rows)


def _config_json(record: RunRecord) -> str:
    return json.dumps(record.config, indent=2, default=str)


def _image(figures: list[str], name: str, alt: str) -> str:
    return f"![{alt}]({name})" if name in figures else ""


def build_model_card(
    run_or_model_folder: str | Path,
    repo_id: str,
    *,
    space_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The model card of a meta-model repository, from a run (or meta-model) folder.

    Args:
        run_or_model_folder: the run folder (``runs/NAME``) or the meta-model folder.
        repo_id: the repository the card is for (used in the code examples).
        space_id: the demo Space, linked from the card when given.
        license: license identifier.
    """
    from . import __version__

    model_folder, record, config, figures = _run_files(run_or_model_folder)
    architecture = str(config.get("architecture") or record.setting("train.arch") or "?")
    feature_dim = config.get("num_features", "D")
    members = record.pool_members
    dataset, dataset_name = _dataset(record)
    learner = record.setting("train.learner", "protonet")
    facts = "\n".join(
        [
            "| | |",
            "|---|---|",
            f"| Backbone | `{architecture}` (timm), {feature_dim}-d features, input {_size(config)} |",
            f"| Learned from | {len(members)} pre-trained classifiers, without any of their training data |",
            f"| Method | TGR: task groupings regularization ([Wei et al., ICML 2024]({PAPER_URL})) |",
            f"| Adaptation | {learner} on 1 to 5 labelled examples per class |",
            f"| Evaluated on | {dataset_name} |",
        ]
        + ([f"| Demo | [{space_id}](https://huggingface.co/spaces/{space_id}) |"] if space_id else [])
    )
    intro = (
        f"A few-shot image **meta-model**: given a handful of labelled images of classes it has never "
        f"seen, it adapts into a classifier for them. It was learned *data-free* by "
        f"tgr-hub from a pool of {len(members)} pre-trained classifiers "
        f'("teachers"), using Task Groupings Regularization (TGR). It is a timm `{architecture}` '
        f"backbone without a classification head: it maps an image to a {feature_dim}-d feature vector."
    )
    space_line = (
        (
            f"\nTry it in the browser: [{space_id}](https://huggingface.co/spaces/{space_id}) (define a few "
            "classes with your own images and classify new ones)."
        )
        if space_id
        else ""
    )
    return ModelCard.from_template(
        model_card_data(record, repo_id, license=license),
        template_str=_META_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        intro=intro,
        facts=facts,
        results=_results(record),
        pool_count=len(members),
        pool_table=_pool_table(record),
        groups=_groups(record),
        heatmap=_image(
            figures, "dissimilarity.png", "Dissimilarity of the teachers' tasks, ordered and outlined by group"
        ),
        curve=_image(figures, "training_curve.png", "Meta-training losses and meta-validation accuracy"),
        config_table=_config_table(record),
        config_json=_config_json(record),
        feature_dim=feature_dim,
        architecture=architecture,
        input_size=_size(config),
        dataset_name=dataset_name if dataset else "the built-in benchmark",
        space_line=space_line,
        paper=PAPER,
        paper_url=PAPER_URL,
        # the version that made the run (its record), not the one that happens to write the card
        version=record.tgr_hub_version or __version__,
    )


def build_teacher_card(
    folder: str | Path,
    repo_id: str,
    *,
    config: dict[str, Any] | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The model card of one teacher repository (a timm classifier in a tgr-hub pool)."""
    from .models.hub_layout import read_timm_config

    config = config or read_timm_config(folder)
    cfg = config.get("pretrained_cfg") or {}
    labels = config.get("label_names") or []
    extra = config.get("tgr_teacher") or {}
    report = extra.get("report") or {} if isinstance(extra, dict) else {}
    rows = []
    if report.get("domain"):
        rows.append(f"| Domain | {_md(report['domain'])} |")
    if report.get("heldout_accuracy") is not None:
        rows.append(f"| Held-out accuracy | {_pct(report['heldout_accuracy']):.1f}% |")
    data = ModelCardData(
        library_name="timm",
        license=license,
        pipeline_tag="image-classification",
        tags=["timm", "image-classification", "tgr", "tgr-teacher"],
    )
    return ModelCard.from_template(
        data,
        template_str=_TEACHER_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        architecture=config.get("architecture", "?"),
        num_classes=config.get("num_classes", len(labels)),
        input_size=_size(config),
        mean=cfg.get("mean"),
        std=cfg.get("std"),
        extra_rows="\n".join(rows),
        labels=", ".join(f"`{_md(label)}`" for label in labels) if labels else "(not named)",
    )


def build_space_readme(app_dir: str | Path | None, space_id: str, model_id: str, *, license: str = "apache-2.0") -> str:
    """The Space's ``README.md``: Gradio front matter pointing at ``model_id``, then the app's text.

    The front matter says ``sdk: gradio``, ``app_file: app.py`` and ``models: [model_id]``; other
    keys of ``app_dir/README.md`` (title, emoji, colours...) are kept, and so is its body.
    """
    body = ""
    existing: dict[str, Any] = {}
    readme = Path(app_dir) / "README.md" if app_dir is not None else None
    if readme is not None and readme.is_file():
        card = SpaceCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True)
        existing = card.data.to_dict()
        body = card.text.strip()
    try:
        sdk_version: str | None = version("gradio")
    except PackageNotFoundError:  # gradio not installed here: let the Space pick its default
        sdk_version = None
    existing.update(
        sdk="gradio",
        app_file="app.py",
        models=[model_id],
        license=existing.get("license") or license,
        title=existing.get("title") or f"{model_id.split('/')[-1]} few-shot demo",
        emoji=existing.get("emoji") or "🔠",
        colorFrom=existing.get("colorFrom") or "indigo",
        colorTo=existing.get("colorTo") or "blue",
        pinned=existing.get("pinned", False),
        tags=sorted(set(existing.get("tags") or []) | {"few-shot", "tgr", "meta-learning"}),
        short_description=existing.get("short_description") or "Few-shot image classification with a TGR meta-model",
    )
    if sdk_version and not existing.get("sdk_version"):
        existing["sdk_version"] = sdk_version
    data = SpaceCardData(**existing)
    body = body or (
        f"# Few-shot classification with `{model_id}`\n\n"
        f"Define a few classes with your own images and classify new ones with the meta-model "
        f"[{model_id}](https://huggingface.co/{model_id})."
    )
    body += (
        f"\n\nThis Space loads the meta-model `{model_id}` (Space variable `TGR_MODEL_ID`, also in "
        "`tgr_model_id.txt`).\n"
    )
    return f"---\n{data.to_yaml()}\n---\n\n{body}"
