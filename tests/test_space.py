"""The Space: the library side (tgr_hub.fewshot_app) and the Gradio app driven through gradio_client.

A Conv4 meta-model is trained here by ProtoNet on glyph meta-train episodes (about 20 s),
saved in the meta-model layout, and served by ``spaces_app/app.py`` exactly as a Space
runs it (``python app.py`` with ``TGR_MODEL_ID``) on 127.0.0.1. Its ``classify`` endpoint
is called through ``gradio_client`` on fixed 5-way 5-shot glyph test episodes and on bad
input. The app process gets an HTTP(S) proxy that records every request: nothing may go
through it (no telemetry, no version check, no Hub call for a local model).

The helpers here (training, launching) are shared with ``test_space_browser.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tgr_hub.errors import ImageInputError
from tgr_hub.fewshot_app import (
    DEFAULT_LIMITS,
    FewShotSession,
    calibrate_batchnorm,
    classify_episode,
    group_by_label,
    load_app_model,
    load_image,
    model_summary_markdown,
    parse_labels,
)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "spaces_app" / "app.py"

# The fixed evaluation: episodes 0..EPISODES-1 of EpisodeSampler(glyph test, 5, 5, QUERY, SEED).
WAY, SHOT, QUERY, EPISODES, SEED = 5, 5, 5, 8, 2024
TRAIN_STEPS = 100  # 10-way 5-shot ProtoNet episodes (~20 s): ~97% 5-way 5-shot glyph test accuracy


# --- the meta-model trained in the tests ---------------------------------------------------------


def train_meta_model(folder: Path) -> Path:
    """Train (once per session: reused if ``folder`` holds it) a Conv4 ProtoNet meta-model and save it.

    The folder gets the meta-model files, a ``tgr_config.json`` like a run's (learner, a
    small made-up pool with groups, the measured 5-way test accuracy) and ``dissimilarity.png``.
    """
    if (folder / "model.safetensors").is_file():
        return folder
    from tgr_hub.data import EpisodeSampler, load_split
    from tgr_hub.evaluate import evaluate_model
    from tgr_hub.figures import plot_dissimilarity
    from tgr_hub.learners import ProtoNet
    from tgr_hub.metamodel import create_meta_model, save_meta_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # why: small convolutions on 2 shared cores run ~5x faster on one thread
    try:
        train = load_split("glyphs", "train")
        model = create_meta_model("conv4", image_size=32, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        learner = ProtoNet()
        model.train()
        sampler = EpisodeSampler(train, way=10, shot=5, query=5, seed=0)
        for step in range(TRAIN_STEPS):
            loss = learner.episode_loss(model, sampler.episode(step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        metrics = evaluate_model(model, load_split("glyphs", "val"), way=5, shots=[1, 5], query=5, episodes=10,
                                 learner="protonet", seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    names = ["t00-latin", "t01-greek", "t02-symbols", "t03-cyrillic"]
    tgr_config = {
        "train": {"learner": "protonet", "arch": "conv4"},
        "eval": {"method": "auto", "inner_steps": 10, "inner_lr": 0.01},
        "pool_members": [{"name": n, "source": f"./pool/{n}", "revision": None, "architecture": "conv4"}
                         for n in names],
        "groups": [names[:2], names[2:]],
        "metrics": {"test": metrics},
    }
    tmp = folder.with_name(folder.name + ".tmp")
    save_meta_model(model, tmp, tgr_config=tgr_config)
    dissimilarity = np.array([[0, .2, .8, .9], [.2, 0, .7, .8], [.8, .7, 0, .3], [.9, .8, .3, 0]])
    plot_dissimilarity(dissimilarity, names, [[0, 1], [2, 3]], tmp / "dissimilarity.png")
    tmp.replace(folder)
    return folder


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Save a ``[3, H, W]`` image in [0, 1] (from uint8 data) losslessly as PNG."""
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def episode_files(split, index: int, folder: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """Episode ``index`` of the fixed evaluation as PNG files: support, labels, queries, true labels."""
    from tgr_hub.data import EpisodeSampler

    episode = EpisodeSampler(split, WAY, SHOT, QUERY, seed=SEED).episode(index)
    folder.mkdir(parents=True, exist_ok=True)
    names = [split.class_names[c] for c in episode.classes]
    support = [save_png(x, folder / f"s{i:02d}.png") for i, x in enumerate(episode.support_x)]
    query = [save_png(x, folder / f"q{i:02d}.png") for i, x in enumerate(episode.query_x)]
    return support, [names[y] for y in episode.support_y], query, [names[y] for y in episode.query_y]


# --- launching the app ---------------------------------------------------------------------------------


class RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP(S) proxy on 127.0.0.1 that forwards nothing and records the request lines it gets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(2048).decode("latin-1").strip()
                if line:
                    proxy.requests.append(line)
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    """A running app process."""

    url: str
    process: subprocess.Popen
    log: Path
    proxy: RecordingProxy
    extra: dict = field(default_factory=dict)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.proxy.shutdown()
        self.proxy.server_close()


def app_env(proxy: RecordingProxy, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TGR_MODEL_ID", None)
    env.update({
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        # Every HTTP(S) request that is not for this machine goes to the recording proxy.
        "HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "ALL_PROXY": proxy.url,
        "http_proxy": proxy.url, "https_proxy": proxy.url, "all_proxy": proxy.url,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    env.update(extra)
    return env


def start_app(command: list[str], log: Path, port: int, *, env_extra: dict[str, str] | None = None,
              timeout: float = 120.0) -> AppServer:
    """Start ``command`` (which serves the app on ``port``) and wait until the page answers."""
    proxy = RecordingProxy()
    handle = log.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                               env=app_env(proxy, **(env_extra or {})))
    handle.close()
    server = AppServer(f"http://127.0.0.1:{port}/", process, log, proxy)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            pytest.fail(f"the app exited with code {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "config", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    pytest.fail(f"the app did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def start_space_app(model: Path, log: Path) -> AppServer:
    """``python spaces_app/app.py`` with ``TGR_MODEL_ID``, as a Space runs it."""
    port = free_port()
    return start_app([sys.executable, str(APP)], log, port,
                     env_extra={"TGR_MODEL_ID": str(model), "GRADIO_SERVER_PORT": str(port)})


@pytest.fixture(scope="module")
def app_server(space_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    server = start_space_app(space_model, tmp_path_factory.mktemp("app") / "app.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app_server: AppServer):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def call_classify(client, support: list, labels: str, query: list) -> dict:
    from gradio_client import handle_file

    return client.predict([handle_file(str(p)) for p in support], labels, [handle_file(str(p)) for p in query],
                          api_name="/classify")


def api_error(client, support: list, labels: str, query: list) -> str:
    """The message of the error the API answers with (the test fails if it answers normally)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        call_classify(client, support, labels, query)
    return str(caught.value)


# --- the app through gradio_client ---------------------------------------------------------------


@pytest.mark.slow
def test_classify_api_gets_held_out_glyphs_right(client, glyph_test, space_model: Path, tmp_path: Path) -> None:
    correct = total = 0
    for index in range(EPISODES):
        support, labels, query, truth = episode_files(glyph_test, index, tmp_path / f"episode{index}")
        result = call_classify(client, support, "\n".join(labels), query)
        assert result["classes"] == list(dict.fromkeys(labels))
        assert len(result["predictions"]) == len(query)
        for prediction, path, true in zip(result["predictions"], query, truth):
            probabilities = prediction["probabilities"]
            assert set(probabilities) == set(result["classes"])
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
            assert prediction["label"] == max(probabilities, key=probabilities.get)
            assert prediction["confidence"] == probabilities[prediction["label"]]
            assert prediction["image"] == path.name
            correct += prediction["label"] == true
            total += 1
        if index == 0:
            # The app is a thin layer: the same call in-process gives the same answer.
            app_model = load_app_model(str(space_model))
            reference = classify_episode(app_model.model, support, labels, query, learner=app_model.learner)
            for got, want in zip(result["predictions"], reference["predictions"]):
                assert got["label"] == want["label"]
                # float rounding only: on the CPU, Conv4 runs channels-last, whose kernels block the work
                # by the thread count, and the server computes in its own worker thread
                for name, p in want["probabilities"].items():
                    assert got["probabilities"][name] == pytest.approx(p, abs=1e-4)
    accuracy = correct / total
    print(f"classify API accuracy on {EPISODES} fixed 5-way 5-shot glyph test episodes: {accuracy:.3f} "
          f"({correct}/{total})")
    assert total == EPISODES * WAY * QUERY
    assert accuracy >= 0.9


def _png(path: Path, mode: str = "RGB", size: tuple[int, int] = (32, 32), color=None) -> Path:
    if color is None:
        color = {"L": 128, "1": 1, "LA": (128, 200), "RGBA": (200, 30, 30, 128), "I;16": 40000}.get(mode, (200, 30, 30))
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture(scope="module")
def glyph_files(glyph_test, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two images of each of 12 glyph test classes, as PNG."""
    folder = tmp_path_factory.mktemp("glyph-files")
    files = {}
    for c in range(12):
        idx = glyph_test.indices_of(c)[:2]
        files[glyph_test.class_names[c]] = [save_png(glyph_test.float_images(i[None])[0], folder / f"c{c}_{j}.png")
                                            for j, i in enumerate(idx)]
    return files


def _bad_inputs(files: dict[str, list[Path]], tmp: Path) -> dict[str, tuple[list, str, list, str]]:
    """Bad API inputs: (support, labels, query, a phrase the message must contain)."""
    a, b = list(files)[:2]
    good_support = files[a] + files[b]
    good_labels = f"{a}, {a}, {b}, {b}"
    query = [files[a][0]]
    text = tmp / "notes.txt"
    text.write_text("these are my notes, not an image\n")
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(files[a][0].read_bytes()[:70])  # a PNG cut short
    big_file = tmp / "huge-file.png"
    big_file.write_bytes(files[a][0].read_bytes() + os.urandom(DEFAULT_LIMITS.max_file_bytes))
    huge = _png(tmp / "huge.png", "L", (5000, 5000))  # 25 MP, a few kB compressed
    many = [files[a][0]] * (DEFAULT_LIMITS.max_images_per_class + 1) + [files[b][0]]
    eleven = {n: fs[0] for n, fs in list(files.items())[:11]}
    return {
        "no classes": ([], "", query, "no classes defined"),
        "no query": (good_support, good_labels, [], "no query images"),
        "more labels than images": (good_support[:3], good_labels, query, "4 labels given for 3 support images"),
        "empty label": (good_support, f"{a}, , {b}, {b}", query, "has an empty label"),
        "one class": (files[a], f"{a}, {a}", query, "only one class"),
        "too many classes": (list(eleven.values()), ", ".join(eleven), query, "too many classes: 11"),
        "too many per class": (many, ", ".join([a] * (len(many) - 1) + [b]), query, "the limit is 20 per class"),
        "too many queries": (good_support, good_labels, [files[a][0]] * 51, "too many query images: 51"),
        "not an image": (good_support[:3] + [text], good_labels, query, "notes.txt: not an image"),
        "corrupt image": (good_support, good_labels, [corrupt], "corrupt.png: corrupt image"),
        "too many pixels": (good_support[:3] + [huge], good_labels, query, "huge.png: image is too large (5000x5000"),
        "file too large": (good_support, good_labels, [big_file], "huge-file.png: file is too large"),
    }


BAD_CASES = ["no classes", "no query", "more labels than images", "empty label", "one class",
             "too many classes", "too many per class", "too many queries", "not an image", "corrupt image",
             "too many pixels", "file too large"]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.slow
def test_classify_api_explains_bad_input(client, glyph_files, tmp_path: Path, case: str) -> None:
    support, labels, query, phrase = _bad_inputs(glyph_files, tmp_path)[case]
    message = api_error(client, support, labels, query)
    assert phrase in message, message
    assert "Traceback" not in message and "File \"" not in message


SLOTS = DEFAULT_LIMITS.max_classes


def ui_adapt(client, classes: list[tuple[str, list[Path]]], count: int | None = None):
    """Click Adapt with these class slots filled in (through the page's own endpoint)."""
    from gradio_client import handle_file

    names = [name for name, _ in classes] + [""] * (SLOTS - len(classes))
    files = [[handle_file(str(p)) for p in paths] or None for _, paths in classes] + [None] * (SLOTS - len(classes))
    return client.predict(count or max(2, len(classes)), *names, *files, api_name="/ui_adapt")


def ui_classify(client, classes: list[tuple[str, list[Path]]], query: list[Path], count: int | None = None):
    """Click Classify (the page sends the class slots too, to detect classes changed since Adapt)."""
    from gradio_client import handle_file

    names = [name for name, _ in classes] + [""] * (SLOTS - len(classes))
    files = [[handle_file(str(p)) for p in paths] or None for _, paths in classes] + [None] * (SLOTS - len(classes))
    return client.predict(count or max(2, len(classes)), *names, *files, [handle_file(str(p)) for p in query],
                          api_name="/ui_classify")


def ui_error(call, *args, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "Traceback" not in message and "File \"" not in message
    return message


@pytest.mark.slow
def test_page_adapts_and_classifies(app_server: AppServer, glyph_test, space_model: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    client = Client(app_server.url, verbose=False)  # its own session: the page keeps the adaptation per session
    support, labels, query, truth = episode_files(glyph_test, 0, tmp_path)
    classes = [(name, [p for p, label in zip(support, labels) if label == name]) for name in dict.fromkeys(labels)]
    message = ui_error(ui_classify, client, classes, query[:1])
    assert "Adapt the model to your classes first" in message
    status = ui_adapt(client, classes)
    status = status[-1] if isinstance(status, (list, tuple)) else status
    assert status.startswith("Adapted to 5 classes (prototypes computed)")
    top, gallery, table = ui_classify(client, classes, query)
    assert top["label"] == max(top["confidences"], key=lambda c: c["confidence"])["label"]
    assert len(gallery) == len(query)
    assert table.count("\n") == len(query) + 1
    # the table is Markdown with user text escaped: "| q00\\.png | **greek/ϝ** | 99.9% | ... |"
    predicted = [re.sub(r"\\(.)", r"\1", row.split(" | ")[1].strip("*")) for row in table.splitlines()[2:]]
    app_model = load_app_model(str(space_model))  # the page gives the library's answers
    reference = classify_episode(app_model.model, support, labels, query, learner=app_model.learner)
    assert predicted == [p["label"] for p in reference["predictions"]]
    assert top["label"] == predicted[0]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 0.8 * len(truth)
    changed = [(classes[0][0] + " 2", classes[0][1])] + classes[1:]
    assert "classes changed since the last adaptation" in ui_error(ui_classify, client, changed, query[:1])
    assert "no query images" in ui_error(ui_classify, client, classes, [])


@pytest.mark.slow
def test_page_explains_bad_classes(client, glyph_files, tmp_path: Path) -> None:
    a, b = list(glyph_files)[:2]
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(glyph_files[a][0].read_bytes()[:70])
    text = tmp_path / "readme.txt"
    text.write_text("not an image")
    huge = _png(tmp_path / "poster.png", "L", (6000, 4000))
    cases = [
        ([], "no classes defined"),
        ([(a, glyph_files[a]), (b, [])], f"class {b!r} has no images"),
        ([("", glyph_files[a]), (b, glyph_files[b])], "class 1 has no name"),
        ([(a, glyph_files[a])], f"only one class ({a!r})"),
        ([("cat", glyph_files[a]), (" cat", glyph_files[b])], "duplicate class name 'cat' (classes 1 and 2)"),
        ([(a, [glyph_files[a][0]] * 21), (b, glyph_files[b])], f"class {a!r} has 21 images; the limit is 20"),
        ([(a, glyph_files[a]), (b, [text])], f"class {b!r}: readme.txt: not an image"),
        ([(a, [corrupt]), (b, glyph_files[b])], f"class {a!r}: broken.png: corrupt image"),
        ([(a, glyph_files[a]), (b, [huge])], "poster.png: image is too large (6000x4000 = 24.0 megapixels"),
    ]
    for classes, phrase in cases:
        message = ui_error(ui_adapt, client, classes)
        assert phrase in message, (phrase, message)


@pytest.mark.slow
def test_classify_api_converts_grayscale_rgba_and_big_images(client, glyph_files, tmp_path: Path) -> None:
    a, b = list(glyph_files)[:2]
    rgb = Image.open(glyph_files[a][0]).convert("RGB")
    rgba = tmp_path / "rgba.png"
    rgb.convert("RGBA").save(rgba)  # opaque RGBA: same pixels as the RGB image
    gray = tmp_path / "gray.png"
    rgb.convert("L").save(gray)
    big = tmp_path / "big.jpg"
    rgb.resize((3000, 2000)).save(big, quality=95)  # 6 MP: accepted and downscaled
    result = call_classify(client, [rgba, glyph_files[a][1], *glyph_files[b]], f"{a}, {a}, {b}, {b}",
                           [gray, big, glyph_files[a][0]])
    notes = "\n".join(result["notes"])
    assert "rgba.png: converted from RGBA to RGB" in notes
    assert "gray.png: converted from L to RGB" in notes
    assert [p["image"] for p in result["predictions"]] == ["gray.png", "big.jpg", glyph_files[a][0].name]
    # the opaque RGBA support image is the RGB one: the RGB query is classified as its class
    assert result["predictions"][2]["label"] == a


@pytest.mark.slow
def test_app_page_shows_the_model_panel(app_server: AppServer) -> None:
    with urllib.request.urlopen(app_server.url + "config", timeout=10) as response:
        config = json.loads(response.read())
    text = json.dumps(config, ensure_ascii=False)
    for phrase in ("About this model", "Teacher pool", "t02-symbols", "Task groups", "5-way 5-shot", "ProtoNet",
                   "Teacher dissimilarity and groups", "dissimilarity.png"):
        assert phrase in text, phrase
    api = [d.get("api_name") for d in config["dependencies"] if d.get("api_visibility", "public") == "public"]
    assert api == ["classify"]


@pytest.mark.slow
def test_app_makes_no_outside_requests(app_server: AppServer, client) -> None:
    assert app_server.process.poll() is None
    assert app_server.proxy.requests == [], app_server.proxy.requests
    assert "Traceback" not in app_server.log_tail(100_000)


def load_app_module():
    """``spaces_app/app.py`` imported in this process (as ``tgr-hub demo`` does)."""
    from tgr_hub.cli.cmd_demo import load_app_module as load

    return load()


def test_app_without_model_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("TGR_MODEL_ID", raising=False)
    app = load_app_module()
    assert app.Path(app.__file__).with_name("tgr_model_id.txt").exists() is False
    with pytest.raises(SystemExit) as stopped:
        app.main([])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "TGR_MODEL_ID" in error and "Traceback" not in error


def test_app_model_id_from_the_space_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    app = load_app_module()
    monkeypatch.setenv("TGR_MODEL_ID", "  me/some-model ")
    assert app._default_model_id() == "me/some-model"


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")  # gradio's pandas use
@pytest.mark.slow
def test_page_fine_tunes_a_maml_model(space_model: Path, glyph_files) -> None:
    """A MAML meta-model adapts by fine-tuning, step by step (the app served in this process)."""
    from dataclasses import replace

    from gradio_client import Client

    app = load_app_module()
    app_model = replace(load_app_model(str(space_model)), learner="maml", inner_steps=3, inner_lr=0.01)
    assert "MAML fine-tuning (3 steps" in model_summary_markdown(app_model)
    demo = app.build_demo(app_model)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        a, b, c = list(glyph_files)[:3]
        classes = [(a, glyph_files[a]), (b, glyph_files[b]), (c, glyph_files[c])]
        status = ui_adapt(client, classes, count=3)
        status = status[-1] if isinstance(status, (list, tuple)) else status
        assert status.startswith("Adapted to 3 classes (fine-tuned for 3 steps)")
        top, _, table = ui_classify(client, classes, [glyph_files[b][0]], count=3)
        assert set(c["label"] for c in top["confidences"]) == {a, b, c}
        # the page's answer is the library's MAML answer
        session = FewShotSession(app_model.model, learner="maml", inner_steps=3, inner_lr=0.01)
        session.define_classes(classes)
        session.adapt()
        assert top["label"] == session.classify([glyph_files[b][0]])[0]["label"]
    finally:
        demo.close()


# --- tgr-hub demo (it serving the app is tested in test_space_browser.py) ------------------------------------


def test_cli_demo_bad_model_is_one_line(tmp_path: Path, capsys) -> None:
    from tgr_hub.cli.main import main

    assert main(["demo", str(tmp_path / "missing"), "--port", "7999"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tgr-hub: error:") and error.count("\n") == 1
    assert "missing" in error and "Traceback" not in error


def test_cli_demo_finds_the_space_app() -> None:
    from tgr_hub.cli.cmd_demo import app_path

    assert app_path() == APP


# --- the library: images -----------------------------------------------------------------------------


def test_load_image_rgb_is_exact(glyph_test, tmp_path: Path) -> None:
    image = glyph_test.float_images(torch.tensor([0]))[0]
    loaded = load_image(save_png(image, tmp_path / "g.png"), size=32)
    assert torch.equal(loaded, image)


def test_load_image_conversions_match_hand_computation(tmp_path: Path) -> None:
    notes: list[str] = []
    gray = load_image(_png(tmp_path / "l.png", "L", color=128), size=8, notes=notes)
    assert torch.allclose(gray, torch.full((3, 8, 8), 128 / 255))
    # RGBA (200, 30, 30, alpha 128) over white: c * a + 255 * (1 - a), a = 128/255
    rgba = load_image(_png(tmp_path / "rgba.png", "RGBA", color=(200, 30, 30, 128)), size=8, notes=notes)
    a = 128 / 255
    expected = torch.tensor([200 * a + 255 * (1 - a), 30 * a + 255 * (1 - a), 30 * a + 255 * (1 - a)]) / 255
    assert torch.allclose(rgba[:, 0, 0], expected, atol=1.5 / 255)
    # 16-bit grey 40000 of 65535 is scaled, not clipped to 255
    wide = load_image(_png(tmp_path / "i16.png", "I;16", color=40000), size=8, notes=notes)
    assert torch.allclose(wide, torch.full((3, 8, 8), round(40000 / 65535 * 255) / 255))
    assert [n.split(":")[0] for n in notes] == ["l.png", "rgba.png", "i16.png"]
    # a 3000x2000 image is resized whole (no crop) to the model's size
    left_red = Image.new("RGB", (3000, 2000), (255, 255, 255))
    left_red.paste((255, 0, 0), (0, 0, 1500, 2000))
    out = load_image(left_red, size=32)
    assert out.shape == (3, 32, 32)
    assert out[1, :, :8].max() < 0.05 and out[1, :, -8:].min() > 0.95


def test_load_image_palette_images_match_hand_computation(tmp_path: Path) -> None:
    """Palette ("P") images: each pixel takes its palette colour; a transparent index becomes white."""
    palette = [0, 0, 0, 200, 30, 30, 20, 160, 90, 250, 250, 0]  # indices 0..3
    indices = np.array([[i % 4 for i in range(8)] for _ in range(8)], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(tmp_path / "p.png")
    notes: list[str] = []
    loaded = load_image(tmp_path / "p.png", size=8, notes=notes)
    expected = torch.tensor([palette[3 * i:3 * i + 3] for i in range(4)], dtype=torch.float32)[torch.from_numpy(indices).long()]
    torch.testing.assert_close(loaded, expected.permute(2, 0, 1) / 255, rtol=0, atol=0)
    assert notes == ["p.png: converted from P to RGB (colours converted)"]
    # index 1 transparent (a tRNS chunk): flattened onto white, the others unchanged
    image.save(tmp_path / "pt.png", transparency=1)
    transparent = load_image(tmp_path / "pt.png", size=8, notes=notes)
    expected[torch.from_numpy(indices).long() == 1] = 255.0
    torch.testing.assert_close(transparent, expected.permute(2, 0, 1) / 255, rtol=0, atol=0)
    assert notes[-1] == "pt.png: converted from P to RGB (transparent pixels flattened onto white)"


@pytest.mark.slow
def test_classify_api_takes_palette_images(client, glyph_files, tmp_path: Path) -> None:
    a, b = list(glyph_files)[:2]
    originals = [glyph_files[a][0], glyph_files[b][0], glyph_files[a][1], glyph_files[b][1]]  # 2 support, 2 query
    palette_files = []
    for k, path in enumerate(originals):
        target = tmp_path / f"image{k}-p.png"
        Image.open(path).convert("RGB").quantize(colors=256).save(target)
        assert Image.open(target).mode == "P"
        palette_files.append(target)
    rgb_result = call_classify(client, originals[:2], f"{a}, {b}", originals[2:])
    result = call_classify(client, palette_files[:2], f"{a}, {b}", palette_files[2:])
    notes = "\n".join(result["notes"])
    assert all(f"{p.name}: converted from P to RGB" in notes for p in palette_files), notes
    # palette copies are classified as the originals are
    assert [p["image"] for p in result["predictions"]] == [p.name for p in palette_files[2:]]
    assert [p["label"] for p in result["predictions"]] == [p["label"] for p in rgb_result["predictions"]]


def test_load_image_refusals_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    cases = {
        tmp_path / "empty.png": "empty.png: file is empty",
        tmp_path / "text.jpg": "text.jpg: not an image",
        tmp_path / "absent.png": "absent.png: file not found",
        _png(tmp_path / "big.png", "1", (5000, 4001)): "big.png: image is too large (5000x4001 = 20.0 megapixels",
    }
    for source, phrase in cases.items():
        with pytest.raises(ImageInputError) as caught:
            load_image(source)
        assert phrase in str(caught.value)
    assert load_image(_png(tmp_path / "ok.png", "1", (5000, 4000))).shape == (3, 32, 32)  # exactly 20 MP: accepted


# --- the library: classes and adaptation --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    from tgr_hub.metamodel import create_meta_model

    return create_meta_model("conv4", image_size=32, seed=3).eval()


def _arrays(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 arrays to ``[N, 3, H, W]`` floats in [0, 1] (the reference conversion)."""
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])


@pytest.mark.parametrize("classes, phrase", [
    ([], "no classes defined"),
    ([("cat", _arrays(2, 0)), ("dog", [])], "class 'dog' has no images"),
    ([("cat", _arrays(2, 0))], "only one class ('cat')"),
    ([("cat", _arrays(1, 0)), (" cat ", _arrays(1, 1))], "duplicate class name 'cat' (classes 1 and 2)"),
    ([("cat", _arrays(1, 0)), ("  ", _arrays(1, 1))], "class 2 has no name"),
    ([(f"c{i}", _arrays(1, i)) for i in range(11)], "too many classes: 11 defined"),
    ([("cat", _arrays(21, 0)), ("dog", _arrays(1, 1))], "class 'cat' has 21 images; the limit is 20"),
    ([(f"c{i}", _arrays(15, i)) for i in range(7)], "too many support images: 105"),
    ([("cat", _arrays(1, 0)), ("dog", [b"not an image"])], "class 'dog': image #1: not an image"),
])
def test_define_classes_explains_bad_classes(small_model, classes, phrase) -> None:
    session = FewShotSession(small_model)
    with pytest.raises(ImageInputError) as caught:
        session.define_classes(classes)
    assert phrase in str(caught.value)


def test_classify_before_adapt_is_refused(small_model) -> None:
    session = FewShotSession(small_model)
    with pytest.raises(ImageInputError, match="no classes defined yet"):
        session.adapt()
    session.define_classes({"a": _arrays(2, 0), "b": _arrays(2, 1)})
    with pytest.raises(ImageInputError, match="not adapted yet"):
        session.classify(_arrays(1, 2))


def test_labels_parsing_and_grouping() -> None:
    assert parse_labels(" cat, dog \n bird;fish ") == ["cat", "dog", "bird", "fish"]
    assert parse_labels("") == [] and parse_labels(["a ", " b"]) == ["a", "b"]
    groups = group_by_label(["1", "2", "3", "4", "5"], ["dog", "cat", "dog", " cat  ", "Cat"])
    assert groups == [("dog", ["1", "3"]), ("cat", ["2", "4"]), ("Cat", ["5"])]  # case matters: latin/E != latin/e


def test_calibrated_batchnorm_uses_support_statistics(small_model) -> None:
    support = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calibrated = calibrate_batchnorm(small_model, support)
    first_conv = next(m for m in small_model.modules() if isinstance(m, torch.nn.Conv2d))  # Conv4: conv, then BN
    bn = next(m for m in calibrated.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        activations = first_conv(small_model.normalize(support))  # [6, C, 32, 32]
    assert torch.allclose(bn.running_mean, activations.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, activations.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    # the model itself is untouched
    original = next(m for m in small_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(original.running_mean, bn.running_mean)


def test_protonet_session_matches_hand_computation(small_model) -> None:
    support = {"a": _arrays(3, 0), "b": _arrays(2, 1), "c": _arrays(4, 2)}
    query = _arrays(5, 3)
    session = FewShotSession(small_model, learner="protonet")
    session.define_classes(support)
    session.adapt()
    results = session.classify(query)
    # by hand: features of the support-calibrated model, class means, softmax of -squared distances
    sx = torch.cat([to_tensor(v) for v in support.values()])
    model = calibrate_batchnorm(small_model, sx)
    with torch.no_grad():
        fs, fq = model(sx), model(to_tensor(query))
    counts = [len(v) for v in support.values()]
    prototypes = torch.stack([chunk.mean(0) for chunk in fs.split(counts)])
    expected = (-((fq[:, None] - prototypes[None]) ** 2).sum(-1)).softmax(-1)
    for row, result in zip(expected, results):
        assert result["label"] == "abc"[int(row.argmax())]
        for k, name in enumerate("abc"):
            assert result["probabilities"][name] == pytest.approx(float(row[k]), abs=1e-5)


def test_maml_session_reports_progress_and_matches_learner(small_model) -> None:
    from tgr_hub.learners import MAML

    support = {"a": _arrays(3, 0), "b": _arrays(3, 1)}
    session = FewShotSession(small_model, learner="maml", inner_steps=3, inner_lr=0.05)
    session.define_classes(support)
    calls: list[tuple[int, int]] = []
    session.adapt(progress_cb=lambda done, total, _: calls.append((done, total)))
    assert calls[0] == (0, 3) and (1, 3) in calls and (2, 3) in calls and calls[-1] == (3, 3)
    query = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sx = torch.cat([to_tensor(v) for v in support.values()])
    sy = torch.tensor([0, 0, 0, 1, 1, 1])
    reference = MAML(inner_steps=3, inner_lr=0.05, bn="running").adapt(calibrate_batchnorm(small_model, sx), sx, sy)
    assert torch.allclose(session.predict_proba(query), reference.predict_proba(query), atol=1e-5)


# --- the model panel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_summary_of_local_model(space_model: Path) -> None:
    app_model = load_app_model(str(space_model))
    text = model_summary_markdown(app_model)
    assert app_model.learner == "protonet" and app_model.card_url is None
    assert app_model.heatmap == space_model / "dissimilarity.png"
    for phrase in ("conv4", "ProtoNet", "Teacher pool** (4 models", "t00-latin", "G1: t02-symbols, t03-cyrillic",
                   "5-way 5-shot: **"):
        assert phrase in text, phrase


@pytest.mark.slow
def test_model_summary_of_hub_model_links_the_card(space_model: Path, hub, hf_token: str) -> None:
    from tgr_hub.hub import push_meta_model

    push_meta_model(space_model, "me/space-test-model", token=hf_token)
    app_model = load_app_model("me/space-test-model")
    assert app_model.card_url == f"{hub.url.rstrip('/')}/me/space-test-model"
    assert f"[Model card]({app_model.card_url})" in model_summary_markdown(app_model)
    assert app_model.heatmap is not None
    assert app_model.heatmap.read_bytes() == (space_model / "dissimilarity.png").read_bytes()
    assert app_model.learner == "protonet"
