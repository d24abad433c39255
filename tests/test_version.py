"""The version: one source (tgr_hub.__version__), shown by `tgr-hub --version`, recorded in cards."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import tgr_hub
from tgr_hub.card import build_model_card
from tgr_hub.cli.main import main


def test_version_flag_prints_the_version_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"tgr-hub {tgr_hub.__version__} (python {platform.python_version()}, "
                   f"torch {version('torch')}, timm {version('timm')})")


def test_the_installed_metadata_has_the_package_version() -> None:
    # pyproject.toml reads its version from tgr_hub.__version__, so the two cannot drift apart
    assert version("tgr-hub") == tgr_hub.__version__


def test_the_card_names_the_version_that_made_the_run(fake_run: Path) -> None:
    record_path = fake_run / "tgr_config.json"
    record = json.loads(record_path.read_text())
    assert f"*Made with tgr-hub {record['tgr_hub_version']}.*" in str(build_model_card(fake_run, "me/meta"))
    record["tgr_hub_version"] = "0.0.9"  # an older release made this run
    record_path.write_text(json.dumps(record))
    assert "*Made with tgr-hub 0.0.9.*" in str(build_model_card(fake_run, "me/meta"))


REPO = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> dict[str, Any]:
    """``{name: packaging Requirement}`` of the installed distribution (pyproject.toml's dependencies)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    found = [Requirement(r) for r in requires("tgr-hub") or []]
    return {r.name.lower(): r for r in found if r.marker is None}  # without the [dev] extra's


def test_the_space_pins_exact_versions_that_the_library_accepts() -> None:
    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement
    from packaging.version import Version

    accepted = _pyproject_requirements()
    pins = {}
    for line in (REPO / "spaces_app" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
            continue
        requirement = Requirement(line)
        [spec] = requirement.specifier  # one exact pin per package: a Space installs what was tested
        assert spec.operator == "==", line
        pins[requirement.name.lower()] = Version(spec.version)
    for name, pinned in pins.items():
        if name in accepted:
            assert accepted[name].specifier.contains(pinned), (name, pinned, accepted[name])
    # torchvision 0.N+15 is built for torch 2.N: the pinned pair must match
    assert pins["torch"].major == 2 and pins["torchvision"].minor == pins["torch"].minor + 15, pins
    sdk = SpaceCard((REPO / "spaces_app" / "README.md").read_text()).data.get("sdk_version")
    assert sdk is not None and accepted["gradio"].specifier.contains(Version(str(sdk))), sdk
    assert f"({sdk})" in (REPO / "spaces_app" / "README.md").read_text()  # the text says the same version
