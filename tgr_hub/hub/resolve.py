"""Resolving teachers and meta-models on the Hub: pull, pin, offline cache, retries.

Resolving a teacher (``org/name``, ``org/name@REV``, ``hf-hub:org/name@REV``) asks the Hub
which commit the revision points to, then downloads only ``config.json`` and the safetensors
weights *at that commit* into the standard cache and returns the snapshot folder and the
commit sha, which the run records. Pickle-only repositories are refused unless the caller
opts in. With ``HF_HUB_OFFLINE=1`` everything comes from the cache; when the Hub cannot be
reached after the retries, a cached snapshot still serves (with a warning). The functions
take plain values (:class:`~tgr_hub.repo_id.RepoRef`, ids, revisions): the pool module calls
them, never the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import timm
from huggingface_hub import HfApi, constants
from tqdm.auto import tqdm

from ..errors import (
    HubError,
    NotAClassifierError,
    OfflineCacheMissError,
    PickleRefusedError,
    RunFolderError,
    TeacherNotFoundError,
    TgrHubError,
    UnknownArchitectureError,
)
from ..io import write_text_atomic
from ..models.hub_layout import read_timm_config
from ..progress import progress_bar
from ..repo_id import RepoRef, parse_repo_ref
from .client import (
    _LIBRARY,
    _SHA,
    CONFIG_FILE,
    SAFE_WEIGHTS,
    _api,
    _etag_timeout,
    _location,
    _timeout,
    _with_retries,
    hub_endpoint,
    is_offline,
    translate,
)

logger = logging.getLogger(__name__)

# Pickled checkpoint names, in the order timm prefers them (used only with allow_pickle=True).
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "open_clip_pytorch_model.bin")


PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".ckpt")


@dataclass(frozen=True)
class ResolvedRepo:
    """A Hub repository pinned to a commit and present in the local cache.

    Attributes:
        repo_id: ``org/name``.
        revision: the revision asked for (``None``: the default branch).
        sha: the 40-hex commit the revision resolved to (what a run records).
        folder: the cache snapshot folder of that commit (``config.json`` + weights).
        weights: the weights file inside ``folder``.
    """

    repo_id: str
    revision: str | None
    sha: str
    folder: Path
    weights: Path


def _pick_weights(files: Sequence[str], allow_pickle: bool, label: str, loc: dict[str, Any]) -> str:
    """The one weights file to download from a repository listing (top-level files only)."""
    top = [f for f in files if "/" not in f]
    if SAFE_WEIGHTS in top:
        return SAFE_WEIGHTS
    safe = sorted(f for f in top if f.endswith(".safetensors"))
    if safe:
        return safe[0]
    pickles = [f for f in PICKLE_WEIGHTS if f in top] + sorted(
        f for f in top if f.endswith(PICKLE_SUFFIXES) and f not in PICKLE_WEIGHTS
    )
    if pickles:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{label} has no safetensors weights, only pickled ones ({', '.join(pickles[:3])})",
                hint="pickle files can run code when loaded; ask the author for model.safetensors, "
                "or opt in with --allow-pickle (loaded with torch.load(weights_only=True))",
                **loc,
            )
        return pickles[0]
    raise TeacherNotFoundError(f"{label} holds no weights file (model.safetensors)", **loc)


def _check_config(folder: Path, label: str, loc: dict[str, Any]) -> dict[str, Any]:
    """Check, before downloading weights, that ``config.json`` describes a timm image classifier."""
    try:
        config = read_timm_config(folder)
    except NotAClassifierError as error:
        raise NotAClassifierError(
            f"{label} is not a timm image classifier: {error.args[0]}", hint=error.hint, **loc
        ) from None
    if config["num_classes"] < 1:
        raise NotAClassifierError(
            f"{label} is not an image classifier: its config.json has num_classes {config['num_classes']}",
            hint="a teacher must output class logits; feature extractors cannot be teachers",
            **loc,
        )
    if not timm.is_model(config["architecture"]):
        raise UnknownArchitectureError(
            f"{label}: timm has no architecture {config['architecture']!r}",
            hint=f"upgrade timm (installed: {timm.__version__}) or pick a timm model",
            **loc,
        )
    return config


def _record_ref(snapshot: Path, revision: str, sha: str) -> None:
    """Write ``refs/REVISION`` in the cache so an offline run finds the snapshot by its revision.

    Files are downloaded at the commit sha (never at a moving branch), and the client writes a
    ref only for the revision it was called with, so the ref is written here, atomically.
    """
    if revision == sha:
        return
    ref = snapshot.parent.parent / "refs" / revision
    if ref.is_file() and ref.read_text() == sha:
        return
    write_text_atomic(ref, sha)


class _QuietTqdm(tqdm):
    """Per-file download bars are hidden when one bar shows the progress of many repositories."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cache snapshot folder of ``repo_id`` at ``revision`` holding a config.json (None if absent)."""
    config = huggingface_hub.try_to_load_from_cache(repo_id, CONFIG_FILE, revision=revision or "main")
    return Path(config).parent if isinstance(config, str) else None


