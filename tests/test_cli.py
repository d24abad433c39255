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
