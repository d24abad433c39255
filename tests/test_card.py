"""Model cards and the Space README, built offline from a fabricated run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, SpaceCard

from tgr_hub.config import load_config
from tgr_hub.card import (
    META_MODEL_TAGS,
    build_model_card,
    build_space_readme,
    build_teacher_card,
    eval_results_from_metrics,
)
from tgr_hub.errors import RunFolderError
from tgr_hub.run_record import RunRecord


def _reparsed(card: ModelCard) -> ModelCard:
    """The card as a reader gets it: its README text parsed again."""
    return ModelCard(str(card))


def test_metadata_block(fake_run: Path) -> None:
    card = _reparsed(build_model_card(fake_run, "me/meta", license="mit"))
    data = card.data
    assert data.library_name == "timm"
    assert data.license == "mit"
    assert {"few-shot", "meta-learning", "data-free", "tgr", "timm"} <= set(data.tags)
    assert data.pipeline_tag == "image-feature-extraction"
    # Hub teachers only, without the revision; the local folder ./pool/t02 is not a base model
    assert data.base_model == ["tgr-org/teacher-a", "timm/resnet18.a1_in1k"]
    # evaluation results: the two meta-test settings, as percentages (0.4123 -> 41.23)
    results = {r.dataset_config: r for r in data.eval_results}
    assert set(results) == {"5-way-1-shot", "5-way-5-shot"}
    assert results["5-way-1-shot"].metric_value == pytest.approx(41.23)
    assert results["5-way-5-shot"].metric_value == pytest.approx(58.71)
    one = results["5-way-1-shot"]
    assert (one.task_type, one.dataset_type, one.dataset_split, one.metric_type) == (
        "image-classification", "glyphs", "test", "accuracy")
    assert "±2.15 95% CI" in one.metric_name and "10 episodes" in one.metric_name
    assert data.model_name == "meta"


def test_body_explains_the_model(fake_run: Path) -> None:
    text = card_text = str(build_model_card(fake_run, "me/meta", space_id="me/meta-demo"))
    body = text.split("\n---\n", 1)[1]
    for heading in ("## Evaluation", "## How it was made", "## How to use", "## Limitations", "## Citation"):
        assert heading in body
    # pool table: one row per teacher with the pinned commit (first 12 hex) or "local"
    rows = [line for line in body.splitlines() if re.match(r"^\s*\| \d+ \|", line)]
    assert len(rows) == 3
    assert "`aaaaaaaaaaaa`" in rows[0] and "[tgr-org/teacher-a](https://huggingface.co/tgr-org/teacher-a)" in rows[0]
    assert "`bbbbbbbbbbbb`" in rows[1] and "| 1000 " in rows[1] and "224×224" in rows[1]
    assert "`./pool/t02`" in rows[2] and "| local |" in rows[2]
    assert "group 0: teacher-a, t02" in body and "group 1: resnet18.a1_in1k" in body
    assert "![Dissimilarity" in body and "(dissimilarity.png)" in body and "(training_curve.png)" in body
    assert 'timm.create_model("hf-hub:me/meta", pretrained=True)' in body
    assert "ProtoNet().adapt(meta, support_x, support_y)" in body
    assert "https://huggingface.co/spaces/me/meta-demo" in body
    assert "[1, 128]" in body  # conv4's feature size, from config.json
    # results table: hand-converted percentages and CIs
    assert "| meta-test | 5-way 1-shot | 41.23 | ± 2.15 | 10 |" in body
    assert "| meta-validation | 5-way 1-shot | 40.00 |  | 4 |" in body  # smoke: 4 validation episodes
    # the full config block is the run config without the run's results
    config_block = re.search(r"```json\n(.*?)\n```", body, flags=re.DOTALL).group(1)
    config = json.loads(config_block)
    saved = json.loads((fake_run / "tgr_config.json").read_text())
    assert config == {k: v for k, v in saved.items()
                      if k not in ("tgr_hub_version", "data_source", "pool_members", "groups", "metrics", "history", "timings_s",
                                   "device")}
    assert config == json.loads(json.dumps(load_config(path=fake_run / "tgr_config.json").to_dict()))  # --config of it
    assert card_text.count("---\n") >= 2


def test_nested_layout_and_missing_pieces(tmp_path: Path, fake_run_factory) -> None:
    run = fake_run_factory(tmp_path / "nested", nested=True, pool_members=[
        {"name": "t00", "source": "./t00", "revision": None, "architecture": "conv4", "num_classes": 5,
         "label_names": list("abcde"), "input_size": [3, 32, 32]}])
    (run / "training_curve.png").unlink()
    saved = json.loads((run / "meta_model" / "tgr_config.json").read_text())
    saved["metrics"] = {}
    (run / "meta_model" / "tgr_config.json").write_text(json.dumps(saved))
    card = _reparsed(build_model_card(run, "me/nested"))
    assert card.data.base_model is None  # no Hub teacher
    assert card.data.eval_results is None
    assert "No evaluation was recorded" in card.text
    assert "(training_curve.png)" not in card.text and "(dissimilarity.png)" in card.text
    with pytest.raises(RunFolderError):
        build_model_card(tmp_path / "nowhere", "me/x")


def test_metric_formats() -> None:
    tgr = {"eval": {"way": 5, "episodes": 600}, "data": {"dataset": "me/my-dataset"},
           "metrics": {"test": {"1-shot": {"mean": 61.5, "ci95": 0.8, "way": 10},  # already percent
                                "5shot": 0.75, "best_step": 3, "notes": "x"}}}
    results = {r.dataset_config: r for r in eval_results_from_metrics(RunRecord.from_dict(tgr))}
    assert results["10-way-1-shot"].metric_value == pytest.approx(61.5)
    assert results["5-way-5-shot"].metric_value == pytest.approx(75.0)
    assert results["5-way-5-shot"].dataset_type == "me/my-dataset"
    assert "600 episodes" in results["5-way-5-shot"].metric_name


def test_hub_teachers_from_pool_sources() -> None:
    tgr = {"pool_members": [
        {"source": "org/a"}, {"source": "hf-hub:org/b@v1"}, {"source": "org/a@main"},
        {"source": "./org/c"}, {"source": "local-dir:/abs/d"}, {"source": "/abs/e/f"}, {"source": "~/x/y"},
        {"source": "whatever", "repo_id": "org/g"}, {"source": "org/h", "kind": "local"},
    ]}
    assert RunRecord.from_dict(tgr).hub_teachers == ["org/a", "org/b", "org/g"]


def test_teacher_card(tmp_path: Path) -> None:
    import timm

    import tgr_hub  # noqa: F401  registers conv4
    from tgr_hub.models.hub_layout import save_timm_folder

    model = timm.create_model("conv4", num_classes=3)
    save_timm_folder(model, tmp_path / "t00", architecture="conv4", num_classes=3, label_names=["x/1", "x/2", "x/3"],
                     pretrained_cfg={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3},
                     extra={"tgr_teacher": {"report": {"domain": "latin", "heldout_accuracy": 0.875}}})
    card = _reparsed(build_teacher_card(tmp_path / "t00", "tgr-org/pool-t00"))
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert "tgr" in card.data.tags
    assert "`x/1`, `x/2`, `x/3`" in card.text
    assert "| Held-out accuracy | 87.5% |" in card.text and "| Domain | latin |" in card.text
    assert 'timm.create_model("hf-hub:tgr-org/pool-t00", pretrained=True)' in card.text


def test_space_readme_front_matter(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "README.md").write_text("---\ntitle: My demo\nemoji: 🧪\nsdk: gradio\napp_file: app.py\n"
                                   "models:\n- old/model\n---\n\n# Hello\n\nSome words.\n")
    card = SpaceCard(build_space_readme(app, "me/demo", "me/meta"))
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == ["me/meta"]
    assert card.data.title == "My demo" and card.data.get("emoji") == "🧪"
    assert "Some words." in card.text and "`me/meta`" in card.text
    bare = SpaceCard(build_space_readme(None, "me/demo", "me/meta"))
    assert bare.data.sdk == "gradio" and bare.data.models == ["me/meta"] and bare.data.title
    assert set(META_MODEL_TAGS) >= {"few-shot", "tgr"}
