"""The typed run record (tgr_config.json): written by the pipeline, read by config, card and app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tgr_hub.config import load_config
from tgr_hub.errors import RunFolderError
from tgr_hub.run_record import RECORD_KEYS, MemberRecord, RunRecord, config_part


def test_the_pipeline_writes_a_record_every_reader_understands(fake_run: Path) -> None:
    record = RunRecord.read(fake_run / "tgr_config.json")
    assert record.tgr_hub_version == "0.1.0"
    # make_fake_run writes members without kind/repo_id (an older record): the kind comes from the source
    assert [(m.name, m.kind, m.repo_id) for m in record.pool_members] == [
        ("teacher-a", "hub", "tgr-org/teacher-a"), ("resnet18.a1_in1k", "hub", "timm/resnet18.a1_in1k"),
        ("t02", "local", None)]
    assert record.hub_teachers == ["tgr-org/teacher-a", "timm/resnet18.a1_in1k"]
    assert record.groups == [["teacher-a", "t02"], ["resnet18.a1_in1k"]]
    assert record.setting("train.learner") == "protonet" and record.setting("train.nope", 7) == 7
    assert record.metrics["test"]["1shot"]["mean"] == 0.4123
    # config loading reads only the config sections (the record's keys are not settings)
    assert load_config(path=fake_run / "tgr_config.json").seed == 0


def test_round_trip_keeps_the_format(tmp_path: Path, fake_run: Path) -> None:
    saved = json.loads((fake_run / "tgr_config.json").read_text())
    record = RunRecord.from_dict(saved)
    record.write(tmp_path / "tgr_config.json")
    again = json.loads((tmp_path / "tgr_config.json").read_text())
    # the same keys in the same order: config sections first, then the record's own keys
    assert list(again) == list(saved)
    assert list(again)[-len(RECORD_KEYS):] == list(RECORD_KEYS)
    assert config_part(again) == config_part(saved)
    for old, new in zip(saved["pool_members"], again["pool_members"]):
        assert {k: new[k] for k in old} == old  # everything an old record held is kept as it was
        assert new["kind"] in ("hub", "local")
    assert RunRecord.from_dict(again) == record
    assert record.device == "cpu"
    # a record written before the device was recorded reads None, and is still a config file
    del saved["device"]
    assert RunRecord.from_dict(saved).device is None and "device" not in config_part(again)


def test_a_member_records_its_kind_from_the_pool(tiny_pool: Path) -> None:
    from tgr_hub.pool import load_pool

    members = load_pool(tiny_pool)
    record = MemberRecord.from_member(members[0])
    assert record.kind == "local" and record.repo_id is None and record.source == "./t00"
    assert record.num_classes == 5 and record.input_size == [3, 32, 32]


def test_unreadable_records_are_run_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        RunRecord.read(tmp_path / "tgr_config.json")
    (tmp_path / "tgr_config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="not a JSON object"):
        RunRecord.read(tmp_path / "tgr_config.json")


def test_the_record_keeps_the_data_source_and_label_descriptions(tmp_path: Path, fake_run: Path) -> None:
    saved = json.loads((fake_run / "tgr_config.json").read_text())
    saved["data_source"] = {"dataset": "org/cifar-fs", "revision": "a" * 40, "class_split": "dataset"}
    saved["pool_members"][0]["label_descriptions"] = {"greek/a": "alpha"}
    record = RunRecord.from_dict(saved)
    assert record.data_source == saved["data_source"]
    assert record.pool_members[0].label_descriptions == {"greek/a": "alpha"}
    record.write(tmp_path / "tgr_config.json")
    again = json.loads((tmp_path / "tgr_config.json").read_text())
    assert again["data_source"] == saved["data_source"]
    assert again["pool_members"][0]["label_descriptions"] == {"greek/a": "alpha"}
    assert "label_descriptions" not in again["pool_members"][1]  # written only where some label has one
    # neither is a setting: a saved record still loads as a config file
    assert "data_source" not in config_part(again)
    assert load_config(path=tmp_path / "tgr_config.json").seed == 0


def test_online_recovery_settings_and_curves_round_trip(tmp_path: Path, fake_run: Path) -> None:
    saved = json.loads((fake_run / "tgr_config.json").read_text())
    saved["recover"].update({"online_every": 10, "online_start": "warm", "online_steps": 5})
    saved["history"]["recover_agreement"] = [[0, 0.8], [10, 0.9]]
    saved["history"]["recover_bn_loss"] = [[0, 2.5], [10, 1.5]]
    (tmp_path / "tgr_config.json").write_text(json.dumps(saved))
    record = RunRecord.read(tmp_path / "tgr_config.json")
    assert record.setting("recover.online_start") == "warm" and record.setting("recover.online_every") == 10
    assert record.history["recover_agreement"] == [[0, 0.8], [10, 0.9]]
    record.write(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert config_part(again) == config_part(saved) and again["history"] == saved["history"]
    cfg = load_config(path=tmp_path / "tgr_config.json")  # the record is a valid --config file
    assert (cfg.recover.online_every, cfg.recover.online_start, cfg.recover.online_steps) == (10, "warm", 5)


def test_a_record_written_before_online_recovery_still_loads(tmp_path: Path, fake_run: Path) -> None:
    saved = json.loads((fake_run / "tgr_config.json").read_text())
    for key in ("online_every", "online_start", "online_steps"):
        del saved["recover"][key]
    (tmp_path / "tgr_config.json").write_text(json.dumps(saved))
    record = RunRecord.read(tmp_path / "tgr_config.json")
    assert "online_every" not in record.config["recover"]
    cfg = load_config(path=tmp_path / "tgr_config.json")
    defaults = load_config(preset=saved["preset"])  # missing settings come from the recorded preset
    assert (cfg.recover.online_every, cfg.recover.online_start, cfg.recover.online_steps) == (
        defaults.recover.online_every, defaults.recover.online_start, defaults.recover.online_steps)
    assert cfg.recover.steps == saved["recover"]["steps"]  # the rest of the section is read as written
