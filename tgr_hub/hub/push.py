"""Pushing to the Hub: meta-model repositories, teachers, pools and the demo Space.

Pushing writes all files of a repository in one commit (new files, changed files, and the
deletion of stale files we manage), so a re-push is one new commit, a push that changes
nothing is no commit, and an interrupted push leaves the repository as it was: running the
same push again completes it. The token is never logged, and a text file holding it is
never uploaded.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from .. import __version__
from ..card import build_model_card, build_space_readme, build_teacher_card
from ..errors import PushError, RunFolderError, TeacherNotFoundError
from ..io import write_text_atomic
from ..metamodel import TGR_CONFIG_NAME, find_meta_model_folder
from ..models.hub_layout import read_timm_config
from ..progress import progress_bar
from .client import SAFE_WEIGHTS, _api, _known_token, _short, _with_retries, hub_endpoint, is_offline, translate

logger = logging.getLogger(__name__)

#: The package whose sources a Space ships (tgr_hub/), and the checkout it lives in.
_PACKAGE = Path(__file__).resolve().parent.parent
_CHECKOUT = _PACKAGE.parent


@dataclass
class PushResult:
    """Where a push went.

    Attributes:
        repo_id, repo_url, commit_sha: the model repository and the commit now at its head.
        space_id, space_url, space_commit_sha: the Space, when one was pushed.
    """

    repo_id: str
    repo_url: str
    commit_sha: str
    space_id: str | None = None
    space_url: str | None = None
    space_commit_sha: str | None = None

    @property
    def urls(self) -> list[str]:
        return [u for u in (self.repo_url, self.space_url) if u]


def _push_token(token: str | None) -> str:
    if is_offline():
        raise PushError("cannot push while HF_HUB_OFFLINE=1", hint="unset HF_HUB_OFFLINE to push")
    found = _known_token(token)
    if not found:
        raise PushError(
            "pushing needs a Hugging Face token and none was found",
            hint="set HF_TOKEN to a write token, or run `hf auth login`",
        )
    return found


def _repo_url(repo_id: str, repo_type: str = "model") -> str:
    prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[repo_type]
    return f"{hub_endpoint()}/{prefix}{repo_id}"


def _commit_files(
    api: HfApi,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    repo_type: str,
    message: str,
    stale: Callable[[str], bool],
) -> str:
    """Make the repository hold ``files`` in one commit; return the head commit sha.

    Files in the repository that ``stale`` claims and that are not in ``files`` are deleted in
    the same commit. Unchanged files are skipped by the client, so pushing the same content
    again creates no commit. The commit is all or nothing on the Hub's side; on a transient
    failure the whole step (listing included) is retried, which is safe: if the lost commit
    did land, the retry finds nothing left to change.
    """

    def attempt() -> str:
        remote = set(api.list_repo_files(repo_id, repo_type=repo_type))
        operations: list[Any] = [
            CommitOperationAdd(
                path_in_repo=path, path_or_fileobj=str(content) if isinstance(content, Path) else content
            )
            for path, content in sorted(files.items())
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in sorted(remote - set(files)) if stale(path)]
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
        return str(info.oid)

    return _with_retries(f"committing to {repo_id}", attempt)


def _ensure_repo(api: HfApi, repo_id: str, *, repo_type: str = "model", private: bool = False, **kwargs: Any) -> None:
    _with_retries(
        f"creating {repo_id}",
        lambda: api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True, **kwargs),
    )
    if private:  # an existing public repository is made private, as asked
        _with_retries(
            f"making {repo_id} private", lambda: api.update_repo_settings(repo_id, private=True, repo_type=repo_type)
        )


def _check_no_token(files: dict[str, Path | bytes], token: str) -> None:
    """Refuse to upload a text file that contains the token (it must never reach a repository)."""
    for path, content in files.items():
        if path.endswith((".json", ".md", ".txt", ".py", ".yaml", ".yml", ".cfg", ".toml")):
            data = content.read_bytes() if isinstance(content, Path) else content
            if token.encode() in data:
                raise PushError(
                    f"{path} contains the Hugging Face token; refusing to upload it",
                    hint="remove the token from that file",
                )


def _managed_model_file(path: str) -> bool:
    """Files a meta-model push owns in its repository (deleted when a new push no longer has them)."""
    return "/" not in path and (
        path in ("config.json", "tgr_config.json", "README.md")
        or path.endswith((".png", ".jpg", ".svg", ".safetensors", ".bin", ".pth", ".pt"))
    )


def _figures(*folders: Path) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    for folder in folders:
        for pattern in ("*.png", "figures/*.png"):
            for path in sorted(folder.glob(pattern)):
                if path.is_file() and ".tmp" not in path.name:
                    figures.setdefault(path.name, path)
    return figures


def default_space_app_dir() -> Path | None:
    """The ``spaces_app/`` folder of a source checkout of tgr-hub (None if absent)."""
    candidate = _CHECKOUT / "spaces_app"
    return candidate if (candidate / "app.py").is_file() else None


def _space_files(app_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(app_dir.rglob("*")):
        relative = path.relative_to(app_dir).as_posix()
        parts = relative.split("/")
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        if relative == "README.md" or path.suffix in (".pyc", ".pyo") or fnmatch.fnmatch(path.name, "*.tmp"):
            continue
        files[relative] = path
    return files


def _library_files() -> dict[str, Path]:
    """The tgr_hub package's sources, shipped inside the Space so that the app imports them
    without tgr-hub being on a package index (the Space's requirements.txt lists its dependencies)."""
    package = _PACKAGE
    return {
        f"tgr_hub/{path.relative_to(package).as_posix()}": path
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def push_space(
    space_id: str,
    model_id: str,
    *,
    app_dir: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    license: str = "apache-2.0",
) -> tuple[str, str]:
    """Create or update a Gradio Space that demonstrates ``model_id``; one commit.

    The Space gets the files of ``app_dir`` (default: the ``spaces_app/`` folder of this
    checkout), a ``README.md`` whose front matter says ``sdk: gradio``, ``app_file: app.py``
    and ``models: [model_id]``, a ``tgr_model_id.txt`` holding ``model_id``, and the Space
    variable ``TGR_MODEL_ID=model_id`` that the app reads.

    Returns:
        ``(space url, head commit sha)``.
    """
    token = _push_token(token)
    folder = Path(app_dir) if app_dir is not None else default_space_app_dir()
    if folder is None or not (folder / "app.py").is_file():
        raise PushError(
            f"no Space app found ({folder or 'spaces_app/'} has no app.py)",
            hint="pass the folder holding app.py and requirements.txt (space_app_dir=...)",
        )
    api = _api(token)
    files: dict[str, Path | bytes] = dict(_space_files(folder))
    files.update(_library_files())
    files["README.md"] = build_space_readme(folder, space_id, model_id, license=license).encode()
    files["tgr_model_id.txt"] = (model_id + "\n").encode()
    _check_no_token(files, token)
    variable = [{"key": "TGR_MODEL_ID", "value": model_id}]
    try:
        _ensure_repo(api, space_id, repo_type="space", private=private, space_sdk="gradio", space_variables=variable)
        sha = _commit_files(
            api,
            space_id,
            files,
            repo_type="space",
            message=f"Demo of {model_id} (tgr-hub {__version__})",
            stale=lambda path: path != ".gitattributes",
        )
    except Exception as error:
        raise translate(error, space_id, token=token, action=f"pushing the Space {space_id}") from None
    try:
        _with_retries(
            f"setting TGR_MODEL_ID of {space_id}",
            lambda: api.add_space_variable(space_id, "TGR_MODEL_ID", model_id, description="meta-model the demo loads"),
        )
    except Exception as error:  # the README and tgr_model_id.txt still name the model
        logger.warning("could not set the Space variable TGR_MODEL_ID of %s (%s)", space_id, _short(error, token))
    url = _repo_url(space_id, "space")
    logger.info("pushed Space %s at commit %s", url, sha[:12])
    return url, sha


def push_meta_model(
    run_or_model_folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    space_id: str | None = None,
    token: str | None = None,
    license: str = "apache-2.0",
    space_app_dir: str | Path | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Push a meta-model (and optionally its demo Space) to the Hub.

    The model repository receives, in one commit: ``config.json`` and ``model.safetensors``
    (timm layout: ``timm.create_model("hf-hub:REPO", pretrained=True)`` loads it),
    ``tgr_config.json``, the figures (``*.png``), and the model card ``README.md`` built by
    :func:`tgr_hub.card.build_model_card`. Files of an earlier push that this one no longer has
    (an old figure, a pickled checkpoint) are deleted in the same commit.

    Args:
        run_or_model_folder: a run folder (``runs/NAME``, with ``meta_model/``) or a meta-model folder.
        repo_id: ``namespace/name`` of the model repository (created if missing).
        private: create (or switch) the repositories as private.
        space_id: also push the Gradio Space ``namespace/name`` set up to load ``repo_id``.
        token: a write token; None uses ``HF_TOKEN`` / the stored login. Never logged or written.
        license: license identifier for the card.
        space_app_dir: the Space app folder (default ``spaces_app/`` of this checkout).
        commit_message: defaults to ``"Upload tgr-hub meta-model"``.

    Raises:
        RunFolderError: the folder holds no complete meta-model.
        PushError: no token, no write access, the Hub unreachable after retries, offline mode.
    """
    run = Path(run_or_model_folder)
    model_folder = find_meta_model_folder(run)
    tgr_config = next((p for p in (model_folder / TGR_CONFIG_NAME, run / TGR_CONFIG_NAME) if p.is_file()), None)
    if tgr_config is None:
        raise RunFolderError(f"{run} has no {TGR_CONFIG_NAME}", hint="push the folder written by tgr-hub train")
    token = _push_token(token)
    card = build_model_card(run, repo_id, space_id=space_id, license=license)
    files: dict[str, Path | bytes] = {
        "config.json": model_folder / "config.json",
        "model.safetensors": model_folder / "model.safetensors",
        TGR_CONFIG_NAME: tgr_config,
        **_figures(model_folder, run),
        "README.md": str(card).encode(),
    }
    _check_no_token(files, token)
    api = _api(token)
    try:
        _ensure_repo(api, repo_id, private=private)
        sha = _commit_files(
            api,
            repo_id,
            files,
            repo_type="model",
            message=commit_message or f"Upload tgr-hub meta-model (tgr-hub {__version__})",
            stale=_managed_model_file,
        )
    except Exception as error:
        raise translate(error, repo_id, token=token, action=f"pushing {repo_id}") from None
    result = PushResult(repo_id, _repo_url(repo_id), sha)
    logger.info("pushed %s at commit %s", result.repo_url, sha[:12])
    if space_id:
        result.space_id = space_id
        result.space_url, result.space_commit_sha = push_space(
            space_id, repo_id, app_dir=space_app_dir, private=private, token=token, license=license
        )
    return result


def push_teacher(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    license: str = "apache-2.0",
) -> PushResult:
    """Push one teacher folder (timm layout) as its own model repository, in one commit.

    Uploads ``config.json``, ``model.safetensors`` and a model card; pickled files are never
    uploaded.

    Raises:
        TeacherNotFoundError / NotAClassifierError: the folder is not a saved timm classifier.
        PushError: as :func:`push_meta_model`.
    """
    folder = Path(folder)
    config = read_timm_config(folder)
    if not (folder / SAFE_WEIGHTS).is_file():
        raise TeacherNotFoundError(f"{folder} has no {SAFE_WEIGHTS}", hint="teachers are pushed as safetensors only")
    token = _push_token(token)
    files: dict[str, Path | bytes] = {
        "config.json": folder / "config.json",
        SAFE_WEIGHTS: folder / SAFE_WEIGHTS,
        "README.md": str(build_teacher_card(folder, repo_id, config=config, license=license)).encode(),
    }
    _check_no_token(files, token)
    api = _api(token)
    try:
        _ensure_repo(api, repo_id, private=private)
        sha = _commit_files(
            api, repo_id, files, repo_type="model", message=f"Upload teacher {folder.name}", stale=_managed_model_file
        )
    except Exception as error:
        raise translate(error, repo_id, token=token, action=f"pushing {repo_id}") from None
    return PushResult(repo_id, _repo_url(repo_id), sha)


def push_pool(
    pool_dir: str | Path,
    org: str,
    *,
    private: bool = False,
    token: str | None = None,
    prefix: str | None = None,
    max_workers: int = 4,
    progress: bool = True,
    teachers: Sequence[str | Path] | None = None,
) -> list[str]:
    """Push every teacher of a pool folder as its own repository and write ``repo-list-hub.txt``.

    Teacher ``tNN`` becomes ``ORG/{prefix}tNN`` (``prefix`` defaults to the pool folder's name
    and a dash, so pools do not overwrite each other). ``POOL/repo-list-hub.txt`` lists the
    repositories pinned to the commit just pushed (``ORG/NAME@SHA``), usable as ``--pool``.

    ``teachers`` are the teacher folders, in order (:func:`tgr_hub.pool.pool_folders` gives the
    local entries of ``POOL/repo-list.txt``); by default every sub-folder holding a
    ``config.json``, sorted by name.

    Returns:
        The pinned entries, in pool order.
    """
    pool_dir = Path(pool_dir)
    if not pool_dir.is_dir():
        raise RunFolderError(f"pool folder {pool_dir} does not exist", hint="run tgr-hub make-pool first")
    folders: list[Path] = (
        [Path(t) for t in teachers]
        if teachers is not None
        else sorted(p for p in pool_dir.iterdir() if (p / "config.json").is_file())
    )
    if not folders:
        raise RunFolderError(f"{pool_dir} holds no teacher folder", hint="run tgr-hub make-pool first")
    prefix = f"{pool_dir.resolve().name}-" if prefix is None else prefix
    token = _push_token(token)
    repo_ids = [f"{org}/{prefix}{folder.name}" for folder in folders]
    shas: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(folders)))) as pool,
        progress_bar(total=len(folders), desc=f"pushing teachers to {org}", unit="repo", disable=not progress) as bar,
    ):
        futures = {
            pool.submit(push_teacher, folder, repo_id, private=private, token=token): repo_id
            for folder, repo_id in zip(folders, repo_ids)
        }
        for future in futures:  # in order: the first failure is the one reported
            shas[futures[future]] = future.result().commit_sha
            bar.update(1)
    entries = [f"{repo_id}@{shas[repo_id]}" for repo_id in repo_ids]
    lines = [
        f"# tgr-hub push-pool: {len(entries)} teachers of {pool_dir.name} pushed to {org}, pinned to their commits"
    ]
    lines += [f"{entry}  # {folder.name}" for entry, folder in zip(entries, folders)]
    target = pool_dir / "repo-list-hub.txt"
    write_text_atomic(target, "\n".join(lines) + "\n")
    logger.info("pushed %d teachers to %s; list in %s", len(entries), org, target)
    return entries
