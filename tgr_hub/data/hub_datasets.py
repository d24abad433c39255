"""Hub dataset repositories through ``datasets``, pinned to the commit they resolve to.

    ref = resolve_hub_dataset("org/cifarfs", "main")   # asks the Hub (or the cache) for the commit
    ref.revision                                       # 40-hex commit id: the run record's pin
    splits = ref.load()                                # {"train": Dataset, ...}: downloads parquet shards

Resolving is cheap (repository metadata only); the shards are downloaded by :meth:`HubDataset.load`,
so a caller with a converted copy in its own cache (keyed by the commit) never downloads them.
With ``HF_HUB_OFFLINE=1`` ``datasets`` answers from its cache alone, whichever revision it holds:
asking for a full commit id that the cache does not hold is an error, not a silent substitution.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatasetError

logger = logging.getLogger(__name__)

_FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_commit_id(revision: str | None) -> bool:
    """True for a full 40-hex commit id (a revision that cannot move)."""
    return bool(revision) and bool(_FULL_COMMIT.match(str(revision)))


@dataclass
class HubDataset:
    """A Hub dataset repository resolved to one commit.

    Attributes:
        repo_id: ``org/name``.
        requested: the revision asked for (branch, tag or commit id; None: the default branch).
        revision: the commit id it resolved to (None if ``datasets`` did not report one).
    """

    repo_id: str
    requested: str | None
    revision: str | None
    _builder: Any = field(repr=False, compare=False, default=None)

    def load(self) -> dict[str, Any]:
        """Download (or reuse ``datasets``' cache of) the shards: ``{split name: datasets.Dataset}``.

        The splits are memory-mapped Arrow tables: images stay encoded until decoded one batch at a time.

        Raises:
            DatasetError: if the shards cannot be downloaded or read.
        """
        import datasets

        try:
            self._builder.download_and_prepare()
            loaded = self._builder.as_dataset()
        except Exception as error:  # noqa: BLE001 - network, disk, bad shard: all make the dataset unusable
            raise _dataset_error(
                error,
                self.repo_id,
                self.revision or self.requested,
                hint="check your network, or the datasets cache when offline",
            ) from error
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}


def _dataset_error(error: Exception, repo_id: str, revision: str | None, *, hint: str, note: str = "") -> DatasetError:
    """A :class:`DatasetError` from whatever ``datasets`` raised, worded by the one Hub failure translator
    (:func:`tgr_hub.hub.client.translate`: typed causes, tokens scrubbed), with its hint when it has one."""
    from ..hub.client import translate  # on the error path only: tgr_hub.hub pulls in push, resolve and the card

    hub_error = translate(error, repo_id, revision)
    label = repo_id + (f"@{revision}" if revision else "")
    return DatasetError(f"cannot load Hub dataset {label!r}{note}: {hub_error.args[0]}", hint=hub_error.hint or hint)


def resolve_hub_dataset(repo_id: str, revision: str | None = None) -> HubDataset:
    """Resolve ``repo_id`` at ``revision`` to a commit with ``datasets.load_dataset_builder``.

    Args:
        repo_id: ``org/name``.
        revision: branch, tag or commit id; None for the default branch.

    Returns:
        The resolved dataset (nothing downloaded but the repository's metadata).

    Raises:
        DatasetError: if the repository cannot be found or read, or (offline) the cache holds
            another commit than the full commit id asked for.
    """
    import datasets

    try:
        builder = datasets.load_dataset_builder(repo_id, revision=revision or None)
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo, bad format...
        raise _dataset_error(
            error,
            repo_id,
            revision,
            note=" (and there is no local folder of that name)",
            hint="check the id and your network (offline, only datasets already in the cache "
            "load), or pass a local folder",
        ) from error
    resolved = str(builder.hash) if is_commit_id(str(builder.hash)) else None
    if resolved is None:
        logger.warning(
            "%s: datasets reported no commit id (hash %r); the run record will not pin it", repo_id, builder.hash
        )
    if is_commit_id(revision) and resolved is not None and resolved != revision:
        # offline, datasets falls back to the newest cached commit, whatever was asked for
        raise DatasetError(
            f"Hub dataset {repo_id}@{revision} is not in the cache (it holds commit {resolved})",
            hint=f"load it once with network access, or ask for {repo_id}@{resolved}",
        )
    logger.info("Hub dataset %s@%s resolved to commit %s", repo_id, revision or "main", resolved)
    return HubDataset(repo_id, revision or None, resolved, builder)
