"""Shared fixtures of the test suite.

The Hub test server
-------------------
``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
once, when it is first imported (``huggingface_hub.constants``; the module-level ``HfApi`` that
timm uses keeps that endpoint too). pytest imports this file before any test module, so the
address of the Hub-compatible test server (``tests/hub_server.py``) is fixed *here*: a free port on
127.0.0.1, held by a bound socket that does not listen (a request that reaches it before the
server runs is refused at once, and no other program can take the port), and the environment is
pointed at it before anything imports ``huggingface_hub``:

- ``HF_ENDPOINT`` = the server's URL: the real client, timm's ``hf-hub:`` loading and every
  subprocess (the CLI) talk to the test server; no test can reach the real Hub;
- ``HF_HOME`` = a temporary folder (so the cache, stored tokens and the token file are the
  suite's own), telemetry and update checks off, no ``HF_TOKEN`` and no offline mode inherited.

The server itself starts lazily, the first time a test asks for the ``hub_server`` fixture (or
``hub``, ``hf_token``, ``hub_cache``, which use it): tests that never touch the Hub never start it.

Tokens: :data:`WRITE_TOKEN` authenticates as user ``me`` (member of the organisations ``tgr-org``
and ``timm``, write access); :data:`OTHER_TOKEN` as ``stranger``. Tests that need a token use the
``hf_token`` fixture (sets ``HF_TOKEN``); by default there is none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import HubServer  # noqa: E402

WRITE_TOKEN = "hf_TgrHubTestWriteToken4f9c2a71"
OTHER_TOKEN = "hf_TgrHubTestOtherToken8d13e05b"

if "huggingface_hub" in sys.modules:  # pragma: no cover - a plugin imported it before us
    raise RuntimeError("huggingface_hub was imported before tests/conftest.py could point it at the test Hub")

_HF_HOME = tempfile.mkdtemp(prefix="tgr-hub-tests-hf-")
_HUB_HOST = "127.0.0.1"
# The port is reserved now (bound, not listening: connections are refused), the server started later.
_PORT_HOLDER: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_PORT_HOLDER.bind((_HUB_HOST, 0))
_HUB_PORT = _PORT_HOLDER.getsockname()[1]
HUB_URL = f"http://{_HUB_HOST}:{_HUB_PORT}"
_HUB: HubServer | None = None


def _start_hub() -> HubServer:
    """The Hub test server at :data:`HUB_URL`, started on first use (once per session)."""
    global _HUB, _PORT_HOLDER
    if _HUB is None:
        if _PORT_HOLDER is not None:
            _PORT_HOLDER.close()  # hand the reserved port over to the server
            _PORT_HOLDER = None
        server = HubServer(host=_HUB_HOST, port=_HUB_PORT)
        assert server.url == HUB_URL
        server.add_token(WRITE_TOKEN, "me", orgs=("tgr-org", "timm"))
        server.add_token(OTHER_TOKEN, "stranger")
        _HUB = server.start()
    return _HUB


for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
    os.environ.pop(_name, None)
os.environ.update({
    "HF_ENDPOINT": HUB_URL,
    "HF_HOME": _HF_HOME,
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",  # uploads take the LFS path the test server speaks (no Xet storage)
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "TGR_HUB_RETRY_WAIT": "0.05",  # keep retry tests fast; the library default is 1 s
})


# A pickle payload that provably runs code when unpickled: loading it calls ``_payload_ran``,
# which records the call. Tests that check "pickles are never unpickled" store one and then
# assert that PAYLOAD_RUNS stayed empty (and prove, with a plain ``torch.load``, that it would not).
PAYLOAD_RUNS: list[str] = []


def _payload_ran(tag: str) -> str:
    PAYLOAD_RUNS.append(tag)
    return tag


class CodeRunningPickle:
    """Unpickling this object calls ``_payload_ran(tag)`` (via ``__reduce__``): arbitrary code runs."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple:
        return (_payload_ran, (self.tag,))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Name the random test order (pytest-randomly) even under ``-q``, so that an order can be replayed."""
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"random test order: repeat it with `python -m pytest -q --randomly-seed={seed}`")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HUB is not None:
        _HUB.stop()
    if _PORT_HOLDER is not None:
        _PORT_HOLDER.close()
    shutil.rmtree(_HF_HOME, ignore_errors=True)
    shutil.rmtree(_FAKE_RUNS, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The running Hub test server (``.url``; helpers to inspect repos and inject faults), started
    by the first test that asks for it."""
    return _start_hub()


@pytest.fixture
def hub(hub_server: HubServer) -> Iterator[HubServer]:
    """The Hub test server, with injected faults cleared after the test."""
    yield hub_server
    hub_server.clear_faults()


