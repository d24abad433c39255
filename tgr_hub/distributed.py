"""Running tgr-hub on several processes with Accelerate: process view, exact gathers, launch, checkpoints.

Meta-training calls the meta-model through :func:`torch.func.functional_call`, which bypasses
DDP's gradient hooks, so the model is **never wrapped in DDP**. Accelerate provides the process
group (NCCL on GPUs, gloo on CPUs), device placement, mixed-precision autocast, trackers and
``save_state``; gradients are combined explicitly here.

Exact combination
-----------------
Every per-item result (a task's gradient, an episode's accuracy...) is computed by exactly one
process. :meth:`Distributed.gather_rows` gives every process *all* the rows, bit for bit: each
process writes its rows into a zero tensor ``[n, D]`` and the tensor is all-reduced with SUM.
Every element then has one non-zero contributor, and ``x + 0.0 == x`` exactly in floating
point, so the result does not depend on the reduction order. Means are then taken on every
process in item order, with the same code as a single process uses, which is what makes a
2-process run give the same meta-model as a 1-process run (not just up to rounding). It costs
an all-reduce of ``n x D`` values instead of ``D``; with n = m = 4 tasks that is cheap.

Checkpoints
-----------
``checkpoints/step-000040/`` holds what :meth:`accelerate.Accelerator.save_state` writes (model
weights as safetensors, optimiser, per-process RNG states) plus the files the caller adds
(tgr-hub: ``trainer_state.json``, ``best_model.safetensors``). A checkpoint is written under a
temporary name (``.tmp-step-000040``) and renamed when complete, so a folder named ``step-*``
is always whole; older ones beyond ``keep`` are pruned (renamed away, then deleted). For
multi-machine runs the run folder must be on storage every machine sees (as for Accelerate's
own checkpoints).

The optimiser and RNG files of ``save_state`` are pickles (Accelerate's format); they are
only ever read back from the run's own ``checkpoints/`` folder by ``--resume``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, RankDivergenceError, RunFolderError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "Distributed",
    "RankDivergenceError",
    "checkpoint_name",
    "clean_checkpoint_leftovers",
    "flatten",
    "is_distributed_launch",
    "latest_checkpoint",
    "launch_command",
    "list_checkpoints",
    "make_accelerator",
    "save_checkpoint",
    "tensor_digest",
    "unflatten",
]

CHECKPOINT_PREFIX = "step-"
_CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
TRAINER_STATE = "trainer_state.json"  # written last by the caller: marks the content as complete
MIXED_PRECISION = ("no", "fp16", "bf16")


# --- accelerator -------------------------------------------------------------------------------


def is_distributed_launch() -> bool:
    """True inside a process started by ``accelerate launch`` / ``torchrun`` with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def choose_device(requested: str | torch.device | None = None) -> torch.device:
    """The device work runs on: ``requested`` if given (not ``"auto"``), else Accelerate's choice
    for this process (its GPU when one is visible, else the CPU). Every command decides it here."""
    if requested is not None and str(requested) != "auto":
        return torch.device(requested)
    from accelerate import PartialState

    return PartialState().device


def _check_trackers(log_with: Sequence[str]) -> None:
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [str(t.value) for t in LoggerType if t is not LoggerType.ALL]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in log_with:
        if name not in known:
            raise ConfigError(f"unknown tracker {name!r}", hint=f"choose from {', '.join(known)}")
        if name not in available:
            raise ConfigError(f"tracker {name!r} is not installed", hint=f"pip install {name.replace('_', '-')}")