def _offline_miss(label: str, loc: dict[str, Any], what: str = "") -> OfflineCacheMissError:
    return OfflineCacheMissError(
        f"{label}{what} is not in the local Hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids "
        "downloading it",
        hint="run once with network access (the cache then serves it), or unset HF_HUB_OFFLINE",
        **loc,
    )


def _resolve_offline(repo_id: str, revision: str | None, allow_pickle: bool, loc: dict[str, Any]) -> ResolvedRepo:
    label = f"{repo_id}@{revision}" if revision else repo_id
    folder = _cached_snapshot(repo_id, revision)
    if folder is None:
        raise _offline_miss(label, loc)
    _check_config(folder, label, loc)
    present = sorted(p.name for p in folder.iterdir() if p.is_file())
    try:
        weights = _pick_weights(present, allow_pickle, label, loc)
    except TeacherNotFoundError:
        raise _offline_miss(label, loc, f" (weights of commit {folder.name[:12]})") from None
    return ResolvedRepo(repo_id, revision, folder.name, folder, folder / weights)


def _model_info(api: HfApi, repo_id: str, revision: str | None, token: str | None) -> tuple[str, list[str]]:
    """``(commit sha, file names)`` of ``repo_id`` at ``revision``: one API call, retried."""
    label = f"{repo_id}@{revision}" if revision else repo_id
    info = _with_retries(
        f"resolving {label}", lambda: api.model_info(repo_id, revision=revision, timeout=_timeout(), token=token)
    )
    sha = info.sha
    if sha is None or not _SHA.fullmatch(sha):  # a server reply, not our invariant: a mirror may omit it
        raise HubError(
            f"the Hub at {hub_endpoint()} gave no commit sha for {label} (got {sha!r})",
            hint="check HF_ENDPOINT: it must point at a Hub (or mirror) that reports commit shas",
        )
    return sha, [s.rfilename for s in (info.siblings or [])]


def _download_at(repo_id: str, filename: str, sha: str, token: str | None, quiet: bool) -> Path:
    """Download one file of ``repo_id`` at commit ``sha`` into the standard cache (retried)."""
    return Path(
        _with_retries(
            f"downloading {filename} of {repo_id}",
            lambda: huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=sha,
                endpoint=hub_endpoint(),
                etag_timeout=_etag_timeout(),
                token=token,
                tqdm_class=_QuietTqdm if quiet else None,
                **_LIBRARY,
            ),
        )
    )


def resolve_repo(
    repo_id: str,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    token: str | None = None,
    where: tuple[str | None, int | None] | None = None,
    quiet: bool = False,
) -> ResolvedRepo:
    """Pin a Hub teacher to a commit and fetch its ``config.json`` and weights into the cache.

    Online: one API call resolves ``revision`` (default branch if None) to its commit sha and
    lists the files; ``config.json`` is downloaded at that sha and checked (a timm image
    classifier with a known architecture) before the weights are; then only the weights file
    (``model.safetensors``, or a pickle with ``allow_pickle``) is downloaded, at the same sha.
    With ``HF_HUB_OFFLINE=1`` the snapshot comes from the cache alone (a branch or tag through
    the cache's ``refs``). If the Hub cannot be reached after the retries but the cache holds
    the snapshot, the cache is used with a warning.

    Args:
        repo_id: ``org/name``.
        revision: branch, tag or commit sha; None for the default branch.
        allow_pickle: accept a pickle-only repository.
        token: a token; None uses ``HF_TOKEN`` / the stored login.
        where: ``(list_file, line)`` for error messages.
        quiet: hide the client's per-file progress bars.

    Raises:
        RepoNotFoundError, GatedRepoError, RevisionNotFoundError, NotAClassifierError,
        UnknownArchitectureError, PickleRefusedError, TeacherNotFoundError,
        OfflineCacheMissError, HubError (network trouble after the retries).
    """
    label = f"{repo_id}@{revision}" if revision else repo_id
    loc = _location(where)
    if is_offline():
        return _resolve_offline(repo_id, revision, allow_pickle, loc)
    try:
        sha, files = _model_info(_api(token), repo_id, revision, token)
        if CONFIG_FILE not in files:
            raise NotAClassifierError(
                f"{label} has no config.json, so it is not a timm image classifier",
                hint="teachers are timm models saved with timm's push_to_hf_hub / save_for_hf",
                **loc,
            )
        folder = _download_at(repo_id, CONFIG_FILE, sha, token, quiet).parent
        _check_config(folder, label, loc)
        weights = _download_at(repo_id, _pick_weights(files, allow_pickle, label, loc), sha, token, quiet)
    except TgrHubError:
        raise
    except Exception as error:
        translated = translate(error, repo_id, revision, where=where, token=token)
        if type(translated) is HubError:  # the Hub is unreachable: a cached snapshot still serves
            try:
                resolved = _resolve_offline(repo_id, revision, allow_pickle, loc)
            except TgrHubError:
                raise translated from None
            logger.warning("%s; using the cached snapshot %s", translated, resolved.sha[:12])
            return resolved
        raise translated from None
    _record_ref(folder, revision or "main", sha)
    logger.info("resolved %s to commit %s", label, sha[:12])
    return ResolvedRepo(repo_id, revision, sha, folder, weights)


