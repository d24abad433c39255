"""The ``tgr-hub`` entry point: every subcommand registered, and Ctrl-C turned into a resume hint."""

from __future__ import annotations

import pytest

import tgr_hub.cli.cmd_push as cmd_push
import tgr_hub.cli.cmd_train as cmd_train
from tgr_hub.cli.main import COMMANDS, build_parser, main


def test_every_command_module_is_registered() -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(name.replace("_", "-") for name in COMMANDS)


def _interrupt(args: object) -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize(("module", "argv", "hint"), [
    (cmd_train, ["train", "--pool", "p.txt", "--out", "runs/x"], "rerun it with --resume"),
    (cmd_push, ["push", "runs/x", "--repo", "me/x"], "leaves the repository as it was"),
])
def test_ctrl_c_exits_130_with_the_commands_resume_hint(monkeypatch, capsys, module, argv, hint) -> None:
    monkeypatch.setattr(module, "run", _interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgr-hub: interrupted; ") and hint in err and "\n" not in err


def test_an_error_raised_while_a_ctrl_c_is_handled_counts_as_the_interrupt(monkeypatch, capsys) -> None:
    import os
    import signal

    def swallowed(args) -> None:  # a native extension that turns the KeyboardInterrupt into its own error
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None

    monkeypatch.setattr(cmd_train, "run", swallowed)
    assert main(["train", "--pool", "p.txt", "--out", "runs/x"]) == 130
    assert capsys.readouterr().err.strip().startswith("tgr-hub: interrupted; ")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored once main returns

    def fails(args) -> None:  # without a Ctrl-C, an error stays an error
        raise ValueError("a bug")

    monkeypatch.setattr(cmd_train, "run", fails)
    with pytest.raises(ValueError, match="a bug"):
        main(["train", "--pool", "p.txt", "--out", "runs/x"])


@pytest.mark.parametrize("command", [
    ["train", "--pool", "p.txt", "--out", "runs/x"], ["make-pool", "--out", "pool"], ["evaluate", "runs/x"],
    ["benchmark"],
])
def test_every_data_command_takes_the_same_data_flags(command, tmp_path) -> None:
    from tgr_hub.cli import cmd_benchmark
    from tgr_hub.cli.common import config_from_args, data_values

    split = tmp_path / "split.json"
    args = build_parser().parse_args([*command, "--dataset", "org/name@v1", "--class-split", str(split),
                                      "--cache-dir", str(tmp_path / "cache"), "--preset", "smoke"])
    expected = {"dataset": "org/name@v1", "class_split": str(split), "cache_dir": str(tmp_path / "cache")}
    assert data_values(args) == expected
    cfg = (cmd_benchmark.spec_from_args(args).cfg if command[0] == "benchmark"
           else config_from_args(args, {"data": data_values(args)}))
    assert {key: getattr(cfg.data, key) for key in expected} == expected
    # flags left out leave the config's values alone
    plain = build_parser().parse_args([*command, "--preset", "smoke"])
    assert data_values(plain) == {}