def make_accelerator(
    mixed_precision: str = "no",
    *,
    log_with: Sequence[str] | None = None,
    project_dir: str | os.PathLike | None = None,
) -> Accelerator:
    """The :class:`accelerate.Accelerator` a tgr-hub run uses.

    Device: CUDA when present, else CPU (``ACCELERATE_USE_CPU=1`` forces CPU); the process group
    comes from the launcher's environment (``accelerate launch`` / ``torchrun``), and is gloo on
    CPUs. In a CPU process group each process uses ``OMP_NUM_THREADS`` torch threads.

    Args:
        mixed_precision: ``"no"``, ``"bf16"`` (GPU or CPU) or ``"fp16"`` (GPU only).
        log_with: experiment trackers (``"tensorboard"``, ``"wandb"``...); each must be installed.
        project_dir: where file-based trackers write (``project_dir/tgr-hub``).

    Raises:
        ConfigError: unknown precision, fp16 on a CPU, or a tracker that is not installed.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import ProjectConfiguration

    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    log_with = list(log_with or [])
    if log_with:
        _check_trackers(log_with)
    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision}
    if log_with:
        folder = str(project_dir or ".")
        kwargs["log_with"] = log_with
        kwargs["project_config"] = ProjectConfiguration(project_dir=folder, logging_dir=folder)
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as error:
        # One process keeps one AcceleratorState; a single (non-distributed) process may run
        # several tgr-hub runs with different precisions (quickstart, tests): start afresh.
        if "already been initialized" not in str(error) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        accelerator = Accelerator(**kwargs)
    if accelerator.device.type == "cpu" and mixed_precision == "fp16":
        raise ConfigError("fp16 mixed precision needs a GPU", hint="use --mixed-precision bf16 on a CPU")
    if accelerator.num_processes > 1 and accelerator.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS"):
        # the launcher sets OMP_NUM_THREADS per process; make torch honour it in every rank
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    return accelerator


# --- flat vectors ------------------------------------------------------------------------------


def flatten(tensors: Mapping[str, Tensor], keys: Sequence[str], dtype: torch.dtype | None = None) -> Tensor:
    """Concatenate ``tensors[k]`` for ``k`` in ``keys`` into one vector ``[sum numel]`` (detached)."""
    if not keys:
        return torch.zeros(0, dtype=dtype or torch.float32)
    parts = [tensors[k].detach().reshape(-1) for k in keys]
    if dtype is not None:
        parts = [p.to(dtype) for p in parts]
    return torch.cat(parts)


def unflatten(vector: Tensor, like: Mapping[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`: ``{k: tensor shaped like like[k]}`` (views into ``vector``, cast to like's dtype)."""
    out: dict[str, Tensor] = {}
    start = 0
    for k in keys:
        n = like[k].numel()
        out[k] = vector[start : start + n].view(like[k].shape).to(like[k].dtype)
        start += n
    assert start == vector.numel(), "flat vector and layout disagree"
    return out


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the exact bytes of ``tensors`` (sorted by name): equal digests = bitwise equal."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


# --- the process view ---------------------------------------------------------------------------


class Distributed:
    """What tgr-hub needs from the process group, over an :class:`accelerate.Accelerator`.

    Works unchanged with one process (every collective is then a no-op).

    Attributes:
        accelerator: the Accelerator (device, mixed precision, trackers, save_state).
        rank: this process's index ``0..world-1``.
        world: number of processes.
        device: this process's device.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)
        self.device = accelerator.device

    @property
    def is_main(self) -> bool:
        """The process that writes shared artefacts, logs and shows progress bars."""
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """This process's share of items ``0..n-1``: those with ``i % world == rank``.

        Round-robin rather than contiguous blocks, so that with m = 4 tasks and 3 processes
        everyone has work, and a process's share never depends on anything but ``(n, world)``.
        """
        return list(range(self.rank, n, self.world))

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the block on each machine's first process, then on the others (downloads, caches)."""
        if self.world == 1:
            yield
            return
        with self.accelerator.local_main_process_first():
            yield

    def gather_rows(self, rows: Mapping[int, Tensor], n: int, size: int, dtype: torch.dtype) -> Tensor:
        """All ``n`` rows on every process, exactly; each process gives the rows it owns.

        Args:
            rows: ``{item index: [size] vector}`` for the items this process computed; every
                index in ``0..n-1`` must be given by exactly one process.
            n: number of items.
            size: length of every row.
            dtype: dtype of the result.

        Returns:
            ``[n, size]`` on this process's device; row ``i`` is bitwise what its owner gave.
        """
        out = torch.zeros(n, size, dtype=dtype, device=self.device)
        for i, row in rows.items():
            out[i] = row.to(device=self.device, dtype=dtype)
        if self.world > 1:
            # one non-zero contributor per element: the SUM is exact whatever the reduction order
            torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (in place)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def gather_objects(self, value: Any) -> list[Any]:
        """``[value of rank 0, value of rank 1, ...]`` on every process (small picklable values)."""
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return list(gather_object([value]))

    def check_in_sync(self, tensors: Mapping[str, Tensor], what: str) -> str:
        """Raise :class:`RankDivergenceError` unless every process holds bitwise the same ``tensors``.

        Returns:
            The common digest (see :func:`tensor_digest`).
        """
        digest = tensor_digest(tensors)
        digests = self.gather_objects(digest)
        if len(set(digests)) != 1:
            raise RankDivergenceError(
                f"processes disagree on {what}: digests {', '.join(d[:12] for d in digests)} "
                "(rank order); the processes no longer hold the same meta-model"
            )
        return digest


