"""Checkpoints through orbax's manager: save, restore onto shardings, fall back past damage.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a save
interrupted at any moment leaves the previous checkpoints intact. A checkpoint whose files are
damaged is named, set aside as ``<step>.damaged`` (with ``quarantine``), and the one before it
is used. Nothing is unpickled: arrays are tensorstore files, the meta item is JSON.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm import runtime
from jaxlm.checkpoints.checksums import check_meta, tree_checksums, verify, with_meta_digest
from jaxlm.checkpoints.layout import (
    META_ITEM,
    STATE_ITEM,
    PathLike,
    checkpoint_dir,
    list_steps,
)
from jaxlm.checkpoints.meta import read_meta, upgrade
from jaxlm.checkpoints.read import finished_reads, metadata_tree
from jaxlm.errors import CheckpointError, describe_os_error
from jaxlm.tree import path_str


class StructureMismatch(CheckpointError, ValueError):
    """An intact checkpoint whose state tree does not match the one this run builds."""


def manager(workdir: PathLike, keep: int = 3, *, read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over ``<workdir>/checkpoints`` keeping the last ``keep``.

    Args:
      workdir: the run folder (relative paths are made absolute).
      keep: how many checkpoints to keep (older ones are deleted after a save).
      read_only: open without creating or deleting anything.

    Returns:
      The manager; call ``close()`` when done (it waits for background saves).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # left by a save that was killed midway
        enable_async_checkpointing=runtime.async_checkpointing(),
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=(STATE_ITEM, META_ITEM)
    )


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving ``state`` and ``meta`` as checkpoint ``step`` (in the background on one
    process; :meth:`~orbax.checkpoint.CheckpointManager.wait_until_finished` waits).

    The meta gets the checksum of every array (:mod:`jaxlm.checkpoints.checksums`), computed
    where the arrays are, and a digest of its own text, so that a restore can tell damaged
    bytes from saved ones.

    Args:
      mgr: from :func:`manager`.
      step: the checkpoint's step.
      state: the TrainState, or a tree with its fields (numpy or jax arrays).
      meta: from :func:`jaxlm.checkpoints.make_meta`.
    """
    meta = with_meta_digest({**meta, "checksums": tree_checksums(state)})
    mgr.save(
        step,
        args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
        ),
        force=True,
    )


class SaveFailed(CheckpointError):
    """A checkpoint could not be written (a full disk, a lost mount); the ones before are kept."""


def save_failed(mgr: ocp.CheckpointManager, step: int, error: BaseException) -> SaveFailed:
    """The one-line error for the save of ``step`` having failed with ``error``: the cause
    (for a full disk, the space left and about how much a checkpoint needs) and the newest
    checkpoint that is intact.

    Args:
      mgr: the manager the save went through.
      step: the step being saved.
      error: what orbax raised (at the save, or later from its background thread).

    Returns:
      The error to stop the run with. The half-written folder of ``step`` is removed (call it
      once the save has ended: its error was raised).
    """
    folder = Path(mgr.directory)
    if jax.process_index() == 0:  # the half-written folder: its space lets status.json be written
        for partial in folder.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
    done = [s for s in list_steps(folder) if s != step]
    needed = _folder_bytes(folder / str(done[-1])) if done else None
    cause = describe_os_error(error, folder, needed=needed)
    kept = f"checkpoint {done[-1]} is intact" if done else "no checkpoint was saved before it"
    return SaveFailed(f"saving checkpoint {step} to {folder} failed: {cause}; {kept}")


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_checkpoint(workdir: PathLike, step: int, state: Any, meta: dict[str, Any]) -> Path:
    """Writes ``state`` and ``meta`` as checkpoint ``step`` of ``workdir`` and waits for it.

    The layout is the trainer's, so ``train``, ``evaluate``, ``--config.init_from`` and the
    checkpoint tools read it like any other.

    Args:
      workdir: the run folder to write into (created if needed).
      step: the checkpoint's step.
      state: ``step``, ``params``, ``opt_state``, ``rng``, ``carry`` as numpy or jax arrays.
      meta: ``{"format", "config", "tokenizer", ...}`` JSON.

    Returns:
      The new checkpoint's folder.

    Raises:
      CheckpointError: ``workdir`` already holds a checkpoint of ``step``.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> from jaxlm.checkpoints import load_state, make_meta
      >>> from jaxlm.config import load_config
      >>> run = tempfile.mkdtemp()
      >>> meta = make_meta(load_config("lstm:smoke"), {"kind": "byte"})
      >>> state = {"step": np.int32(5), "params": {"w": np.ones(3)}}
      >>> folder = write_checkpoint(run, 5, state, meta)
      >>> folder.name, load_state(run)[0]["params"]["w"].tolist()
      ('5', [1.0, 1.0, 1.0])
    """
    if step in list_steps(workdir):
        raise CheckpointError(
            f"{checkpoint_dir(workdir) / str(step)} already exists; choose another output folder"
        )
    mgr = manager(workdir, keep=1_000_000)
    try:
        save(mgr, step, state, meta)
        mgr.wait_until_finished()
    finally:
        mgr.close()
    return checkpoint_dir(workdir) / str(step)


