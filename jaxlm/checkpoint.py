"""Checkpoints through orbax's CheckpointManager: save, restore, resume.

A checkpoint is ``<workdir>/checkpoints/<step>/`` with two items: ``state`` (the whole
:class:`~jaxlm.state.TrainState`: parameters, optimizer state, step, RNG, recurrent carry) and
``meta`` (the run's config and tokenizer as JSON), so each checkpoint stands on its own. Orbax
writes to a temporary directory and renames it when complete, so a save interrupted at any
moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxlm.config import base_config

# Config fields that may change when a run resumes (they do not change shapes or meaning).
RESUMABLE_CHANGES = (
    "train.",
    "optimizer.learning_rate",
    "optimizer.warmup_steps",
    "optimizer.end_lr_fraction",
    "optimizer.decay_",
    "data.eval_batch_size",
    "data.data_dir",
    "parallel.",  # restore reshards onto this run's mesh
    "name",
)


def _loss_scaled(precision: Any) -> Any:
    from jaxlm.precision import Policy

    try:
        return Policy.from_string(precision).needs_loss_scaling
    except Exception:  # an unparsable value: only the very same value is compatible
        return ("unparsed", precision)


# Fields that may change as long as the optimizer state keeps its structure: the value's class
# (what the key function returns) must stay the same. Clipping on/off adds or removes a chain
# element, "plateau" adds reduce-on-plateau's state, float16 adds the loss-scale state.
RESUMABLE_WITHIN_CLASS = {
    "optimizer.clip_norm": lambda v: bool(v),
    "optimizer.schedule": lambda v: v == "plateau",
    "precision": _loss_scaled,
}


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(workdir) / "checkpoints"


def manager(
    workdir: str | Path, keep: int = 2, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over ``<workdir>/checkpoints`` keeping the last ``keep``.

    Args:
      workdir: the run folder.
      keep: how many checkpoints to keep (older ones are deleted after a save).
      read_only: open without creating or deleting anything.

    Returns:
      The manager; call ``close()`` when done (it waits for async saves).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # left by a save that was killed midway
        # Across processes, orbax's background thread synchronises hosts with collectives
        # that could interleave with the training step's own: save in the foreground there.
        enable_async_checkpointing=jax.process_count() == 1,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir).absolute(), options=options, item_names=("state", "meta")
    )


def config_json(config: ml_collections.ConfigDict) -> dict:
    """A config as plain JSON data."""
    return json.loads(config.to_json())


def save(mgr: ocp.CheckpointManager, state, config, tokenizer, *, force: bool = False) -> bool:
    """Saves ``state`` at its step with the config and tokenizer (asynchronously).

    Args:
      mgr: from :func:`manager`.
      state: the TrainState.
      config: the run config.
      tokenizer: the run's tokenizer.
      force: save even if the manager's interval policy would skip this step.

    Returns:
      Whether a save was started.
    """
    meta = {"config": config_json(config), "tokenizer": tokenizer.to_json()}
    step = int(jax.device_get(state.step))
    return mgr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
    )


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores a checkpoint onto the shardings of ``abstract_state``.

    Args:
      mgr: from :func:`manager`.
      abstract_state: a TrainState of ``jax.ShapeDtypeStruct`` with shardings.
      step: which checkpoint; the latest when None.

    Returns:
      ``(state, meta)``.
    """
    step = mgr.latest_step() if step is None else step
    try:
        restored = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
    except Exception as e:  # orbax raises many types; name the directory and the cause.
        raise RuntimeError(
            f"cannot restore checkpoint {mgr.directory / str(step)}: {type(e).__name__}: {e}"
        ) from e
    return restored.state, restored.meta


