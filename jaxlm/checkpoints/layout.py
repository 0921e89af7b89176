"""Where things are in a run folder: the one definition of the on-disk layout.

A run folder (workdir) holds ``config.json``, ``tokenizer.json``, ``metrics.jsonl``,
``status.json``, ``tensorboard/`` and, for neural models, ``checkpoints/<step>/`` with two
items: ``state`` (the :class:`~jaxlm.state.TrainState` as a tree: ``step``, ``params``,
``opt_state``, ``rng``, ``carry``) and ``meta`` (config and tokenizer JSON, so each checkpoint
stands on its own). An n-gram run holds ``model.npz`` (and ``model.arpa``) instead, with their
SHA-256 digests in ``model.checksums.json``.

A *checkpoint path* is a run folder (its latest checkpoint, or a given step), its
``checkpoints/`` folder, or one ``<workdir>/checkpoints/<step>`` folder. Paths are made absolute
here, where they enter, because orbax accepts nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxlm.errors import CheckpointError

STATE_ITEM = "state"
META_ITEM = "meta"
CHECKPOINTS = "checkpoints"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
NGRAM_MODEL = "model.npz"
NGRAM_ARPA = "model.arpa"
# The SHA-256 of the n-gram run's model files, written after them and before "finished".
NGRAM_CHECKSUMS = "model.checksums.json"
# meta["format"]: 2 since the model registry gave each model its own config fields; a
# checkpoint without the key is format 1 (its config's model section lists every model's fields).
FORMAT_VERSION = 2

PathLike = str | Path


def absolute(path: PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory and normalised
    (``a/../b`` is ``b``; symbolic links are kept)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def checkpoint_dir(workdir: PathLike) -> Path:
    """Where a run's checkpoints live: ``<workdir>/checkpoints`` (absolute)."""
    return absolute(workdir) / CHECKPOINTS


def is_ngram_run(path: PathLike) -> bool:
    """Whether ``path`` is the folder of an n-gram run (a ``model.npz`` or the checksums of
    one, no checkpoints)."""
    path = absolute(path)
    has_model = (path / NGRAM_MODEL).is_file() or (path / NGRAM_CHECKSUMS).is_file()
    return has_model and not (path / CHECKPOINTS).is_dir()


def _checkpoints_folder(path: Path) -> Path | None:
    if (path / CHECKPOINTS).is_dir():
        return path / CHECKPOINTS
    if path.is_dir() and path.name == CHECKPOINTS:
        return path
    return None


def list_steps(path: PathLike) -> list[int]:
    """The steps of the finished checkpoints under a run folder or a ``checkpoints/`` folder.

    Orbax writes each checkpoint to a temporary folder and renames it to ``<step>`` when
    complete, so unfinished saves (``<step>.orbax-checkpoint-tmp-*``) and checkpoints set aside
    as damaged (``<step>.damaged``) are not listed.

    Args:
      path: a run folder or its ``checkpoints/`` folder.

    Returns:
      The steps, ascending (empty when there are none).

    Example:
      >>> list_steps("runs/lstm_smoke")  # doctest: +SKIP
      [30, 60]
    """
    folder = _checkpoints_folder(absolute(path))
    if folder is None:
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def resolve(path: PathLike, step: int | None = None) -> Path:
    """The absolute folder of one checkpoint: ``<workdir>/checkpoints/<step>``.

    Args:
      path: a run folder, its ``checkpoints/`` folder, or a checkpoint folder (relative paths
        are taken from the working directory).
      step: which checkpoint of a run folder; its latest when None.

    Returns:
      The checkpoint folder (holding ``state/`` and ``meta/``).

    Raises:
      CheckpointError: nothing there is a jaxlm checkpoint, or ``step`` is not among them.

    Example:
      >>> resolve("runs/lstm_smoke")  # doctest: +SKIP
      PosixPath('/home/me/jaxlm/runs/lstm_smoke/checkpoints/60')
    """
    path = absolute(path)
    if (path / STATE_ITEM).is_dir():
        if step is not None and path.name.isdigit() and int(path.name) != step:
            raise CheckpointError(f"{path} is the checkpoint of step {path.name}, not {step}")
        return path
    folder = _checkpoints_folder(path)
    if folder is None:
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
        if is_ngram_run(path):
            raise CheckpointError(
                f"{path} is an n-gram run ({NGRAM_MODEL}): it has no checkpoints to read"
            )
        raise CheckpointError(
            f"{path} is not a jaxlm checkpoint: expected a run folder with {CHECKPOINTS}/, a "
            f"{CHECKPOINTS}/ folder, or a checkpoint folder <workdir>/{CHECKPOINTS}/<step> "
            f"holding {STATE_ITEM}/ and {META_ITEM}/"
        )
    steps = list_steps(folder)
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {folder}")
    if step is None:
        return folder / str(steps[-1])
    if step not in steps:
        raise CheckpointError(f"no checkpoint of step {step} in {folder}; found steps {steps}")
    return folder / str(step)


def last_checkpoints(path: PathLike, k: int) -> list[Path]:
    """The folders of the last ``k`` checkpoints of a run, oldest first.

    Args:
      path: a run folder or its ``checkpoints/`` folder.
      k: how many.

    Returns:
      Absolute checkpoint folders.

    Raises:
      CheckpointError: the run holds fewer than ``k`` checkpoints.

    Example:
      >>> last_checkpoints("runs/lstm_smoke", 2)  # doctest: +SKIP
      [PosixPath('.../lstm_smoke/checkpoints/30'), PosixPath('.../lstm_smoke/checkpoints/60')]
    """
    steps = list_steps(path)
    if k < 1 or len(steps) < k:
        raise CheckpointError(
            f"asked for the last {k} checkpoints of {path}, which holds {len(steps)}: {steps} "
            "(config.train.keep_checkpoints sets how many a run keeps)"
        )
    folder = _checkpoints_folder(absolute(path))
    return [folder / str(s) for s in steps[-k:]]


def step_of(checkpoint: Path) -> int | None:
    """The step of a checkpoint folder (its name), or None for another folder.

    Example:
      >>> step_of(Path("runs/x/checkpoints/60")), step_of(Path("runs/x"))
      (60, None)
    """
    return int(checkpoint.name) if checkpoint.name.isdigit() else None


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint folder belongs to (itself when it is not inside one)."""
    if checkpoint.parent.name == CHECKPOINTS:
        return checkpoint.parent.parent
    return checkpoint
