"""Every Hugging Face Hub call of tgr-hub: resolving teachers, pushing meta-models and Spaces.

This module is the one place that talks to the Hub (DESIGN.md). It goes through the real
``huggingface_hub`` client and honours its environment:

- ``HF_ENDPOINT``: the Hub to talk to (read at call time, so a mirror or a test server works).
- ``HF_TOKEN`` / ``hf auth login``: the token, which is never logged, printed or written.
- ``HF_HUB_OFFLINE=1``: nothing goes to the network; teachers come from the local cache.
- ``HF_HUB_DOWNLOAD_TIMEOUT`` / ``HF_HUB_ETAG_TIMEOUT``: timeouts of API calls and downloads.
- ``HF_HUB_CACHE`` / ``HF_HOME``: where the standard cache lives.

Resolving a teacher (``org/name``, ``org/name@REV``, ``hf-hub:org/name@REV``) asks the Hub
which commit the revision points to, then downloads only ``config.json`` and the safetensors
weights *at that commit* into the standard cache and returns the snapshot folder and the
commit sha, which the run records. Pickle-only repositories are refused unless the caller
opts in. Transient failures (connection errors, timeouts, 408/429/5xx) are retried with
exponential backoff (``TGR_HUB_RETRIES`` attempts after the first, ``TGR_HUB_RETRY_WAIT``
seconds before the first retry); every other failure becomes a typed error of
:mod:`tgr_hub.errors` with a short message.

Pushing writes all files of a repository in one commit (new files, changed files, and the
deletion of stale files we manage), so a re-push is one new commit, a push that changes
nothing is no commit, and an interrupted push leaves the repository as it was: running the
same push again completes it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
from huggingface_hub import errors as hf_errors
from tqdm.auto import tqdm

from . import __version__
from .errors import (
    GatedRepoError,
    HubError,
    NotAClassifierError,
    OfflineCacheMissError,
    PickleRefusedError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    RunFolderError,
    TeacherNotFoundError,
    TgrHubError,
    UnknownArchitectureError,
)
from .io import write_text_atomic
from .repo_id import RepoRef, parse_repo_ref

logger = logging.getLogger(__name__)

__all__ = [
    "PushResult",
    "ResolvedRepo",
    "download_meta_model",
    "hub_endpoint",
    "is_offline",
    "push_meta_model",
    "push_pool",
    "push_space",
    "push_teacher",
    "resolve_hub_entry",
    "resolve_many",
    "resolve_repo",
]

T = TypeVar("T")

CONFIG_FILE = "config.json"
SAFE_WEIGHTS = "model.safetensors"
# Pickled checkpoint names, in the order timm prefers them (used only with allow_pickle=True).
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "open_clip_pytorch_model.bin")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".ckpt")
_SHA = re.compile(r"[0-9a-f]{40}")
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_LIBRARY = {"library_name": "tgr-hub", "library_version": __version__}

# Retries of transient failures; module attributes so callers (and tests) can tune them.
RETRIES = int(os.environ.get("TGR_HUB_RETRIES", "3"))
RETRY_WAIT = float(os.environ.get("TGR_HUB_RETRY_WAIT", "1.0"))
MAX_RETRY_WAIT = 30.0


# --- environment -------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub URL in use: ``HF_ENDPOINT`` at call time, else the client's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network at all."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.upper() in constants.ENV_VARS_TRUE_VALUES
    return bool(constants.HF_HUB_OFFLINE)


def _timeout() -> float:
    return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _etag_timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT)


def _api(token: str | None = None) -> HfApi:
    return HfApi(endpoint=hub_endpoint(), token=token, **_LIBRARY)


def _known_token(token: str | None = None) -> str | None:
    return token or huggingface_hub.get_token()


def _scrub(text: str, token: str | None = None) -> str:
    """``text`` without any token in it (the explicit one, the configured one, or any ``hf_...``)."""
    for secret in {token, huggingface_hub.get_token()}:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def _short(error: BaseException, token: str | None = None) -> str:
    """The first meaningful line of an error, scrubbed of tokens, at most 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if re.fullmatch(r"\d{3} Client Error\.?", text) and len(lines) > 1:
        text = f"{text} {lines[1]}"
    text = _scrub(text, token)
    return text if len(text) <= 200 else text[:197] + "..."


