"""The element-wise mean of several checkpoints' parameters, written as a new checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.checkpoints.layout import PathLike, resolve, step_of
from jaxlm.checkpoints.read import load_state
from jaxlm.checkpoints.store import write_checkpoint
from jaxlm.errors import CheckpointError
from jaxlm.tree import flatten, unflatten_like


def _check_same_structure(a: dict[str, Any], b: dict[str, Any], what_a: str, what_b: str):
    names_a, names_b = set(a), set(b)
    problems = [f"only in {what_a}: {n}" for n in sorted(names_a - names_b)[:5]]
    problems += [f"only in {what_b}: {n}" for n in sorted(names_b - names_a)[:5]]
    problems += [
        f"{n}: shape {np.shape(a[n])} in {what_a}, {np.shape(b[n])} in {what_b}"
        for n in sorted(names_a & names_b)
        if np.shape(a[n]) != np.shape(b[n])
    ][:5]
    if problems:
        raise CheckpointError(
            f"{what_a} and {what_b} hold different parameter trees:\n  " + "\n  ".join(problems)
        )


def average(checkpoints: Sequence[PathLike], out_workdir: PathLike) -> Path:
    """Writes the element-wise mean of several checkpoints' parameters as a new checkpoint.

    The mean is accumulated in float64 and cast back to each parameter's dtype. The rest of the
    state (step, optimizer state, RNG, carry) and the meta come from the newest checkpoint (the
    highest step), with ``meta["averaged_from"]`` listing the sources, so ``evaluate``,
    ``train --config.init_from`` and resuming accept the result.

    Args:
      checkpoints: two or more distinct checkpoint paths (see :func:`resolve`), e.g.
        :func:`last_checkpoints`; a checkpoint named twice counts once.
      out_workdir: run folder for the result (its checkpoint has the newest source's step).

    Returns:
      The new checkpoint's folder.

    Example:
      >>> average(last_checkpoints("runs/lstm", 3), "runs/lstm_avg3")  # doctest: +SKIP
      PosixPath('runs/lstm_avg3/checkpoints/2000')
    """
    folders, seen = [], set()
    for c in checkpoints:  # each checkpoint once: the mean divides by the number of folders
        folder = resolve(c)
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            folders.append(folder)
    if len(folders) < 2:
        raise CheckpointError(
            "average needs two or more distinct checkpoints, got "
            f"{[str(f) for f in folders]} (from {len(list(checkpoints))} path(s))"
        )
    newest = max(folders, key=lambda f: step_of(f) or -1)
    state, meta = load_state(newest)
    ref = flatten(state["params"])
    total = {n: np.asarray(v, np.float64) for n, v in ref.items()}
    for folder in folders:
        if folder == newest:
            continue
        params, _ = load_state(folder, parts=("params",))
        flat = flatten(params["params"])
        _check_same_structure(ref, flat, str(newest), str(folder))
        for n, v in flat.items():
            total[n] += v
    mean = {n: (total[n] / len(folders)).astype(ref[n].dtype) for n in ref}
    state["params"] = unflatten_like(state["params"], mean)
    meta = dict(meta, averaged_from=[str(f) for f in folders])
    return write_checkpoint(out_workdir, step_of(newest) or 0, state, meta)
