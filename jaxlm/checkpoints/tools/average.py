"""The element-wise mean of several checkpoints' parameters, written as a new checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.checkpoints.layout import PathLike, resolve, step_of
from jaxlm.checkpoints.meta import config_json, read_meta, run_config
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


_ABSENT = object()


def _differences(a: Any, b: Any, name: str = "") -> list[str]:
    """Where two JSON values differ: ``"name is A in the first, B in the second"`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [
            line
            for k in keys
            for line in _differences(
                a.get(k, _ABSENT), b.get(k, _ABSENT), f"{name}.{k}" if name else str(k)
            )
        ]
    if isinstance(a, list) and isinstance(b, list):
        lines = [
            line
            for i, (x, y) in enumerate(zip(a, b, strict=False))
            for line in _differences(x, y, f"{name}[{i}]")
        ]
        if len(a) != len(b):
            lines.append(f"{name} has {len(a)} entries in the first, {len(b)} in the second")
        return lines
    if a == b:
        return []
    shown = ["absent" if v is _ABSENT else repr(v) for v in (a, b)]
    return [f"{name} is {shown[0]} in the first, {shown[1]} in the second"]


def _check_same_model(a: dict[str, Any], b: dict[str, Any], what_a: str, what_b: str) -> None:
    """Refuses two checkpoints' metas whose tokenizers or model configs differ, saying where."""
    models = [config_json(run_config(m["config"]))["model"] for m in (a, b)]
    for what, diffs in (
        ("tokenizers", _differences(a.get("tokenizer"), b.get("tokenizer"))),
        ("model configs", _differences(*models, "model")),
    ):
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise CheckpointError(
                f"{what_a} and {what_b} cannot be averaged: their {what} differ: "
                + "; ".join(diffs[:3])
                + f"{more}; average checkpoints of one model and tokenizer"
            )


def average(checkpoints: Sequence[PathLike], out_workdir: PathLike) -> Path:
    """Writes the element-wise mean of several checkpoints' parameters as a new checkpoint.

    The mean is accumulated in float64 and cast back to each parameter's dtype. The rest of the
    state (step, optimizer state, RNG, carry) and the meta come from the newest checkpoint (the
    highest step), with ``meta["averaged_from"]`` listing the sources, so ``evaluate``,
    ``train --config.init_from`` and resuming accept the result.

    The checkpoints must share the tokenizer and the model config (``config.model``) as well as
    the parameter shapes: a mean of models whose ids mean different characters, or whose
    configs differ, is no model of either.

    Args:
      checkpoints: two or more distinct checkpoint paths (see :func:`resolve`), e.g.
        :func:`last_checkpoints`; a checkpoint named twice counts once.
      out_workdir: run folder for the result (its checkpoint has the newest source's step).

    Returns:
      The new checkpoint's folder.

    Raises:
      CheckpointError: fewer than two distinct checkpoints, or two whose tokenizers, model
        configs or parameter trees differ (the message names both and what differs).

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
    newest_meta = read_meta(newest)
    for folder in folders:  # before any array is read
        if folder != newest:
            _check_same_model(newest_meta, read_meta(folder), str(newest), str(folder))
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
