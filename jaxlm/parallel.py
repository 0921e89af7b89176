"""Device mesh, sharding rules by parameter path, and multi-host start-up."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, PartitionSpec]]


def make_mesh(data: int = 0, model: int = 1) -> Mesh:
    """A ("data", "model") mesh over all devices of all processes.

    Args:
      data: size of the data-parallel axis; 0 uses every device not taken by ``model``. A
        smaller mesh than the device count uses the first devices (single host only).
      model: size of the model-parallel axis.

    Returns:
      The mesh, with explicitly auto-sharded axis types.

    Example:
      >>> mesh = make_mesh()
      >>> mesh.axis_names
      ('data', 'model')
    """
    n = jax.device_count()
    data = data or n // model
    if data * model > n or (data * model < n and jax.process_count() > 1):
        raise ValueError(
            f"config.parallel: data ({data}) x model ({model}) must fit the {n} devices "
            "(and use all of them on several hosts)"
        )
    return jax.make_mesh(
        (data, model),
        ("data", "model"),
        axis_types=(AxisType.Auto,) * 2,
        devices=jax.devices()[: data * model],
    )


def path_str(path) -> str:
    """A pytree key path as "a/b/c" (dict keys, attribute names and indices joined by "/")."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def tree_paths(tree) -> list[str]:
    """Every leaf's path in a tree, for writing and checking sharding or freezing patterns."""
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def rule_shardings(tree, mesh: Mesh, rules: Rules = ()):
    """Shardings for every leaf of an (abstract) tree from ``(regex, PartitionSpec)`` rules.

    The first rule whose regex ``re.search``-matches the leaf's path applies; leaves matching no
    rule are replicated. Optimizer state mirrors parameter paths (``.../mu/layers_0/ih/kernel``),
    so the same rules shard it too. A spec is dropped to replication for leaves whose rank or
    shape does not divide by the mesh.

    Args:
      tree: arrays or ``jax.ShapeDtypeStruct`` leaves.
      mesh: the mesh.
      rules: ``(pattern, PartitionSpec)`` pairs.

    Returns:
      A tree of ``NamedSharding`` with the structure of ``tree``.
    """
    compiled = [(re.compile(pat), spec) for pat, spec in rules]

    def pick(path, leaf):
        name = path_str(path)
        shape = getattr(leaf, "shape", ())
        for pattern, spec in compiled:
            if pattern.search(name) and _fits(spec, shape, mesh):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(pick, tree)


def _fits(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> bool:
    if len(spec) > len(shape):
        return False
    for dim, axes in zip(shape, spec, strict=False):
        axes = (axes,) if isinstance(axes, str) else (axes or ())
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if dim % size:
            return False
    return True


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading axis is the batch: split over "data"."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def host_rows(global_batch: int) -> slice:
    """The rows of a global batch that this process feeds (all of them on one host)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch % n:
        raise ValueError(f"batch size {global_batch} does not divide over {n} processes")
    per = global_batch // n
    return slice(i * per, (i + 1) * per)


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Builds a global array from this process's rows (``host_rows``) of a batch."""
    return jax.make_array_from_process_local_data(sharding, local)