# --- checkpoints ---------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    """``step-000040``: the folder name of the checkpoint after ``step`` steps."""
    return f"{CHECKPOINT_PREFIX}{int(step):06d}"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as ``(step, path)``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``folder``, or ``None``."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def clean_checkpoint_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete what a killed save or prune left behind (``.tmp-*`` entries); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    if removed:
        logger.info(
            "removed %d incomplete checkpoint entr%s in %s", len(removed), "y" if len(removed) == 1 else "ies", folder
        )
    return removed


def _remove_dir(path: Path) -> None:
    """Delete a folder so that it never looks like a complete checkpoint while half-deleted."""
    doomed = path.with_name(f"{_TMP_PREFIX}delete-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def save_checkpoint(
    dist: Distributed,
    folder: str | os.PathLike,
    step: int,
    write_extra: Callable[[Path], None],
    *,
    keep: int,
    write_own: Callable[[Path], None] | None = None,
) -> Path:
    """Save a checkpoint of ``step`` atomically and prune old ones; call on every process.

    Every process calls :meth:`Accelerator.save_state` into ``.tmp-step-N`` (the main process
    writes the models/optimisers registered with the accelerator, every process its RNG
    state; and, with ``write_own``, the files only it holds, e.g. the generators of the teachers
    it owns), the main process then runs ``write_extra(tmp_folder)`` and renames the folder to
    ``step-N``, and deletes all but the newest ``keep`` checkpoints.

    Returns:
        The checkpoint folder.
    """
    folder = Path(folder)
    final = folder / checkpoint_name(step)
    tmp = folder / f"{_TMP_PREFIX}{final.name}"
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    with _quiet_accelerate():
        dist.accelerator.save_state(str(tmp), safe_serialization=True)
    if write_own is not None:
        write_own(tmp)
    dist.barrier()  # every process's RNG file (and own files) is in
    if dist.is_main:
        write_extra(tmp)
        if final.exists():  # the same step saved before (e.g. resumed from it): replace it
            _remove_dir(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            _remove_dir(old)
        logger.debug("checkpoint %s saved", final)
    dist.barrier()
    return final


def load_checkpoint(dist: Distributed, path: str | os.PathLike) -> None:
    """Restore what :func:`save_checkpoint` saved through ``save_state`` (models, optimisers, RNG)."""
    with _quiet_accelerate():
        dist.accelerator.load_state(str(path))


@contextlib.contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """Accelerate logs every file it saves at INFO; keep that at DEBUG level for tgr-hub users."""
    loggers = [logging.getLogger(name) for name in ("accelerate.accelerator", "accelerate.checkpointing")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            if lg.getEffectiveLevel() > logging.DEBUG:
                lg.setLevel(logging.WARNING)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --- launching ----------------------------------------------------------------------------------


def launch_command(
    module_args: Sequence[str],
    *,
    num_processes: int,
    mixed_precision: str = "no",
    use_cpu: bool | None = None,
    threads_per_process: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command (and environment) that runs ``python -m tgr_hub.cli ARGS`` on N processes.

    One machine; N GPUs when CUDA is present, else N CPU processes over gloo
    (``ACCELERATE_USE_CPU=1``, ``OMP_NUM_THREADS`` threads each: the CPUs shared out).
    A free port is picked for the rendezvous, so several runs can share a machine.

    Returns:
        ``(argv, env)`` for :func:`subprocess.run` / :func:`os.execvpe`.
    """
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    use_cpu = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
    env = dict(os.environ)
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--machine_rank",
        "0",
        "--main_process_port",
        "0",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
    ]
    if num_processes > 1:
        argv.append("--multi_gpu")  # torchrun-style launcher; with ACCELERATE_USE_CPU it forms a gloo group
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
        if threads_per_process is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads_per_process = int(os.environ.get("OMP_NUM_THREADS") or max(1, cpus // num_processes))
        argv += ["--num_cpu_threads_per_process", str(threads_per_process)]
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: keep gloo on the loopback interface
    elif torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ConfigError(
            f"--num-processes {num_processes} but only {torch.cuda.device_count()} GPU(s) are visible",
            hint="use at most one process per GPU",
        )
    argv += ["-m", "tgr_hub.cli", *module_args]
    return argv, env


def check_run_folder_shared(dist: Distributed, folder: Path) -> None:
    """Fail early when the processes of a multi-machine run do not see the same run folder."""
    if dist.world == 1:
        return
    token = folder / ".tmp-shared-check"
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        token.write_text(str(os.getpid()))
    dist.barrier()
    seen = token.is_file()
    everyone = dist.gather_objects(seen)
    dist.barrier()
    if dist.is_main:
        token.unlink(missing_ok=True)
    if not all(everyone):
        raise RunFolderError(
            f"the run folder {folder} is not visible to every process",
            hint="put the run folder on storage all machines share (NFS...) for a multi-machine run",
        )