@pytest.fixture
def hf_token(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Set ``HF_TOKEN`` to the write token of user ``me``; return it."""
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    return WRITE_TOKEN


@pytest.fixture
def hub_cache(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Hub cache for this test (in-process and for subprocesses)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


_FAKE_RUNS = Path(tempfile.mkdtemp(prefix="tgr-hub-tests-fake-runs-"))


def make_fake_run(folder: Path, *, seed: int = 0, pool_members: list[dict] | None = None, nested: bool = False) -> Path:
    """A run folder as ``tgr-hub train`` writes it (``tgr_hub.pipeline.run_tgr``), with a tiny
    untrained Conv4 meta-model: a copy of one built once per session for these arguments (building
    one, with its two figures, takes about a second; copying it, milliseconds).

    ``folder`` holds config.json, model.safetensors and tgr_config.json (smoke config, a pool of
    two Hub teachers and one local one, two groups of teacher names, test metrics as
    ``evaluate_model`` returns them, val metrics as the training loop records them), and the
    figures ``dissimilarity.png`` and ``training_curve.png``. ``nested=True`` puts the meta-model
    files in ``folder/meta_model/`` instead (the other layout tgr-hub accepts).
    """
    key = hashlib.sha256(json.dumps([seed, pool_members, nested]).encode()).hexdigest()[:16]
    template = _FAKE_RUNS / key
    if not template.exists():
        _build_fake_run(_FAKE_RUNS / f".{key}", seed=seed, pool_members=pool_members, nested=nested).rename(template)
    shutil.copytree(template, folder, dirs_exist_ok=True)
    return folder


def _build_fake_run(folder: Path, *, seed: int, pool_members: list[dict] | None, nested: bool) -> Path:
    import numpy as np

    from tgr_hub.config import load_config
    from tgr_hub.figures import plot_dissimilarity, plot_training_curves
    from tgr_hub.metamodel import create_meta_model, save_meta_model

    members = pool_members if pool_members is not None else [
        {"name": "teacher-a", "source": "tgr-org/teacher-a", "revision": "a" * 40, "architecture": "conv4",
         "num_classes": 5, "label_names": [f"latin/{c}" for c in "ABCDE"], "input_size": [3, 32, 32]},
        {"name": "resnet18.a1_in1k", "source": "hf-hub:timm/resnet18.a1_in1k@" + "b" * 40, "revision": "b" * 40,
         "architecture": "resnet18", "num_classes": 1000, "label_names": [f"n{i:08d}" for i in range(1000)],
         "input_size": [3, 224, 224]},
        {"name": "t02", "source": "./pool/t02", "revision": None, "architecture": "resnet10t", "num_classes": 5,
         "label_names": [f"greek/{c}" for c in "abgde"], "input_size": [3, 32, 32]},
    ]
    names = [m["name"] for m in members]
    groups = [names[::2], names[1::2]] if len(names) > 1 else [names]
    config = load_config(preset="smoke", values={"seed": seed}).to_dict()
    shot = {"way": 5, "query": 5, "episodes": 10, "method": "protonet"}
    tgr_config = {
        **config,
        "tgr_hub_version": "0.1.0",
        "data_source": {"dataset": "glyphs", "revision": None, "class_split": None},
        "pool_members": members,
        "groups": groups,
        "metrics": {
            "val": {"best_step": 4, "1shot": 0.40},
            "test": {"1shot": {"mean": 0.4123, "ci95": 0.0215, "std": 0.1, "shot": 1, **shot},
                     "5shot": {"mean": 0.5871, "ci95": 0.0188, "std": 0.09, "shot": 5, **shot}},
        },
        "history": {"task_loss": [[0, 1.0], [2, 0.8], [4, 0.7]], "val_acc": [[2, 0.38], [4, 0.40]]},
        "timings_s": {"recover": 1.0, "meta-train": 2.0},
        "device": "cpu",
    }
    folder.mkdir(parents=True, exist_ok=True)
    model = create_meta_model("conv4", image_size=32, seed=seed).eval()
    save_meta_model(model, folder / "meta_model" if nested else folder, tgr_config=tgr_config)
    rng = np.random.default_rng(seed)
    dissimilarity = rng.random((len(names), len(names)))
    dissimilarity = (dissimilarity + dissimilarity.T) / 2
    np.fill_diagonal(dissimilarity, 0.0)
    index_groups = [[names.index(n) for n in group] for group in groups]
    plot_dissimilarity(dissimilarity, names, index_groups, folder / "dissimilarity.png")
    plot_training_curves({"task_loss": [(0, 1.0), (2, 0.8), (4, 0.7)], "val_acc": [(2, 0.38), (4, 0.40)]},
                         folder / "training_curve.png")
    return folder


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A fabricated run folder (see :func:`make_fake_run`)."""
    return make_fake_run(tmp_path / "runs" / "fake")


@pytest.fixture
def fake_run_factory() -> Callable[..., Path]:
    """:func:`make_fake_run` itself, for tests that need several runs or the nested layout."""
    return make_fake_run


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """In-process work on one torch thread: the 2-core box also runs subprocesses, and more threads thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-teacher conv4 glyph pool (latin, greek; 1 epoch each): its repo-list.txt."""
    from tgr_hub.config import PoolBuildConfig
    from tgr_hub.teachers import make_pool

    folder = tmp_path_factory.mktemp("tiny-pool")
    make_pool(folder, PoolBuildConfig(domains=["latin", "greek"], archs=["conv4"], teachers=4, way=5, epochs=1), seed=0,
              progress=False, num_threads=1)
    return folder / "repo-list.txt"


@pytest.fixture(scope="session")
def space_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Space tests' Conv4 ProtoNet meta-model, trained once per session (see test_space.train_meta_model)."""
    from test_space import train_meta_model

    return train_meta_model(tmp_path_factory.getbasetemp() / "space-meta-model")


@pytest.fixture(scope="session")
def glyph_test():
    """The glyph benchmark's meta-test split."""
    from tgr_hub.data import load_split

    return load_split("glyphs", "test")


@pytest.fixture(scope="session")
def device() -> "torch.device":
    """The device of the device-independent numerical tests: ``TGR_HUB_TEST_DEVICE`` (default ``cpu``).

    ``TGR_HUB_TEST_DEVICE=cuda python -m pytest tests/test_igr.py tests/test_embed.py`` runs the
    IGR-vs-autograd and vmapped-Fisher-vs-loop checks on a GPU (``bench/gpu_check.py`` does). A
    requested device that is missing fails the test rather than quietly running on the CPU.
    """
    import torch

    name = os.environ.get("TGR_HUB_TEST_DEVICE", "cpu")
    chosen = torch.device(name)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"TGR_HUB_TEST_DEVICE={name} but torch sees no CUDA device")
    return chosen
