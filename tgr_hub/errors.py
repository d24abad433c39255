"""The exceptions users of tgr-hub catch.

Every error subclasses :class:`TgrHubError` *and* the standard exception it
behaves like (``ValueError``, ``FileNotFoundError``, ``OSError``...), so code that
does not know about tgr-hub still handles it sensibly. Messages say what was wrong
and how to fix it; the CLI prints them as one line without a traceback.
"""

from __future__ import annotations


class TgrHubError(Exception):
    """Base class of every error tgr-hub raises on bad input or environment."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.hint})" if self.hint else message


# --- configuration ---------------------------------------------------------------------


class ConfigError(TgrHubError, ValueError):
    """A config file, preset or ``--set`` override is invalid."""


class GroupingError(ConfigError):
    """The dissimilarity matrix or the grouping options are invalid."""


# --- data ------------------------------------------------------------------------------


class DatasetError(TgrHubError, ValueError):
    """A dataset cannot be loaded or is unsuitable (too few classes, no image column...)."""


class RepoIdError(TgrHubError, ValueError):
    """A text is not a Hub repository reference (``org/name``, ``org/name@REV``, ``hf-hub:...``)."""


class EpisodeError(TgrHubError, ValueError):
    """An N-way K-shot episode cannot be drawn from a split (too few classes or images)."""


# --- pool ------------------------------------------------------------------------------


class PoolError(TgrHubError, ValueError):
    """A pool list or one of its entries is invalid.

    ``path`` and ``line`` name the offending place in the repo-list file when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}", hint=hint)
        self.path = path
        self.line = line


class PoolSyntaxError(PoolError):
    """A line of a repo-list file matches none of the accepted entry forms."""


class PoolListNotFoundError(PoolError, FileNotFoundError):
    """The repo-list file itself does not exist."""


class EmptyPoolError(PoolError):
    """A repo-list file lists no teacher at all."""


class TeacherNotFoundError(PoolError, FileNotFoundError):
    """A local teacher folder, or a file it needs (config.json, weights), does not exist."""


class UnknownArchitectureError(PoolError):
    """A teacher's config names an architecture timm does not know."""


class WeightsMismatchError(PoolError):
    """A teacher's weights do not fit the model its config describes."""


class PickleRefusedError(PoolError):
    """Only pickled weights exist and the user did not opt in to loading them."""


class NotAClassifierError(PoolError):
    """A repository is not a timm image classifier (no usable config.json)."""


# --- Hub -------------------------------------------------------------------------------


class HubError(TgrHubError, OSError):
    """A Hub operation failed."""


class RepoNotFoundError(HubError, PoolError):
    """The repository does not exist, or is private/gated and no valid token was given."""

    def __init__(self, message: str, **kwargs) -> None:  # noqa: D107 - PoolError signature
        PoolError.__init__(self, message, **kwargs)


class GatedRepoError(RepoNotFoundError):
    """The repository is gated or private and needs a token with access."""


class RevisionNotFoundError(HubError, PoolError):
    """The requested branch, tag or commit does not exist in the repository."""

    def __init__(self, message: str, **kwargs) -> None:  # noqa: D107
        PoolError.__init__(self, message, **kwargs)


class OfflineCacheMissError(HubError, PoolError):
    """``HF_HUB_OFFLINE=1`` is set and the files are not in the local cache."""

    def __init__(self, message: str, **kwargs) -> None:  # noqa: D107
        PoolError.__init__(self, message, **kwargs)


class PushError(HubError):
    """Uploading a model or Space failed."""


# --- runs and models -------------------------------------------------------------------


class RunFolderError(TgrHubError, FileNotFoundError):
    """A run folder or meta-model folder is missing or incomplete."""


class ImageInputError(TgrHubError, ValueError):
    """User-supplied images for adaptation/classification are invalid."""


# --- the method's stages ---------------------------------------------------------------------


class RecoverError(TgrHubError, ValueError):
    """A recovery was asked for something the teacher cannot give (bad classes, bad generator...)."""


class MemoryBankError(TgrHubError, ValueError):
    """A memory bank lookup or a saved bank is invalid (unknown teacher/class, mismatched files...)."""


class EmbeddingError(TgrHubError, ValueError):
    """Inputs to the Fisher embedding or the dissimilarity are invalid."""


class EvaluationError(TgrHubError, ValueError):
    """An evaluation cannot be run as asked (no accuracies, incompatible teachers...)."""


class AnalysisError(TgrHubError, ValueError):
    """An analysis (``tgr-hub analyze``) cannot be run as asked (too few teachers, bad features, bad ladder...)."""


# --- benchmarks ----------------------------------------------------------------------------


class BenchmarkError(TgrHubError, ValueError):
    """A benchmark folder is inconsistent (cells of other settings, or methods not on the same episodes)."""


class StatsError(TgrHubError, ValueError):
    """Values that cannot be summarised as asked (empty, or paired arrays of different lengths)."""


# --- internal invariants (not user errors) -----------------------------------------------------


class RankDivergenceError(RuntimeError):
    """The processes of a run hold different models: an internal invariant is broken."""
