"""Hub integration over real HTTP: the real ``huggingface_hub`` client (and timm) against the
Hub-compatible test server that ``conftest.py`` starts on 127.0.0.1 (nothing is mocked).

Teachers are pushed with timm's own ``push_to_hf_hub``; the resolver, the pushes, the card
and the Space are then checked through the same client a user has.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tgr_hub  # noqa: F401  registers conv4 with timm
from tgr_hub import hub as hub_mod
from tgr_hub.hub import client as hub_client  # the retry policy lives with the client
from tgr_hub.errors import (
    GatedRepoError,
    HubError,
    NotAClassifierError,
    OfflineCacheMissError,
    PickleRefusedError,
    PoolError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    TgrHubError,
    UnknownArchitectureError,
    WeightsMismatchError,
)
from tgr_hub.pool import load_pool, parse_pool_text

from conftest import OTHER_TOKEN, WRITE_TOKEN  # noqa: E402  (tests/ is on sys.path)

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGENET = "timm/mobilenetv3_small_050.lamb_in1k"


# --- teachers on the test Hub --------------------------------------------------------------


def _conv4(num_classes: int, seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("conv4", num_classes=num_classes).eval()


def _timm_push(model: torch.nn.Module, repo_id: str, **kwargs) -> str:
    """Push with timm's own push_to_hf_hub; return the new head commit sha."""
    from timm.models import push_to_hf_hub

    info = push_to_hf_hub(model, repo_id, **kwargs)
    return info.oid


def _raw_repo(repo_id: str, files: dict[str, bytes]) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in files.items()]
    return api.create_commit(repo_id, ops, commit_message="raw files").oid


def _safetensors_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def teachers(hub_server):
    """Teachers of every kind the resolver must handle, pushed once for this module."""
    import timm

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", WRITE_TOKEN)
        labels = [f"latin/{c}" for c in "ABCDE"]
        first = _conv4(5, seed=1)
        sha_v1 = _timm_push(first, "tgr-org/hub-teacher-a", model_config={"label_names": labels})
        from huggingface_hub import HfApi

        HfApi().create_tag("tgr-org/hub-teacher-a", tag="v1", revision=sha_v1)
        second = _conv4(5, seed=2)
        sha_main = _timm_push(second, "tgr-org/hub-teacher-a", model_config={"label_names": labels})
        _timm_push(_conv4(5, seed=3), "tgr-org/hub-teacher-b", model_config={"label_names": labels})
        _timm_push(_conv4(4, seed=4), "tgr-org/hub-teacher-c")
        imagenet = timm.create_model("mobilenetv3_small_050.lamb_in1k", pretrained=False).eval()  # its own pretrained_cfg
        _timm_push(imagenet, IMAGENET)  # like the real repo: model.safetensors + pytorch_model.bin + README
        _timm_push(_conv4(5, seed=5), "tgr-org/hub-pickle-only", safe_serialization=False)
        _timm_push(_conv4(0, seed=6), "tgr-org/hub-features")
        _timm_push(_conv4(5, seed=7), "me/hub-private", private=True)
        _timm_push(_conv4(5, seed=8), "tgr-org/hub-gated")
        hub_server.set_gated("tgr-org/hub-gated")
        weights = _safetensors_bytes(_conv4(5, seed=9))
        _raw_repo("tgr-org/hub-no-config", {"model.safetensors": weights, "README.md": b"---\nlicense: mit\n---\n# weights only\n"})
        _raw_repo("tgr-org/hub-bert", {"config.json": json.dumps({"architectures": ["BertModel"],
                                                                  "model_type": "bert"}).encode(),
                                       "model.safetensors": weights})
        good_config = hub_server.files("tgr-org/hub-teacher-c")["config.json"]
        unknown = json.loads(good_config)
        unknown["architecture"] = "no_such_net_v9"
        _raw_repo("tgr-org/hub-unknown-arch", {"config.json": json.dumps(unknown).encode(), "model.safetensors": weights})
        # config.json of a 4-way conv4, weights of a 5-way one
        _raw_repo("tgr-org/hub-mismatch", {"config.json": good_config, "model.safetensors": weights})
    return {"first": first, "second": second, "sha_v1": sha_v1, "sha_main": sha_main, "imagenet": imagenet}


def _entries(text: str, tmp_path: Path | None = None):
    list_path = None
    if tmp_path is not None:
        list_path = tmp_path / "pool.txt"
        list_path.write_text(text)
    return parse_pool_text(text, base=tmp_path or ".", list_path=str(list_path) if list_path else None)


def _refs(text: str, tmp_path: Path | None = None):
    """The Hub references of a repo-list text: what hub.resolve_many takes."""
    return [entry.ref for entry in _entries(text, tmp_path)]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --- resolution ------------------------------------------------------------------------------


