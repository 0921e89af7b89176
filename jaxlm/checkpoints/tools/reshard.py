"""Restores a checkpoint onto another device mesh and saves it from there."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jax.sharding import PartitionSpec

from jaxlm import sharding
from jaxlm.checkpoints.layout import PathLike, resolve, step_of
from jaxlm.checkpoints.read import metadata_tree, restore_sharded
from jaxlm.checkpoints.store import write_checkpoint
from jaxlm.tree import flatten


def parse_rules(specs: Iterable[str]) -> list[tuple[str, PartitionSpec]]:
    """Parses ``"REGEX=AXES"`` rules, AXES comma-separated mesh axes or ``None`` per dimension.

    Args:
      specs: e.g. ``["embed/embedding=None,model", "head/kernel=model"]``.

    Returns:
      ``(regex, PartitionSpec)`` pairs.

    Example:
      >>> parse_rules(["embed=None,model"])
      [('embed', P(None, 'model'))]
    """
    rules = []
    for spec in specs:
        pattern, sep, axes = spec.rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"sharding rule {spec!r}: expected REGEX=AXES, e.g. embed=None,model")
        re.compile(pattern)
        names = [None if a.strip() in ("", "None") else a.strip() for a in axes.split(",")]
        rules.append((pattern, PartitionSpec(*names)))
    return rules


def reshard(
    path: PathLike,
    out_workdir: PathLike,
    *,
    data: int = 0,
    model: int = 1,
    rules: Sequence[tuple[str, PartitionSpec]] | None = None,
    step: int | None = None,
) -> Path:
    """Restores a checkpoint onto a new ("data", "model") mesh and saves it from there.

    The new checkpoint's config says ``parallel.data``/``parallel.model`` (and ``rules`` when
    given) as on the new mesh, so a run resumed from it on that mesh is not refused.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      out_workdir: run folder for the result.
      data: data-parallel size of the new mesh (0: all devices not used by ``model``).
      model: model-parallel size.
      rules: sharding rules; the checkpoint's own when None.
      step: which checkpoint of a run folder.

    Returns:
      The new checkpoint's folder.

    Example:
      >>> reshard("runs/four_devices", "runs/one_device", data=1)  # doctest: +SKIP
    """
    ckpt = resolve(path, step)
    mesh = sharding.make_mesh(data, model)
    state, meta = restore_sharded(ckpt, mesh, rules)
    config = json.loads(json.dumps(meta.get("config", {})))
    par = config.setdefault("parallel", {})
    par["data"], par["model"] = int(mesh.shape["data"]), int(mesh.shape["model"])
    if rules is not None:
        par["rules"] = [[pattern, list(spec)] for pattern, spec in rules]
    meta = dict(meta, config=config, resharded_from=str(ckpt))
    return write_checkpoint(out_workdir, step_of(ckpt) or 0, state, meta)


def saved_shardings(path: PathLike, step: int | None = None) -> dict[str, Any]:
    """The sharding each array was saved with (orbax metadata), by "/"-joined path.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.

    Returns:
      ``{path: {"mesh": {axis: size}, "spec": [...]}}`` (None for arrays saved without one).
    """
    out = {}
    for name, m in flatten(metadata_tree(path, step)).items():
        s = getattr(m, "sharding", None)
        if s is None or not hasattr(s, "partition_spec"):
            out[name] = None
            continue
        out[name] = {
            "mesh": dict(zip(s.axis_names, (int(x) for x in s.shape), strict=True)),
            "spec": [list(a) if isinstance(a, tuple) else a for a in s.partition_spec],
        }
    return out