# --- retries and error translation ---------------------------------------------------------


def _transient_exceptions() -> tuple[type[BaseException], ...]:
    try:
        import httpx2 as httpx  # the HTTP library of huggingface_hub >= 2
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx  # type: ignore[no-redef]
    return (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, ConnectionError, TimeoutError)


def _is_transient(error: BaseException) -> bool:
    """Connection trouble, timeouts and 408/429/5xx answers: worth another try."""
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return False
    if isinstance(error, _transient_exceptions()):
        return True
    if isinstance(error, hf_errors.HfHubHTTPError):
        response = getattr(error, "response", None)
        return response is not None and response.status_code in _TRANSIENT_STATUS
    if isinstance(error, hf_errors.LocalEntryNotFoundError) and not is_offline():
        # hf_hub_download reports "could not reach the Hub and not cached" this way; the cause says why.
        cause = error.__cause__
        return cause is not None and _is_transient(cause)
    return False


def _with_retries(what: str, call: Callable[[], T]) -> T:
    """Run ``call``; retry transient failures with exponential backoff, re-raise the rest."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            if attempt >= RETRIES or not _is_transient(error):
                raise
            delay = min(MAX_RETRY_WAIT, RETRY_WAIT * 2**attempt)
            attempt += 1
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, _short(error), attempt, RETRIES, delay)
            time.sleep(delay)


def _location(where: tuple[str | None, int | None] | None) -> dict[str, Any]:
    if where is None or where[1] is None:
        return {}
    return {"path": where[0] or "<pool>", "line": where[1]}


def _translate(
    error: Exception,
    repo_id: str,
    revision: str | None,
    *,
    where: tuple[str | None, int | None] | None = None,
    token: str | None = None,
) -> TgrHubError:
    """Turn a ``huggingface_hub`` (or network) error about ``repo_id`` into a tgr-hub error."""
    label = f"{repo_id}@{revision}" if revision else repo_id
    loc = _location(where)
    has_token = _known_token(token) is not None
    if isinstance(error, TgrHubError):
        return error
    if isinstance(error, hf_errors.GatedRepoError):
        return GatedRepoError(
            f"{label} is gated and " + ("this token has no access to it" if has_token else "no token was given"),
            hint="accept the repository's conditions on the Hub, then set HF_TOKEN to a token of that account",
            **loc,
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"revision {revision!r} does not exist in {repo_id}",
            hint="use a branch, a tag or a full commit sha of the repository", **loc,
        )
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        why = "or this token has no access to it" if has_token else "or it is private and no token was given"
        return RepoNotFoundError(
            f"repository {repo_id} not found on {hub_endpoint()}, {why}",
            hint="check the id; for a private repository set HF_TOKEN or run `hf auth login`", **loc,
        )
    if isinstance(error, hf_errors.HFValidationError):
        return RepoNotFoundError(f"{label} is not a valid Hub repository id: {_short(error, token)}", **loc)
    if is_offline() and isinstance(error, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        return OfflineCacheMissError(
            f"{label} is not in the local Hub cache and HF_HUB_OFFLINE=1 forbids downloading it",
            hint="run once with network access (the cache then serves it), or unset HF_HUB_OFFLINE", **loc,
        )
    if _is_transient(error) or isinstance(error, hf_errors.LocalEntryNotFoundError):
        return HubError(
            f"could not reach the Hub at {hub_endpoint()} for {label} ({_short(error, token)})",
            hint="check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache",
        )
    if isinstance(error, hf_errors.HfHubHTTPError):
        return HubError(f"the Hub refused a request about {label}: {_short(error, token)}")
    return HubError(f"Hub request about {label} failed: {type(error).__name__}: {_short(error, token)}")


# --- resolving teachers --------------------------------------------------------------------


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
        f for f in top if f.endswith(PICKLE_SUFFIXES) and f not in PICKLE_WEIGHTS)
    if pickles:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{label} has no safetensors weights, only pickled ones ({', '.join(pickles[:3])})",
                hint="pickle files can run code when loaded; ask the author for model.safetensors, "
                "or opt in with --allow-pickle (loaded with torch.load(weights_only=True))", **loc,
            )
        return pickles[0]
    raise TeacherNotFoundError(f"{label} holds no weights file (model.safetensors)", **loc)


def _check_config(folder: Path, label: str, loc: dict[str, Any]) -> dict[str, Any]:
    """Check, before downloading weights, that ``config.json`` describes a timm image classifier."""
    from .models.hub_layout import read_timm_config

    try:
        config = read_timm_config(folder)
    except NotAClassifierError as error:
        raise NotAClassifierError(f"{label} is not a timm image classifier: {error.args[0]}",
                                  hint=error.hint, **loc) from None
    if config["num_classes"] < 1:
        raise NotAClassifierError(
            f"{label} is not an image classifier: its config.json has num_classes {config['num_classes']}",
            hint="a teacher must output class logits; feature extractors cannot be teachers", **loc,
        )
    import timm

    if not timm.is_model(config["architecture"]):
        raise UnknownArchitectureError(
            f"{label}: timm has no architecture {config['architecture']!r}",
            hint=f"upgrade timm (installed: {timm.__version__}) or pick a timm model", **loc,
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


class _QuietTqdm(tqdm):  # type: ignore[misc]
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
        hint="run once with network access (the cache then serves it), or unset HF_HUB_OFFLINE", **loc,
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
    info = _with_retries(f"resolving {label}", lambda: api.model_info(
        repo_id, revision=revision, timeout=_timeout(), token=token))
    sha = info.sha
    if sha is None or not _SHA.fullmatch(sha):  # a server reply, not our invariant: a mirror may omit it
        raise HubError(f"the Hub at {hub_endpoint()} gave no commit sha for {label} (got {sha!r})",
                       hint="check HF_ENDPOINT: it must point at a Hub (or mirror) that reports commit shas")
    return sha, [s.rfilename for s in (info.siblings or [])]


def _download_at(repo_id: str, filename: str, sha: str, token: str | None, quiet: bool) -> Path:
    """Download one file of ``repo_id`` at commit ``sha`` into the standard cache (retried)."""
    return Path(_with_retries(f"downloading {filename} of {repo_id}", lambda: huggingface_hub.hf_hub_download(
        repo_id, filename, revision=sha, endpoint=hub_endpoint(), etag_timeout=_etag_timeout(),
        token=token, tqdm_class=_QuietTqdm if quiet else None, **_LIBRARY)))


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
            raise NotAClassifierError(f"{label} has no config.json, so it is not a timm image classifier",
                                      hint="teachers are timm models saved with timm's push_to_hf_hub / save_for_hf",
                                      **loc)
        folder = _download_at(repo_id, CONFIG_FILE, sha, token, quiet).parent
        _check_config(folder, label, loc)
        weights = _download_at(repo_id, _pick_weights(files, allow_pickle, label, loc), sha, token, quiet)
    except TgrHubError:
        raise
    except Exception as error:
        translated = _translate(error, repo_id, revision, where=where, token=token)
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
            raise RunFolderError(f"{label} is not a tgr-hub meta-model (it has no {' or '.join(missing)})",
                                 hint="pass the id of a repository pushed by tgr-hub push")
        folder = Path()
        optional = [name for name in ("tgr_config.json", *FIGURES) if name in files]
        for name in [CONFIG_FILE, SAFE_WEIGHTS, *optional]:
            folder = _download_at(repo_id, name, sha, token, quiet=False).parent
    except TgrHubError:
        raise
    except Exception as error:
        translated = _translate(error, repo_id, revision, token=token)
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
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(first_of))),
                            thread_name_prefix="tgr-hub-resolve") as pool, \
            tqdm(total=len(first_of), desc="resolving Hub teachers", unit="repo", disable=not progress) as bar:
        futures = {pool.submit(resolve_hub_entry, refs[i], allow_pickle=allow_pickle,
                               where=wheres[i] if wheres is not None else None): key
                   for key, i in first_of.items()}
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


# --- pushing -------------------------------------------------------------------------------


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
        raise PushError("pushing needs a Hugging Face token and none was found",
                        hint="set HF_TOKEN to a write token, or run `hf auth login`")
    return found


def _repo_url(repo_id: str, repo_type: str = "model") -> str:
    prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[repo_type]
    return f"{hub_endpoint()}/{prefix}{repo_id}"


def _push_failure(error: Exception, repo_id: str, token: str, what: str) -> PushError:
    if isinstance(error, TgrHubError):
        return error if isinstance(error, PushError) else PushError(f"{what}: {error}")
    if isinstance(error, hf_errors.HfHubHTTPError) and getattr(error, "response", None) is not None:
        status = error.response.status_code
        if status in (401, 403):
            return PushError(f"{what}: the token may not write to {repo_id} ({_short(error, token)})",
                             hint="use a token with write access to that user or organisation")
    if isinstance(error, hf_errors.HFValidationError):
        return PushError(f"{what}: {repo_id!r} is not a valid repository id ({_short(error, token)})",
                         hint="use NAMESPACE/NAME with letters, digits, '-', '_' and '.'")
    if _is_transient(error):
        return PushError(f"{what}: could not reach the Hub at {hub_endpoint()} ({_short(error, token)})",
                         hint="nothing half-written was left behind; run the same push again")
    return PushError(f"{what}: {_short(error, token)}")


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
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(content) if isinstance(content, Path) else content)
            for path, content in sorted(files.items())
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in sorted(remote - set(files)) if stale(path)]
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
        return str(info.oid)

    return _with_retries(f"committing to {repo_id}", attempt)


def _ensure_repo(api: HfApi, repo_id: str, *, repo_type: str = "model", private: bool = False, **kwargs: Any) -> None:
    _with_retries(f"creating {repo_id}", lambda: api.create_repo(
        repo_id, repo_type=repo_type, private=private or None, exist_ok=True, **kwargs))
    if private:  # an existing public repository is made private, as asked
        _with_retries(f"making {repo_id} private", lambda: api.update_repo_settings(
            repo_id, private=True, repo_type=repo_type))


def _check_no_token(files: dict[str, Path | bytes], token: str) -> None:
    """Refuse to upload a text file that contains the token (it must never reach a repository)."""
    for path, content in files.items():
        if path.endswith((".json", ".md", ".txt", ".py", ".yaml", ".yml", ".cfg", ".toml")):
            data = content.read_bytes() if isinstance(content, Path) else content
            if token.encode() in data:
                raise PushError(f"{path} contains the Hugging Face token; refusing to upload it",
                                hint="remove the token from that file")


def _managed_model_file(path: str) -> bool:
    """Files a meta-model push owns in its repository (deleted when a new push no longer has them)."""
    return "/" not in path and (path in ("config.json", "tgr_config.json", "README.md") or path.endswith(
        (".png", ".jpg", ".svg", ".safetensors", ".bin", ".pth", ".pt")))


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
    candidate = Path(__file__).resolve().parent.parent / "spaces_app"
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
    package = Path(__file__).resolve().parent
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
    from .card import build_space_readme

    token = _push_token(token)
    folder = Path(app_dir) if app_dir is not None else default_space_app_dir()
    if folder is None or not (folder / "app.py").is_file():
        raise PushError(f"no Space app found ({folder or 'spaces_app/'} has no app.py)",
                        hint="pass the folder holding app.py and requirements.txt (space_app_dir=...)")
    api = _api(token)
    files: dict[str, Path | bytes] = dict(_space_files(folder))
    files.update(_library_files())
    files["README.md"] = build_space_readme(folder, space_id, model_id, license=license).encode()
    files["tgr_model_id.txt"] = (model_id + "\n").encode()
    _check_no_token(files, token)
    variable = [{"key": "TGR_MODEL_ID", "value": model_id}]
    try:
        _ensure_repo(api, space_id, repo_type="space", private=private, space_sdk="gradio", space_variables=variable)
        sha = _commit_files(api, space_id, files, repo_type="space", message=f"Demo of {model_id} (tgr-hub {__version__})",
                            stale=lambda path: path != ".gitattributes")
    except Exception as error:
        raise _push_failure(error, space_id, token, f"pushing the Space {space_id}") from None
    try:
        _with_retries(f"setting TGR_MODEL_ID of {space_id}", lambda: api.add_space_variable(
            space_id, "TGR_MODEL_ID", model_id, description="meta-model the demo loads"))
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
    from .card import build_model_card
    from .metamodel import TGR_CONFIG_NAME, find_meta_model_folder

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
        sha = _commit_files(api, repo_id, files, repo_type="model",
                            message=commit_message or f"Upload tgr-hub meta-model (tgr-hub {__version__})",
                            stale=_managed_model_file)
    except Exception as error:
        raise _push_failure(error, repo_id, token, f"pushing {repo_id}") from None
    result = PushResult(repo_id, _repo_url(repo_id), sha)
    logger.info("pushed %s at commit %s", result.repo_url, sha[:12])
    if space_id:
        result.space_id = space_id
        result.space_url, result.space_commit_sha = push_space(
            space_id, repo_id, app_dir=space_app_dir, private=private, token=token, license=license)
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
    from .card import build_teacher_card
    from .models.hub_layout import read_timm_config

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
        sha = _commit_files(api, repo_id, files, repo_type="model", message=f"Upload teacher {folder.name}",
                            stale=_managed_model_file)
    except Exception as error:
        raise _push_failure(error, repo_id, token, f"pushing {repo_id}") from None
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
    teachers = ([Path(t) for t in teachers] if teachers is not None
                else sorted(p for p in pool_dir.iterdir() if (p / "config.json").is_file()))
    if not teachers:
        raise RunFolderError(f"{pool_dir} holds no teacher folder", hint="run tgr-hub make-pool first")
    prefix = f"{pool_dir.resolve().name}-" if prefix is None else prefix
    token = _push_token(token)
    repo_ids = [f"{org}/{prefix}{folder.name}" for folder in teachers]
    shas: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(teachers)))) as pool, \
            tqdm(total=len(teachers), desc=f"pushing teachers to {org}", unit="repo", disable=not progress) as bar:
        futures = {pool.submit(push_teacher, folder, repo_id, private=private, token=token): repo_id
                   for folder, repo_id in zip(teachers, repo_ids)}
        for future in futures:  # in order: the first failure is the one reported
            shas[futures[future]] = future.result().commit_sha
            bar.update(1)
    entries = [f"{repo_id}@{shas[repo_id]}" for repo_id in repo_ids]
    lines = [f"# tgr-hub push-pool: {len(entries)} teachers of {pool_dir.name} pushed to {org}, pinned to their commits"]
    lines += [f"{entry}  # {folder.name}" for entry, folder in zip(entries, teachers)]
    target = pool_dir / "repo-list-hub.txt"
    write_text_atomic(target, "\n".join(lines) + "\n")
    logger.info("pushed %d teachers to %s; list in %s", len(entries), org, target)
    return entries