FIGURES = ("dissimilarity.png", "training_curve.png")  # what a run folder shows besides the weights


def download_meta_model(repo_id: str, revision: str | None = None, *, token: str | None = None) -> Path:
    """Download a meta-model repository pinned to a commit; return its cache snapshot folder.

    Fetches ``config.json``, ``model.safetensors`` and (when present) ``tgr_config.json`` and the
    figures (:data:`FIGURES`) at the
    commit ``revision`` resolves to; honours ``HF_HUB_OFFLINE`` like :func:`resolve_repo`.
    ``repo_id`` may carry ``hf-hub:`` and ``@REVISION``.

    Raises:
        RepoIdError (not a repository reference), RepoNotFoundError, GatedRepoError,
        RevisionNotFoundError, OfflineCacheMissError, HubError, and RunFolderError when the
        repository holds no meta-model.
    """
    ref = parse_repo_ref(repo_id)
    repo_id, revision = ref.repo_id, revision or ref.revision
    label = f"{repo_id}@{revision}" if revision else repo_id

    def cached() -> Path | None:
        folder = _cached_snapshot(repo_id, revision)
        return folder if folder is not None and (folder / SAFE_WEIGHTS).is_file() else None

    if is_offline():
        folder = cached()
        if folder is None:
            raise _offline_miss(label, {})
        return folder
    try:
        sha, files = _model_info(_api(token), repo_id, revision, token)
        missing = [f for f in (CONFIG_FILE, SAFE_WEIGHTS) if f not in files]
        if missing:
            raise RunFolderError(
                f"{label} is not a tgr-hub meta-model (it has no {' or '.join(missing)})",
                hint="pass the id of a repository pushed by tgr-hub push",
            )
        folder = Path()
        optional = [name for name in ("tgr_config.json", *FIGURES) if name in files]
        for name in [CONFIG_FILE, SAFE_WEIGHTS, *optional]:
            folder = _download_at(repo_id, name, sha, token, quiet=False).parent
    except TgrHubError:
        raise
    except Exception as error:
        translated = translate(error, repo_id, revision, token=token)
        folder_or_none = cached() if type(translated) is HubError else None
        if folder_or_none is None:
            raise translated from None
        logger.warning("%s; using the cached snapshot %s", translated, folder_or_none.name[:12])
        return folder_or_none
    _record_ref(folder, revision or "main", sha)
    return folder


def resolve_hub_entry(
    ref: RepoRef,
    *,
    allow_pickle: bool = False,
    where: tuple[str | None, int | None] | None = None,
) -> tuple[Path, str]:
    """Resolve a Hub teacher (a pool entry's :class:`RepoRef`) to ``(snapshot folder, commit sha)``.

    See :func:`resolve_repo`; with ``where=(list file, line)`` error messages name ``LIST_FILE:LINE``.
    """
    resolved = resolve_repo(ref.repo_id, ref.revision, allow_pickle=allow_pickle, where=where, quiet=True)
    return resolved.folder, resolved.sha


def resolve_many(
    refs: Sequence[RepoRef],
    allow_pickle: bool = False,
    max_workers: int = 8,
    *,
    progress: bool = True,
    wheres: Sequence[tuple[str | None, int | None]] | None = None,
) -> list[tuple[Path, str]]:
    """Resolve many Hub teachers concurrently, with one progress bar.

    References naming the same repository and revision are resolved once. On the first
    failure the ones not yet started are cancelled and the error of the earliest failing
    reference (in list order) is raised.

    Args:
        refs: the repositories.
        allow_pickle: accept pickle-only repositories.
        max_workers: concurrent resolutions.
        progress: show a progress bar.
        wheres: ``(list file, line)`` of each reference, for error messages.

    Returns:
        ``(snapshot folder, commit sha)`` per reference, in the order of ``refs``.
    """
    if not refs:
        return []
    keys = [(ref.repo_id, ref.revision) for ref in refs]
    first_of: dict[tuple[str, str | None], int] = {}
    for index, key in enumerate(keys):
        first_of.setdefault(key, index)
    results: dict[tuple[str, str | None], tuple[Path, str]] = {}
    failures: dict[int, BaseException] = {}
    with (
        ThreadPoolExecutor(
            max_workers=max(1, min(max_workers, len(first_of))), thread_name_prefix="tgr-hub-resolve"
        ) as pool,
        progress_bar(total=len(first_of), desc="resolving Hub teachers", unit="repo", disable=not progress) as bar,
    ):
        futures = {
            pool.submit(
                resolve_hub_entry, refs[i], allow_pickle=allow_pickle, where=wheres[i] if wheres is not None else None
            ): key
            for key, i in first_of.items()
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                key = futures[future]
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    results[key] = future.result()
                    bar.update(1)
                else:
                    failures[first_of[key]] = error
            if failures:
                for future in pending:
                    future.cancel()
    if failures:
        raise failures[min(failures)]
    return [results[key] for key in keys]