def restore(mgr: ocp.CheckpointManager, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores a checkpoint onto the shardings of ``target``.

    Args:
      mgr: from :func:`manager`.
      target: a TrainState of ``jax.ShapeDtypeStruct`` with shardings.
      step: which checkpoint; the latest when None.

    Returns:
      ``(state, meta)``, the meta upgraded.

    Raises:
      CheckpointError: the checkpoint cannot be restored, or its arrays are not the bytes that
        were saved (checksums); the message names it and why.
    """
    step = mgr.latest_step() if step is None else step
    args = ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(target), META_ITEM: ocp.args.JsonRestore()}
    )
    try:
        with finished_reads():
            restored = mgr.restore(step, args=args)
    except Exception as e:  # orbax raises many types; name the directory and the cause.
        raise CheckpointError(
            f"cannot restore checkpoint {mgr.directory / str(step)}: {type(e).__name__}: {e}"
        ) from e
    check_meta(restored[META_ITEM], Path(mgr.directory) / str(step))
    meta = upgrade(restored[META_ITEM])
    verify(restored[STATE_ITEM], meta.get("checksums"), Path(mgr.directory) / str(step))
    return restored[STATE_ITEM], meta


def _metadata_problem(step_dir: Path) -> str | None:
    """Why a checkpoint folder's meta or array metadata cannot be read (None when they can)."""
    try:
        read_meta(step_dir)
        metadata_tree(step_dir)
    except CheckpointError as e:
        return str(e)
    return None


def latest_intact_step(mgr: ocp.CheckpointManager) -> int | None:
    """The newest step whose checkpoint has readable meta and array metadata.

    A cheap check that reads no array data: it finds checkpoints whose folders were emptied,
    truncated or mangled at the metadata level. Damaged array data shows only when read;
    :func:`restore_latest_intact` catches that too.

    Args:
      mgr: from :func:`manager`.

    Returns:
      The step, or None when no checkpoint passes.
    """
    for step in sorted(mgr.all_steps(), reverse=True):
        if _metadata_problem(Path(mgr.directory) / str(step)) is None:
            return step
    return None


def newest_readable_meta(mgr: ocp.CheckpointManager) -> tuple[int, dict[str, Any]]:
    """``(step, meta)`` of the newest checkpoint whose meta reads back.

    Raises:
      CheckpointError: no checkpoint has readable meta (each one named with its cause).
    """
    errors = []
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            return step, read_meta(Path(mgr.directory) / str(step))
        except CheckpointError as e:  # damaged: restore_latest_intact reports and skips it
            errors.append(str(e))
    raise CheckpointError("no checkpoint has readable metadata:\n  " + "\n  ".join(errors))


def restore_latest_intact(
    mgr: ocp.CheckpointManager,
    target: Any,
    *,
    log: Callable[[str], None] = print,
    quarantine: bool = False,
) -> tuple[Any, dict[str, Any], int]:
    """Restores the newest checkpoint that reads back whole, skipping damaged ones.

    Tries checkpoints newest first; each one that fails (missing or unreadable metadata,
    truncated or corrupted array data) is reported through ``log`` with its directory and the
    cause. Damaged checkpoints are left on disk as they are, or with ``quarantine`` renamed to
    ``<step>.damaged`` (orbax then no longer lists them, so training can save that step again).

    Args:
      mgr: from :func:`manager`.
      target: a TrainState of ``jax.ShapeDtypeStruct`` with shardings.
      log: called with one line per skipped checkpoint.
      quarantine: rename damaged checkpoints aside (process 0 renames; every process reloads
        the manager's step list).

    Returns:
      ``(state, meta, step)``.

    Raises:
      CheckpointError: there is no checkpoint, or none is intact (each named with its cause).
      StructureMismatch: an intact checkpoint holds a state of another structure (leaf paths
        or shapes) than ``target``; nothing is reported as damaged or moved.

    Example:
      >>> state, meta, step = restore_latest_intact(mgr, target)  # doctest: +SKIP
      Skipping damaged checkpoint runs/x/checkpoints/60: cannot restore ...
    """
    steps = sorted(mgr.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint in {mgr.directory}")
    problems, damaged = [], []
    for step in steps:
        step_dir = Path(mgr.directory) / str(step)
        problem = _metadata_problem(step_dir)
        if problem is None:
            # An intact checkpoint of another state layout is no damage: say so, touch nothing.
            mismatch = _structure_mismatch(metadata_tree(step_dir), target)
            if mismatch:
                raise StructureMismatch(
                    f"checkpoint {step_dir} holds a state of another structure than this run "
                    f"builds (a changed optimizer or model?): {mismatch}"
                )
            try:
                state, meta = restore(mgr, target, step)
            except CheckpointError as e:
                problem = str(e)
            else:
                if problems:
                    log(f"Restored {step_dir} instead of the newer, damaged checkpoint(s).")
                if quarantine and damaged:
                    _quarantine(mgr, damaged, log)
                return state, meta, step
        problems.append(f"{step_dir}: {problem}")
        damaged.append(step_dir)
        log(f"Skipping damaged checkpoint {step_dir}: {problem}")
    raise CheckpointError(
        f"no intact checkpoint in {mgr.directory}; tried:\n  " + "\n  ".join(problems)
    )


def _structure_mismatch(saved_tree: Any, target: Any) -> str | None:
    """How the saved state's leaf paths and shapes differ from ``target``'s (or None)."""

    def leaves(tree: Any) -> dict[str, tuple[int, ...]]:
        return {
            path_str(p): tuple(getattr(leaf, "shape", ()) or ())
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    saved, wanted = leaves(saved_tree), leaves(target)
    parts = []
    for what, names in (
        ("only in the checkpoint", sorted(set(saved) - set(wanted))),
        ("only in this run", sorted(set(wanted) - set(saved))),
        ("other shapes", sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])),
    ):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{what}: {', '.join(names[:3])}{more}")
    return "; ".join(parts) or None


def _quarantine(mgr: ocp.CheckpointManager, step_dirs: list[Path], log: Callable) -> None:
    """Renames damaged checkpoint folders to ``<step>.damaged[-n]`` and reloads the manager."""
    if jax.process_index() == 0:
        for step_dir in step_dirs:
            target, n = Path(f"{step_dir}.damaged"), 1
            while target.exists():
                target, n = Path(f"{step_dir}.damaged-{n}"), n + 1
            Path(step_dir).rename(target)
            log(f"Moved damaged checkpoint {step_dir} to {target}")
    mgr.reload()