def read_meta(mgr: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
    """The config and tokenizer JSON stored with a checkpoint, without reading its arrays."""
    step = mgr.latest_step() if step is None else step
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def incompatible_fields(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
    """Config fields that differ between a saved run and this one and would break resuming.

    A field the saved config lacks was added to jaxlm after the checkpoint was written; left at
    its :func:`~jaxlm.config.base_config` default (which keeps the old behaviour) it is no
    reason to refuse the checkpoint.

    Args:
      saved: the config JSON stored with the checkpoint.
      current: this run's config.

    Returns:
      ``"field: saved -> current"`` lines, empty when the checkpoint can be resumed.
    """
    old, new = _flatten(saved), _flatten(config_json(current))
    defaults = _flatten(config_json(base_config()))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        if key not in old and key in defaults and new[key] == defaults[key]:
            continue
        within = RESUMABLE_WITHIN_CLASS.get(key)
        if within and key in old and key in new and within(old[key]) == within(new[key]):
            continue
        diffs.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return diffs


def latest_intact_step(mgr: ocp.CheckpointManager) -> int | None:
    """The newest step whose checkpoint has readable meta and array metadata.

    A cheap check that reads no array data: it finds checkpoints whose folders were emptied,
    truncated or mangled at the metadata level. Damaged array data shows only when read;
    :func:`restore_latest_intact` catches that too.

    Args:
      mgr: from :func:`manager`.

    Returns:
      The step, or None when no checkpoint passes.

    Example:
      >>> latest_intact_step(manager("runs/lstm"))  # doctest: +SKIP
      2000
    """
    for step in sorted(mgr.all_steps(), reverse=True):
        if _metadata_problem(mgr.directory / str(step)) is None:
            return step
    return None


def _metadata_problem(step_dir) -> str | None:
    """Why a checkpoint folder's meta or array metadata cannot be read (None when they can)."""
    from etils import epath

    try:
        meta = ocp.JsonCheckpointHandler().restore(epath.Path(step_dir) / "meta")
        if not isinstance(meta, dict) or "config" not in meta:
            return f"{step_dir}/meta holds no config"
        ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / "state")
    except Exception as e:  # orbax, tensorstore and json raise many types
        return f"{type(e).__name__}: {e}"
    return None


def restore_latest_intact(
    mgr: ocp.CheckpointManager, abstract_state, *, log=print, quarantine: bool = False
):
    """Restores the newest checkpoint that reads back whole, skipping damaged ones.

    Tries checkpoints newest first; each one that fails (missing or unreadable metadata,
    truncated or corrupted array data) is reported through ``log`` with its directory and the
    cause. Damaged checkpoints are left on disk as they are, or with ``quarantine`` renamed to
    ``<step>.damaged`` (orbax then no longer lists them, so training can save that step again).

    Args:
      mgr: from :func:`manager`.
      abstract_state: a TrainState of ``jax.ShapeDtypeStruct`` with shardings.
      log: called with one line per skipped checkpoint.
      quarantine: rename damaged checkpoints aside (process 0 renames; every process reloads
        the manager's step list).

    Returns:
      ``(state, meta, step)``.

    Raises:
      FileNotFoundError: there is no checkpoint at all.
      StructureMismatch: an intact checkpoint holds a state of another structure (leaf paths
        or shapes) than ``abstract_state``; nothing is reported as damaged or moved.
      RuntimeError: no checkpoint is intact; the message names each one and why.

    Example:
      >>> state, meta, step = restore_latest_intact(mgr, target)  # doctest: +SKIP
      Skipping damaged checkpoint runs/x/checkpoints/60: cannot restore ...
    """
    steps = sorted(mgr.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
    problems, damaged = [], []
    for step in steps:
        step_dir = mgr.directory / str(step)
        problem = _metadata_problem(step_dir)
        if problem is None:
            # An intact checkpoint of another state layout is no damage: say so, touch nothing.
            mismatch = _structure_mismatch(step_dir, abstract_state)
            if mismatch:
                raise StructureMismatch(
                    f"checkpoint {step_dir} holds a state of another structure than this run "
                    f"builds (a changed optimizer or model?): {mismatch}"
                )
            try:
                state, meta = restore(mgr, abstract_state, step)
            except RuntimeError as e:
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
    raise RuntimeError(
        f"no intact checkpoint in {mgr.directory}; tried:\n  " + "\n  ".join(problems)
    )


class StructureMismatch(ValueError):
    """An intact checkpoint whose state tree does not match the one this run builds."""


def _structure_mismatch(step_dir, abstract_state) -> str | None:
    """How the saved state's leaf paths and shapes differ from ``abstract_state``'s (or None)."""
    from etils import epath

    from jaxlm.tree import path_str

    def leaves(tree):
        return {
            path_str(p): tuple(getattr(leaf, "shape", ()) or ())
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    saved = leaves(ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / "state").tree)
    wanted = leaves(abstract_state)
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


def _quarantine(mgr: ocp.CheckpointManager, step_dirs, log) -> None:
    """Renames damaged checkpoint folders to ``<step>.damaged[-n]`` and reloads the manager."""
    if jax.process_index() == 0:
        for step_dir in step_dirs:
            target, n = Path(f"{step_dir}.damaged"), 1
            while target.exists():
                target, n = Path(f"{step_dir}.damaged-{n}"), n + 1
            Path(step_dir).rename(target)
            log(f"Moved damaged checkpoint {step_dir} to {target}")
    mgr.reload()