def test_resolve_pins_commit_and_downloads_only_what_is_needed(hub, hub_cache, teachers) -> None:
    before = len(hub.requests)
    resolved = hub_mod.resolve_repo(IMAGENET)
    assert resolved.sha == hub.repo(IMAGENET).branches["main"]
    assert resolved.folder == hub_cache / "models--timm--mobilenetv3_small_050.lamb_in1k" / "snapshots" / resolved.sha
    assert sorted(p.name for p in resolved.folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (resolved.folder.parent.parent / "refs" / "main").read_text() == resolved.sha
    paths = [r.path for r in hub.requests[before:]]
    assert not any(p.endswith(("pytorch_model.bin", "README.md")) for p in paths)  # nothing more than needed
    # every download is pinned to the commit sha, never to the moving branch
    assert all(f"/resolve/{resolved.sha}/" in p for p in paths if "/resolve/" in p)
    # the weights are the pushed ones
    expected = teachers["imagenet"].state_dict()
    state = _state(resolved.folder)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_branch_tag_sha_and_prefix_entries(hub_cache, teachers, tmp_path: Path) -> None:
    sha_v1, sha_main = teachers["sha_v1"], teachers["sha_main"]
    entries = _entries(f"tgr-org/hub-teacher-a\ntgr-org/hub-teacher-a@v1\nhf-hub:tgr-org/hub-teacher-a@{sha_v1}\n"
                       "hf-hub:tgr-org/hub-teacher-a@main\n", tmp_path)
    results = hub_mod.resolve_many([e.ref for e in entries], progress=False)
    assert [sha for _, sha in results] == [sha_main, sha_v1, sha_v1, sha_main]
    assert results[0][0] != results[1][0] and results[1][0] == results[2][0]
    refs = hub_cache / "models--tgr-org--hub-teacher-a" / "refs"
    assert (refs / "main").read_text() == sha_main and (refs / "v1").read_text() == sha_v1
    first = teachers["first"].state_dict()
    v1 = _state(results[1][0])
    assert all(torch.equal(v1[k], first[k]) for k in first)
    # the pool records the sha each entry resolved to
    members = load_pool(tmp_path / "pool.txt")
    assert [m.revision for m in members] == [sha_main, sha_v1, sha_v1, sha_main]
    assert members[0].label_names == [f"latin/{c}" for c in "ABCDE"]


def test_imagenet_teacher_keeps_its_input_size_and_normalisation(hub_cache, teachers, tmp_path: Path) -> None:
    (tmp_path / "pool.txt").write_text(f"{IMAGENET}\n")
    (member,) = load_pool(tmp_path / "pool.txt")
    assert member.num_classes == 1000 and member.architecture == "mobilenetv3_small_050"
    assert member.input_size == (3, 224, 224)
    assert member.mean == pytest.approx((0.485, 0.456, 0.406)) and member.std == pytest.approx((0.229, 0.224, 0.225))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # by hand: resize to the teacher's own 224x224, ImageNet normalisation, the pushed model
    x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = teachers["imagenet"](x)
        logits = member.logits(images)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_offline_second_resolution_uses_the_cache_alone(hub, hub_cache, teachers, tmp_path: Path, monkeypatch) -> None:
    text = f"tgr-org/hub-teacher-a\ntgr-org/hub-teacher-a@v1\n{IMAGENET}\nhf-hub:tgr-org/hub-teacher-b\n"
    online = hub_mod.resolve_many(_refs(text, tmp_path), progress=False)
    # a fresh process, offline, with an endpoint where nothing listens: only the cache can answer
    script = (
        "import json, sys\n"
        "from tgr_hub.hub import resolve_many\n"
        "from tgr_hub.pool import parse_pool_list, load_pool\n"
        "entries = parse_pool_list(sys.argv[1])\n"
        "print(json.dumps([[str(f), s] for f, s in resolve_many([e.ref for e in entries], progress=False)]))\n"
        "print(json.dumps([m.revision for m in load_pool(sys.argv[1])]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(hub_cache)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "pool.txt")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == [[str(f), s] for f, s in online]
    assert json.loads(lines[-1]) == [s for _, s in online]
    # in this process too: offline resolution makes no request at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    assert hub_mod.resolve_many(_refs(text, tmp_path), progress=False) == online
    assert len(hub.requests) == before
    with pytest.raises(OfflineCacheMissError, match="tgr-org/hub-teacher-c.*HF_HUB_OFFLINE"):
        hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    with pytest.raises(OfflineCacheMissError):
        hub_mod.resolve_repo("tgr-org/hub-teacher-a", "v2")
    assert len(hub.requests) == before


def test_resolve_many_runs_concurrently_with_progress(hub, hub_cache, teachers, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tgr_hub.progress")  # stderr is no terminal here: progress is logged
    hub.inject_fault(r"^/api/models/", status=None, delay=0.4, times=3)  # slow model info calls
    hub.max_in_flight = 0
    text = "tgr-org/hub-teacher-a\ntgr-org/hub-teacher-b\ntgr-org/hub-teacher-c\ntgr-org/hub-teacher-b\n"
    before = len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-b$"))
    results = hub_mod.resolve_many(_refs(text, tmp_path), max_workers=3, progress=True)
    assert hub.max_in_flight >= 2  # several requests were served at the same time
    assert results[1] == results[3]
    # the duplicate entry is resolved once: one model-info call for it, not two
    assert len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-b$")) - before == 1
    assert "resolving Hub teachers: 3/3 done" in caplog.text


@pytest.mark.slow
def test_transient_errors_are_retried(hub, hub_cache, teachers) -> None:
    before = len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-b$"))
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-b$", status=503, times=2)
    hub.inject_fault(r"/hub-teacher-b/resolve/[0-9a-f]+/config.json$", method="GET", drop=True, times=1)
    resolved = hub_mod.resolve_repo("tgr-org/hub-teacher-b")
    assert resolved.sha == hub.repo("tgr-org/hub-teacher-b").branches["main"]
    assert len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-b$")) - before == 3
    assert (resolved.folder / "config.json").is_file() and (resolved.folder / "model.safetensors").is_file()


def test_hub_down_and_timeouts_give_a_hub_error(hub, hub_cache, teachers, monkeypatch, caplog) -> None:
    monkeypatch.setattr(hub_client, "RETRIES", 1)
    monkeypatch.setattr(hub_client, "RETRY_WAIT", 0.01)
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=503, times=10)
    with pytest.raises(HubError, match="could not reach the Hub") as down:
        hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    assert not isinstance(down.value, PoolError) and "\n" not in str(down.value)
    hub.clear_faults()
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.3")
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=None, delay=1.5, times=2)
    started = time.perf_counter()
    with pytest.raises(HubError, match="could not reach the Hub"):
        hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    assert time.perf_counter() - started < 3.0  # two attempts of 0.3 s, not the server's 1.5 s each
    # once cached, an unreachable Hub falls back to the cached snapshot, with a warning
    hub.clear_faults()
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT")
    cached = hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=503, times=10)
    with caplog.at_level(logging.WARNING, logger="tgr_hub.hub"):
        again = hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    assert again == cached and "using the cached snapshot" in caplog.text


ERROR_CASES = {
    # name: (pool entry, token, expected error type, words the message must hold)
    "missing repo": ("tgr-org/no-such-model", None, RepoNotFoundError, ["tgr-org/no-such-model", "not found"]),
    "missing repo, with token": ("tgr-org/no-such-model", WRITE_TOKEN, RepoNotFoundError, ["no access"]),
    "private without token": ("me/hub-private", None, RepoNotFoundError, ["private", "no token", "HF_TOKEN"]),
    "private, other user": ("me/hub-private", OTHER_TOKEN, RepoNotFoundError, ["no access"]),
    "gated without token": ("tgr-org/hub-gated", None, GatedRepoError, ["gated", "no token"]),
    "gated, no access": ("tgr-org/hub-gated", OTHER_TOKEN, GatedRepoError, ["gated", "no access"]),
    "missing revision": ("tgr-org/hub-teacher-a@v9", None, RevisionNotFoundError, ["'v9'", "does not exist"]),
    "pickle only": ("tgr-org/hub-pickle-only", None, PickleRefusedError, ["pytorch_model.bin", "--allow-pickle"]),
    "no config.json": ("tgr-org/hub-no-config", None, NotAClassifierError, ["no config.json"]),
    "transformers model": ("tgr-org/hub-bert", None, NotAClassifierError, ["not a timm image classifier"]),
    "feature extractor": ("tgr-org/hub-features", None, NotAClassifierError, ["num_classes 0"]),
    "unknown architecture": ("tgr-org/hub-unknown-arch", None, UnknownArchitectureError, ["no_such_net_v9"]),
    "config and weights disagree": ("tgr-org/hub-mismatch", None, WeightsMismatchError, []),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_cases_are_typed_one_line_and_located(case, hub, hub_cache, teachers, tmp_path, monkeypatch) -> None:
    entry, token, error_type, words = ERROR_CASES[case]
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    (tmp_path / "pool.txt").write_text(f"# pool\n{entry}\n")
    with pytest.raises(error_type) as caught:
        load_pool(tmp_path / "pool.txt")
    message = str(caught.value)
    assert isinstance(caught.value, PoolError)
    assert message.startswith(f"{tmp_path / 'pool.txt'}:2:")  # names the list file and line
    assert "\n" not in message
    for word in words:
        assert word in message
    for secret in (WRITE_TOKEN, OTHER_TOKEN):
        assert secret not in message


def test_pickle_opt_in_loads_with_weights_only(hub_cache, teachers, tmp_path: Path) -> None:
    resolved = hub_mod.resolve_repo("tgr-org/hub-pickle-only", allow_pickle=True)
    assert resolved.weights.name == "pytorch_model.bin"
    (tmp_path / "pool.txt").write_text("tgr-org/hub-pickle-only\n")
    (member,) = load_pool(tmp_path / "pool.txt", allow_pickle=True)
    assert member.num_classes == 5 and member.revision == resolved.sha


def _downloads(hub, since: int) -> list[str]:
    """The file names downloaded (``/resolve/``) since request number ``since``."""
    return [r.path.rsplit("/", 1)[-1] for r in hub.requests[since:] if "/resolve/" in r.path]


def _cached_files(cache: Path) -> set[str]:
    return {p.name for p in cache.rglob("*") if p.is_file() and "snapshots" in p.parts}


def test_nothing_but_config_and_safetensors_is_downloaded_without_opt_in(hub, hub_cache, teachers,
                                                                         tmp_path: Path) -> None:
    before = len(hub.requests)
    with pytest.raises(PickleRefusedError):
        hub_mod.resolve_repo("tgr-org/hub-pickle-only")
    (tmp_path / "pool.txt").write_text(f"tgr-org/hub-pickle-only\ntgr-org/hub-teacher-b\n{IMAGENET}\n")
    with pytest.raises(PickleRefusedError):
        load_pool(tmp_path / "pool.txt")
    hub_mod.resolve_many(_refs(f"tgr-org/hub-teacher-b\n{IMAGENET}\n", tmp_path), progress=False)
    # the refusal comes before the download: the pickle never reaches the machine
    downloaded = _downloads(hub, before)
    assert downloaded and set(downloaded) <= {"config.json", "model.safetensors"}, downloaded
    assert _cached_files(hub_cache) <= {"config.json", "model.safetensors"}
    # the control: with the opt-in, the pickle is downloaded, and the checks above would see it
    before = len(hub.requests)
    hub_mod.resolve_repo("tgr-org/hub-pickle-only", allow_pickle=True)
    assert "pytorch_model.bin" in _downloads(hub, before) and "pytorch_model.bin" in _cached_files(hub_cache)


@pytest.mark.slow
def test_errors_and_logs_never_repeat_a_token_the_hub_echoes(hub, hf_token, hub_cache, teachers, fake_run: Path,
                                                             tmp_path: Path, caplog, capfd, monkeypatch) -> None:
    """A server (or proxy) that puts the token in its error answer: nothing tgr-hub says may repeat it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # the echo reaches the first line of the client's own error text (the line tgr-hub's messages
    # quote): what the scrubbing has to remove
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=403, echo_token=True)
    with pytest.raises(HfHubHTTPError) as raw:
        HfApi().model_info("tgr-org/hub-teacher-c")
    assert WRITE_TOKEN in str(raw.value).splitlines()[0]

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(hub_client, "RETRIES", 1)
    messages = []
    # a transient error, retried (a warning each time), then given up on
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=503, times=5, echo_token=True)
    with pytest.raises(HubError) as down:
        hub_mod.resolve_repo("tgr-org/hub-teacher-c")
    messages.append(str(down.value))
    # a refusal, during resolution and during a push
    hub.clear_faults()
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-b$", status=403, echo_token=True)
    with pytest.raises(HubError) as refused:
        hub_mod.resolve_repo("tgr-org/hub-teacher-b")
    messages.append(str(refused.value))
    assert "refused" in messages[-1] and "injected fault 403" in messages[-1]  # the server's words, quoted
    hub.inject_fault(r"^/api/models/me/hub-echo/commit/", method="POST", status=403, echo_token=True)
    with pytest.raises(PushError) as push:
        hub_mod.push_meta_model(fake_run, "me/hub-echo")
    messages.append(str(push.value))
    # and the CLI, in its own process
    hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-b$", status=403, echo_token=True)
    (tmp_path / "pool.txt").write_text("tgr-org/hub-teacher-b\n")
    done = _cli("inspect", "--pool", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "out"), "--preset", "smoke")
    assert done.returncode == 2 and "tgr-hub: error: " in done.stderr
    captured = capfd.readouterr()
    assert any("retry 1/1" in r.getMessage() for r in caplog.records)  # the retry warning was logged
    # every record of tgr-hub and huggingface_hub, and everything at INFO or above; not the HTTP
    # transport's DEBUG wire trace (httpcore dumps raw response headers there: not tgr-hub's output)
    records = [r for r in caplog.records if r.name.startswith(("tgr_hub", "huggingface_hub")) or r.levelno >= logging.INFO]
    texts = messages + [r.getMessage() for r in records] + [captured.out, captured.err, done.stdout, done.stderr]
    leaks = [text for text in texts if WRITE_TOKEN in text]
    assert not leaks, leaks[0][:300]


@pytest.mark.slow
def test_tgr_hub_retries_sets_the_number_of_retries(hub, hub_cache, teachers, tmp_path: Path) -> None:
    script = ("from tgr_hub.hub import resolve_repo\n"
              "from tgr_hub.errors import HubError\n"
              "try:\n    resolve_repo('tgr-org/hub-teacher-c')\nexcept HubError as error:\n    print('gave up:', error)\n")
    for retries in (0, 2):
        before = len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-c$"))
        hub.inject_fault(r"^/api/models/tgr-org/hub-teacher-c$", status=503, times=10)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "TGR_HUB_RETRIES": str(retries), "HF_HUB_CACHE": str(hub_cache)})
        hub.clear_faults()
        assert done.returncode == 0 and "gave up: could not reach the Hub" in done.stdout, done.stderr[-2000:]
        calls = len(hub.requests_matching(r"^/api/models/tgr-org/hub-teacher-c$")) - before
        assert calls == 1 + retries, (retries, calls)


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tgr_hub.cli", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("case", list(ERROR_CASES))
@pytest.mark.slow
def test_cli_prints_one_line_per_error(case, hub_cache, teachers, tmp_path: Path, monkeypatch, capsys) -> None:
    from tgr_hub.cli.main import main

    entry, token, _, words = ERROR_CASES[case]
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    (tmp_path / "pool.txt").write_text(f"{entry}\n")
    code = main(["inspect", "--pool", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "out"), "--preset", "smoke"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tgr-hub: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert err.rstrip().endswith(errors[0]) and all(word in errors[0] for word in words)
    assert WRITE_TOKEN not in err and OTHER_TOKEN not in err


@pytest.mark.slow
def test_cli_error_in_its_own_process(hub_cache, teachers, tmp_path: Path) -> None:
    (tmp_path / "pool.txt").write_text("# teachers\nme/hub-private\n")
    done = _cli("inspect", "--pool", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "out"), "--preset", "smoke")
    errors = [line for line in done.stderr.splitlines() if line.startswith("tgr-hub: error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0] == (f"tgr-hub: error: {tmp_path / 'pool.txt'}:2: repository me/hub-private not found on "
                         f"{os.environ['HF_ENDPOINT']}, or it is private and no token was given (check the id; for a "
                         "private repository set HF_TOKEN or run `hf auth login`)")


# --- pushing ---------------------------------------------------------------------------------


def _space_app(tmp_path: Path) -> Path:
    """The real spaces_app/ when it is there, else a stand-in with the same files."""
    real = REPO_ROOT / "spaces_app"
    if (real / "app.py").is_file() and (real / "requirements.txt").is_file():
        return real
    stub = tmp_path / "spaces_app"
    stub.mkdir()
    (stub / "app.py").write_text("import os\nMODEL = os.environ.get('TGR_MODEL_ID')\n")
    (stub / "requirements.txt").write_text("tgr-hub\ngradio\n")
    return stub


@pytest.mark.slow
def test_push_meta_model_and_space(hub, hf_token, hub_cache, fake_run: Path, tmp_path: Path) -> None:
    import timm
    from huggingface_hub import HfApi, ModelCard

    from tgr_hub.metamodel import load_meta_model

    app = _space_app(tmp_path)
    result = hub_mod.push_meta_model(fake_run, "me/hub-meta", space_id="me/hub-meta-demo", space_app_dir=app)
    assert result.repo_url == f"{hub.url}/me/hub-meta" and result.space_url == f"{hub.url}/spaces/me/hub-meta-demo"
    files = hub.files("me/hub-meta")
    assert set(files) == {".gitattributes", "config.json", "model.safetensors", "tgr_config.json", "README.md",
                          "dissimilarity.png", "training_curve.png"}
    assert result.commit_sha == hub.repo("me/hub-meta").branches["main"]
    assert hub.commit_count("me/hub-meta") == 2  # the repository's creation + one commit with everything
    assert files["model.safetensors"] == (fake_run / "model.safetensors").read_bytes()

    # plain timm loads it from the Hub and gives the local run's features
    local = load_meta_model(fake_run)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    remote = timm.create_model("hf-hub:me/hub-meta", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(remote(local.normalize(images)), local(images), rtol=0, atol=0)
    # and tgr-hub's own download, pinned to the commit
    folder = hub_mod.download_meta_model("me/hub-meta")
    assert folder.name == result.commit_sha
    with torch.no_grad():
        torch.testing.assert_close(load_meta_model(folder)(images), local(images), rtol=0, atol=0)

    card = ModelCard.load("me/hub-meta")
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    assert {"few-shot", "meta-learning", "data-free", "tgr", "timm"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.base_model == ["tgr-org/teacher-a", "timm/resnet18.a1_in1k"]
    assert sorted(r.metric_value for r in card.data.eval_results) == [41.23, 58.71]
    assert "me/hub-meta-demo" in card.text

    space = hub.files("me/hub-meta-demo", repo_type="space")
    assert {"app.py", "requirements.txt", "README.md", "tgr_model_id.txt"} <= set(space)
    assert space["app.py"] == (app / "app.py").read_bytes()
    assert space["tgr_model_id.txt"].decode().strip() == "me/hub-meta"
    from huggingface_hub import SpaceCard

    space_card = SpaceCard(space["README.md"].decode())
    assert space_card.data.sdk == "gradio" and space_card.data.app_file == "app.py"
    assert space_card.data.models == ["me/hub-meta"]
    assert HfApi().space_info("me/hub-meta-demo").sdk == "gradio"
    assert hub.repo("me/hub-meta-demo", "space").variables["TGR_MODEL_ID"]["value"] == "me/hub-meta"
    assert not any(p.endswith((".pyc", "__pycache__")) for p in space)


@pytest.mark.slow
def test_repush_is_one_commit_and_nothing_when_unchanged(hub, hf_token, fake_run: Path) -> None:
    first = hub_mod.push_meta_model(fake_run, "me/hub-repush")
    count = hub.commit_count("me/hub-repush")
    same = hub_mod.push_meta_model(fake_run, "me/hub-repush")
    assert same.commit_sha == first.commit_sha and hub.commit_count("me/hub-repush") == count  # no empty commit
    # a new run result: new metrics, one figure less
    (fake_run / "training_curve.png").unlink()
    tgr = json.loads((fake_run / "tgr_config.json").read_text())
    tgr["metrics"]["test"]["1shot"]["mean"] = 0.5
    (fake_run / "tgr_config.json").write_text(json.dumps(tgr))
    second = hub_mod.push_meta_model(fake_run, "me/hub-repush")
    assert second.commit_sha != first.commit_sha and hub.commit_count("me/hub-repush") == count + 1
    files = hub.files("me/hub-repush")
    assert "training_curve.png" not in files  # the stale figure went in the same commit
    assert json.loads(files["tgr_config.json"])["metrics"]["test"]["1shot"]["mean"] == 0.5
    assert "50.00" in files["README.md"].decode()


def test_interrupted_push_leaves_nothing_a_retry_cannot_fix(hub, hf_token, fake_run: Path, monkeypatch) -> None:
    first = hub_mod.push_meta_model(fake_run, "me/hub-interrupted")
    before = hub.files("me/hub-interrupted")
    (fake_run / "dissimilarity.png").write_bytes((fake_run / "training_curve.png").read_bytes())
    # the connection dies while the commit is sent: no retry allowed, the push fails...
    monkeypatch.setattr(hub_client, "RETRIES", 0)
    hub.inject_fault(r"^/api/models/me/hub-interrupted/commit/", method="POST", drop=True)
    with pytest.raises(PushError, match="run the same push again"):
        hub_mod.push_meta_model(fake_run, "me/hub-interrupted")
    # ...and the repository is exactly as before: no half-written state
    assert hub.repo("me/hub-interrupted").branches["main"] == first.commit_sha
    assert hub.files("me/hub-interrupted") == before
    # running the same push again completes it
    done = hub_mod.push_meta_model(fake_run, "me/hub-interrupted")
    assert hub.files("me/hub-interrupted")["dissimilarity.png"] == (fake_run / "dissimilarity.png").read_bytes()
    count = hub.commit_count("me/hub-interrupted")
    # the commit lands but its answer is lost: the automatic retry finds nothing left to do (no duplicate)
    monkeypatch.setattr(hub_client, "RETRIES", 2)
    (fake_run / "training_curve.png").write_bytes(b"\x89PNG not really")
    hub.inject_fault(r"^/api/models/me/hub-interrupted/commit/", method="POST", drop_after=True)
    again = hub_mod.push_meta_model(fake_run, "me/hub-interrupted")
    assert hub.commit_count("me/hub-interrupted") == count + 1 and again.commit_sha != done.commit_sha
    assert hub.files("me/hub-interrupted")["training_curve.png"] == b"\x89PNG not really"


def test_push_pool_pins_each_teacher(hub, hf_token, hub_cache, tmp_path: Path) -> None:
    from tgr_hub.models.hub_layout import save_timm_folder

    pool = tmp_path / "mypool"
    models = {}
    for index in range(2):
        name = f"t0{index}"
        models[name] = _conv4(3, seed=20 + index)
        save_timm_folder(models[name], pool / name, architecture="conv4", num_classes=3,
                         label_names=[f"{name}/{c}" for c in "xyz"],
                         pretrained_cfg={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3})
    (pool / "repo-list.txt").write_text("# made by hand\n./t00\n./t01\n")
    entries = hub_mod.push_pool(pool, "tgr-org", progress=False)
    shas = [hub.repo(f"tgr-org/mypool-t0{i}").branches["main"] for i in range(2)]
    assert entries == [f"tgr-org/mypool-t00@{shas[0]}", f"tgr-org/mypool-t01@{shas[1]}"]
    assert set(hub.files("tgr-org/mypool-t00")) == {".gitattributes", "config.json", "model.safetensors", "README.md"}
    listed = (pool / "repo-list-hub.txt").read_text()
    assert all(entry in listed for entry in entries)
    members = load_pool(pool / "repo-list-hub.txt")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for member, name, sha in zip(members, ["t00", "t01"], shas):
        assert member.revision == sha and member.label_names == [f"{name}/{c}" for c in "xyz"]
        with torch.no_grad():
            torch.testing.assert_close(member.logits(images), models[name](member.normalize(images)))


@pytest.mark.slow
def test_cli_make_pool_push_org(hub, hf_token, hub_cache, tmp_path: Path) -> None:
    pool = tmp_path / "cli-pool"
    done = _cli("make-pool", "--dataset", "glyphs", "--domains", "latin", "--archs", "conv4", "--teachers", "2",
                "--way", "3", "--epochs", "1", "--seed", "0", "--out", str(pool), "--no-progress",
                "--push-org", "tgr-org")
    assert done.returncode == 0, done.stderr
    assert "repo-list-hub.txt" in done.stdout and WRITE_TOKEN not in done.stdout + done.stderr
    lines = (pool / "repo-list-hub.txt").read_text().splitlines()
    entries = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert [e.split("@")[0] for e in entries] == ["tgr-org/cli-pool-t00", "tgr-org/cli-pool-t01"]
    members = load_pool(pool / "repo-list-hub.txt")
    local = load_pool(pool / "repo-list.txt")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for remote_member, local_member in zip(members, local):
        assert remote_member.revision == entries[members.index(remote_member)].split("@")[1]
        with torch.no_grad():
            torch.testing.assert_close(remote_member.logits(images), local_member.logits(images), rtol=0, atol=0)


def test_private_push_needs_a_token_to_read(hub, hf_token, hub_cache, tmp_path: Path, monkeypatch) -> None:
    from tgr_hub.models.hub_layout import save_timm_folder

    save_timm_folder(_conv4(3, seed=30), tmp_path / "t00", architecture="conv4", num_classes=3, label_names=None,
                     pretrained_cfg={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3})
    pushed = hub_mod.push_teacher(tmp_path / "t00", "me/hub-private-teacher", private=True)
    assert hub.repo("me/hub-private-teacher").private
    assert hub_mod.resolve_repo("me/hub-private-teacher").sha == pushed.commit_sha  # with the token
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepoNotFoundError, match="private and no token"):
        hub_mod.resolve_repo("me/hub-private-teacher", pushed.commit_sha)


@pytest.mark.slow
def test_cli_push(hub, fake_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from tgr_hub.cli.main import main

    # the real command in its own process
    done = _cli("push", str(fake_run), "--repo", "me/hub-cli-meta", "--space", "me/hub-cli-demo",
                env={"HF_TOKEN": WRITE_TOKEN})
    assert done.returncode == 0, done.stderr
    assert f"{hub.url}/me/hub-cli-meta" in done.stdout and f"{hub.url}/spaces/me/hub-cli-demo" in done.stdout
    assert WRITE_TOKEN not in done.stdout + done.stderr
    assert hub.has_repo("me/hub-cli-demo", "space")
    # errors (in this process, through the same entry point): one line each, no traceback, no token
    cases = [
        ({}, ["push", str(fake_run), "--repo", "me/x"], "needs a Hugging Face token"),
        ({"HF_TOKEN": OTHER_TOKEN}, ["push", str(fake_run), "--repo", "me/hub-not-yours"], "may not write"),
        ({"MY_TOKEN": ""}, ["push", str(fake_run), "--repo", "me/x", "--token-env", "MY_TOKEN"], "holds no token"),
        ({"HF_TOKEN": WRITE_TOKEN}, ["push", str(tmp_path / "nothing"), "--repo", "me/x"], "does not exist"),
        ({"HF_TOKEN": WRITE_TOKEN, "HF_HUB_OFFLINE": "1"}, ["push", str(fake_run), "--repo", "me/x"], "HF_HUB_OFFLINE"),
        ({"HF_TOKEN": WRITE_TOKEN}, ["push", str(fake_run), "--repo", "me/bad--name"], "not a valid repository id"),
    ]
    for extra, args, words in cases:
        with monkeypatch.context() as mp:
            mp.delenv("HF_TOKEN", raising=False)
            for key, value in extra.items():
                mp.setenv(key, value)
            code = main(args)
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("tgr-hub: error: ") and words in lines[0], lines[0]
        assert WRITE_TOKEN not in out + err and OTHER_TOKEN not in out + err
    assert not hub.has_repo("me/hub-not-yours") and not hub.has_repo("me/x")


@pytest.mark.slow
def test_the_token_never_leaves_the_headers(hub, hf_token, hub_cache, teachers, fake_run: Path, tmp_path: Path,
                                            caplog, capfd, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_DEBUG", "1")
    hub_mod.push_meta_model(fake_run, "me/hub-secret", space_id="me/hub-secret-demo", space_app_dir=_space_app(tmp_path))
    hub_mod.resolve_many(_refs("tgr-org/hub-teacher-b\nme/hub-private\n"), progress=True)
    with pytest.raises(TgrHubError):
        hub_mod.resolve_repo("tgr-org/no-such-model")
    captured = capfd.readouterr()
    texts = [caplog.text, captured.out, captured.err]
    texts += [content.decode("utf-8", "replace") for content in hub.blobs.values()]  # every file on the Hub
    texts += [r.path for r in hub.requests]  # no token in any URL
    texts += [p.read_text("utf-8", "replace") for p in list(fake_run.rglob("*")) + list(hub_cache.rglob("*"))
              if p.is_file() and p.suffix in ("", ".json", ".md", ".txt")]
    assert all(WRITE_TOKEN not in text for text in texts)
    assert any(r.authenticated for r in hub.requests)  # ...though it was sent, in the Authorization header
    # and a text file that holds the token is refused, not uploaded
    (fake_run / "tgr_config.json").write_text(json.dumps({"note": WRITE_TOKEN}))
    with pytest.raises(PushError, match="contains the Hugging Face token") as refused:
        hub_mod.push_meta_model(fake_run, "me/hub-secret")
    assert WRITE_TOKEN not in str(refused.value)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_teachers_train_push_and_load(hub, hf_token, hub_cache, tmp_path: Path) -> None:
    """make-pool -> teachers pushed with timm's own push -> train --push -> load from the Hub."""
    import timm
    from huggingface_hub import ModelCard
    from timm.models import push_to_hf_hub

    from tgr_hub.metamodel import load_meta_model
    from tgr_hub.config import PoolBuildConfig
    from tgr_hub.teachers import make_pool

    make_pool(tmp_path / "pool", PoolBuildConfig(domains=["latin", "greek"], archs=["conv4"], teachers=3, way=5, epochs=1), seed=0, progress=False)
    lines = []
    for name in ("t00", "t01", "t02"):
        teacher = timm.create_model(f"local-dir:{tmp_path / 'pool' / name}", pretrained=True)
        config = json.loads((tmp_path / "pool" / name / "config.json").read_text())
        info = push_to_hf_hub(teacher, f"tgr-org/e2e-{name}", model_config={"label_names": config["label_names"]})
        lines.append(f"tgr-org/e2e-{name}@{info.oid}" if name == "t00" else f"tgr-org/e2e-{name}")
    (tmp_path / "hub-list.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "runs" / "e2e"
    done = _cli("train", "--pool", str(tmp_path / "hub-list.txt"), "--out", str(run), "--preset", "smoke",
                "--push", "me/e2e-meta", "--space", "me/e2e-meta-demo")
    assert done.returncode == 0, done.stderr
    assert WRITE_TOKEN not in done.stdout + done.stderr
    local = load_meta_model(run)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    remote = timm.create_model("hf-hub:me/e2e-meta", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(remote(local.normalize(images)), local(images), rtol=0, atol=0)
    card = ModelCard.load("me/e2e-meta")
    assert card.data.library_name == "timm" and card.data.base_model == [f"tgr-org/e2e-{n}" for n in ("t00", "t01", "t02")]
    assert card.data.eval_results and {"few-shot", "tgr"} <= set(card.data.tags)
    space_files = set(hub.files("me/e2e-meta-demo", repo_type="space"))
    assert {"app.py", "requirements.txt", "README.md", "tgr_model_id.txt"} <= space_files
    # the library travels with the app (tgr-hub is not on a package index)
    assert {"tgr_hub/__init__.py", "tgr_hub/fewshot_app.py", "tgr_hub/metamodel.py"} <= space_files
    recorded = json.loads((run / "tgr_config.json").read_text())["pool_members"]
    assert all(len(m["revision"]) == 40 for m in recorded)
    offline = subprocess.run(
        [sys.executable, "-c", "import sys; from tgr_hub.pool import load_pool; "
         "print([m.revision for m in load_pool(sys.argv[1])])", str(tmp_path / "hub-list.txt")],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
        capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == str([m["revision"] for m in recorded])
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".txt"):
            assert WRITE_TOKEN not in path.read_text()
