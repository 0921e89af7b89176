"""The device mesh, shardings by parameter path, strategies, and each process's share of a batch.

One code path serves one CPU, fake CPU devices in tests, one GPU and many hosts: the state is
built abstractly (``jax.eval_shape``), :func:`state_shardings` gives every leaf a
``NamedSharding`` on a ("data", "model") mesh, and ``jax.jit(init, out_shardings=...)`` creates
it in place. Batches are global arrays split over "data", each process feeding its rows.

A parallel strategy (``config.parallel.strategy``, :data:`STRATEGIES`) is a list of
``(regex, PartitionSpec)`` rules (:func:`strategy_rules`), the same kind a user writes by hand in
``config.parallel.rules``; :func:`parallel_rules` puts the user's first. XLA inserts the
gathers and reductions the shardings imply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlm.runtime.cluster import detected_cluster
from jaxlm.tree import compile_pattern, path_str

Rules = Sequence[tuple[str, PartitionSpec]]

STRATEGIES = ("data", "fsdp", "tensor", "fsdp+tensor")
"""``config.parallel.strategy``: "data" replicates parameters and optimizer state (each device
holds all of it); "fsdp" shards them over "data" (ZeRO-3: XLA gathers each parameter where it is
used); "tensor" splits layers over "model" (Megatron); "fsdp+tensor" both."""

# Megatron-style splits over "model" (Shoeybi et al. 2019). Where a leaf matches several rules
# the first that divides its shape applies, so a second rule for the same path is a fallback (a
# vocabulary that does not divide is split over the width instead).
_TENSOR: tuple[tuple[str, PartitionSpec], ...] = (
    # Transformer: the products that fan out (qkv, the MLP's input) by columns, so each device
    # computes its share of heads and hidden units; those that fan in (the attention output,
    # the MLP's output) by rows, so each reads only its share and one sum joins them. Norms and
    # the row-split layers' biases stay whole, as in Megatron.
    ("qkv/kernel", PartitionSpec(None, "model")),
    ("qkv/bias", PartitionSpec("model")),
    ("mlp_fc/kernel", PartitionSpec(None, "model")),
    ("mlp_fc/bias", PartitionSpec("model")),
    ("attn_out/kernel", PartitionSpec("model", None)),
    ("mlp_proj/kernel", PartitionSpec("model", None)),
    # Recurrent models: the gate columns of the input and recurrent products. Each step then
    # needs the whole h, gathered from every device (see benchmarks/recurrent_tensor.py).
    ("(ih|hh)/kernel", PartitionSpec(None, "model")),
    ("(ih|hh)/bias", PartitionSpec("model")),
    # The embedding and the output layer over the vocabulary, else over the width.
    ("embed/embedding", PartitionSpec("model", None)),
    ("embed/embedding", PartitionSpec(None, "model")),
    ("head/kernel", PartitionSpec(None, "model")),
    ("head/kernel", PartitionSpec("model", None)),
    ("head/bias", PartitionSpec("model")),
)
# ZeRO-3 over "data": every leaf by its first dimension, else its second, where they divide.
_FSDP: tuple[tuple[str, PartitionSpec], ...] = (
    (".*", PartitionSpec("data")),
    (".*", PartitionSpec(None, "data")),
)


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


def rules_from_config(rules: Any) -> list[tuple[str, PartitionSpec]]:
    """``config.parallel.rules`` (a config's or a checkpoint's JSON) as ``(regex, spec)`` pairs.

    Args:
      rules: ``((pattern, (axis or None, ...)), ...)``, or empty.

    Returns:
      The rules.

    Example:
      >>> rules_from_config([["embed", [None, "model"]]])
      [('embed', P(None, 'model'))]
    """
    return [(pattern, PartitionSpec(*spec)) for pattern, spec in (rules or ())]


def _fsdp_and_tensor() -> tuple[tuple[str, PartitionSpec], ...]:
    """Each tensor split with "data" on its first whole dimension, then the tensor splits alone
    and the fsdp rules as fallbacks (and for what the tensor rules leave whole)."""
    both = []
    for pattern, spec in _TENSOR:
        if None in spec:
            i = list(spec).index(None)
            both.append((pattern, PartitionSpec(*spec[:i], "data", *spec[i + 1 :])))
    return (*both, *_TENSOR, *_FSDP)


def strategy_rules(strategy: str) -> list[tuple[str, PartitionSpec]]:
    """The sharding rules a parallel strategy stands for.

    One list serves every model: the Transformer's rules name its layers (``qkv``,
    ``attn_out``, ``mlp_fc``, ``mlp_proj``), the recurrent models' rules their ``ih``/``hh``
    products, and both share ``embed`` and ``head``. They are the rules a user could write in
    ``config.parallel.rules`` (:func:`rule_shardings` reads them: the first rule that matches a
    path and divides the leaf's shape applies, the rest of a leaf is replicated).

    Args:
      strategy: one of :data:`STRATEGIES`.

    Returns:
      ``(regex, PartitionSpec)`` pairs; none for "data".

    Raises:
      ValueError: an unknown strategy.

    Example:
      >>> strategy_rules("fsdp")
      [('.*', P('data',)), ('.*', P(None, 'data'))]
      >>> strategy_rules("fsdp+tensor")[0]
      ('qkv/kernel', P('data', 'model'))
    """
    table = {"data": (), "fsdp": _FSDP, "tensor": _TENSOR, "fsdp+tensor": _fsdp_and_tensor()}
    if strategy not in table:
        raise ValueError(
            f"config.parallel.strategy: unknown strategy {strategy!r}; expected one of {STRATEGIES}"
        )
    return list(table[strategy])


def parallel_rules(parallel: Any) -> list[tuple[str, PartitionSpec]]:
    """The rules in force for a config's ``parallel`` section: its own ``rules`` first (they win
    where they match and divide), then its strategy's.

    Args:
      parallel: ``config.parallel``, or the same section of a saved config's JSON (one saved
        before strategies existed means "data").

    Returns:
      ``(regex, PartitionSpec)`` pairs.

    Example:
      >>> parallel_rules({"strategy": "fsdp", "rules": [["embed", [None, "model"]]]})
      [('embed', P(None, 'model')), ('.*', P('data',)), ('.*', P(None, 'data'))]
    """
    parallel = parallel or {}
    own = rules_from_config(parallel.get("rules"))
    return own + strategy_rules(parallel.get("strategy", "data"))


def format_rules(rules: Rules) -> str:
    """Rules as ``config.parallel.rules`` spells them, one per line.

    Args:
      rules: ``(regex, PartitionSpec)`` pairs.

    Returns:
      Lines like ``('qkv/kernel', (None, 'model'))``; "(none)" for no rules.

    Example:
      >>> print(format_rules(strategy_rules("fsdp")))
      ('.*', ('data',))
      ('.*', (None, 'data'))
    """
    if not rules:
        return "(none)"
    return "\n".join(repr((pattern, tuple(spec))) for pattern, spec in rules)


def rule_shardings(tree: Any, mesh: Mesh, rules: Rules = ()) -> Any:
    """Shardings for every leaf of an (abstract) tree from ``(pattern, PartitionSpec)`` rules.

    The first rule whose pattern matches the leaf's path and whose spec divides the leaf's
    shape on this mesh applies (patterns match whole path components, see
    :func:`jaxlm.tree.compile_pattern`), so a later rule for the same path is a fallback;
    leaves no rule fits are replicated. Optimizer state mirrors parameter paths
    (``.../mu/layers_0/ih/kernel``), so the same rules shard it too.

    Args:
      tree: arrays or ``jax.ShapeDtypeStruct`` leaves.
      mesh: the mesh.
      rules: ``(pattern, PartitionSpec)`` pairs.

    Returns:
      A tree of ``NamedSharding`` with the structure of ``tree``.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"embed": jnp.zeros((8, 4)), "head": jnp.zeros(4)}
      >>> s = rule_shardings(tree, make_mesh(1, 1), [("embed", PartitionSpec("model"))])
      >>> s["embed"].spec, s["head"].spec
      (P('model',), P())
    """
    compiled = [(compile_pattern(pattern), spec) for pattern, spec in rules]

    def pick(path, leaf):
        name = path_str(path)
        shape = getattr(leaf, "shape", ())
        for pattern, spec in compiled:
            if pattern.search(name) and _fits(spec, shape, mesh):
                return NamedSharding(mesh, spec)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def state_shardings(state: Any, mesh: Mesh, rules: Rules = ()) -> Any:
    """Shardings of a whole train state: a :class:`~jaxlm.state.TrainState` or its saved form.

    ``params`` and ``opt_state`` follow the rules (matched against paths inside each part),
    the recurrent ``carry`` is split over "data" by batch row (replicated where the leading
    dimension does not divide), ``step`` and ``rng`` are replicated.

    Args:
      state: a TrainState, or a dict with its fields (as a checkpoint's metadata tree).
      mesh: the mesh.
      rules: ``(pattern, PartitionSpec)`` pairs.

    Returns:
      A tree of ``NamedSharding`` shaped like ``state``.

    Example:
      >>> import jax.numpy as jnp
      >>> saved = {"step": jnp.zeros(()), "params": {"w": jnp.zeros((4, 8))},
      ...          "carry": [jnp.zeros((8, 2))]}
      >>> s = state_shardings(saved, make_mesh(), [("w", PartitionSpec(None, "model"))])
      >>> s["params"]["w"].spec, s["carry"][0].spec, s["step"].spec
      (P(None, 'model'), P('data',), P())
    """

    def pick(part: str, tree: Any) -> Any:
        if part in ("params", "opt_state"):
            return rule_shardings(tree, mesh, rules)
        if part == "carry":
            data = mesh.shape["data"]
            return jax.tree.map(
                lambda leaf: (
                    batch_sharding(mesh)
                    if len(leaf.shape) and leaf.shape[0] % data == 0
                    else replicated(mesh)
                ),
                tree,
            )
        return jax.tree.map(lambda _: replicated(mesh), tree)

    if isinstance(state, dict):
        return {part: pick(part, tree) for part, tree in state.items()}
    return state.replace(**{f: pick(f, getattr(state, f)) for f in state.__dataclass_fields__})


def abstract_on(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shapes and dtypes of ``tree`` and its shardings.

    Args:
      tree: arrays, abstract arrays or array metadata (``shape`` and ``dtype``).
      shardings: a tree of shardings shaped like ``tree``.

    Returns:
      The restore (or ``jit``) target.
    """
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype, sharding=s), tree, shardings
    )


def sharded_bytes(tree: Any, shardings: Any) -> tuple[int, int]:
    """The bytes one device holds of a tree placed with ``shardings``, and the tree's total.

    Args:
      tree: arrays or abstract arrays (``shape`` and ``dtype``).
      shardings: a tree of shardings shaped like ``tree``.

    Returns:
      ``(per_device, total)``: per device the largest sum over its shards (with even
      shardings every device holds the same), total the bytes of every leaf once.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
      >>> mesh = make_mesh(1, 1)
      >>> sharded_bytes(tree, rule_shardings(tree, mesh))
      (144, 144)
    """
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    total = per_device = 0
    for leaf, s in zip(leaves, specs, strict=True):
        item = np.dtype(leaf.dtype).itemsize
        total += int(np.prod(leaf.shape, dtype=np.int64)) * item
        per_device += int(np.prod(s.shard_shape(tuple(leaf.shape)), dtype=np.int64)) * item
    return per_device, total


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


def device_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global numpy batch, as global arrays split over "data".

    Args:
      batch: ``[B, ...]`` arrays (the same global batch on every process) and scalars.
      mesh: the mesh.

    Returns:
      Global ``jax.Array`` s: rows split over "data", scalars replicated.

    Example:
      >>> b = device_batch({"inputs": np.zeros((4, 3), np.int32)}, make_mesh())
      >>> b["inputs"].shape
      (4, 3)
    """
    out = {}
    for key, value in batch.items():
        if value.ndim == 0:
            out[key] = jax.device_put(value, replicated(mesh))
        else:
            rows = host_rows(value.shape[0])
            out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh), value[rows])
    return out


def start_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), before any
    other use of JAX.

    Given a coordinator, the three values are used as they are; without one, a cluster that
    JAX detects (SLURM's srun, Open MPI's mpirun) is joined with JAX's defaults; otherwise this
    is a run of one process and nothing is done.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes: how many processes take part.
      process_id: this one's index, from 0.
      env: the environment (default ``os.environ``).

    Returns:
      How the run was joined (for the log), or None for one process.

    Raises:
      ConfigError: the values given are incomplete or out of range (named).

    Example:
      >>> start_distributed(env={}) is None  # one process
      True
    """
    from jaxlm.errors import ConfigError

    env = os.environ if env is None else env
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if coordinator is None and num_processes in (None, 1) and process_id in (None, 0):
        cluster = detected_cluster(env)
        if cluster is None:
            return None
        jax.distributed.initialize()
        return f"{cluster}: process {jax.process_index()} of {jax.process_count()}"
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} missing: a run of several processes needs --coordinator="
            "HOST:PORT, --num_processes=N and --process_id=I (0 <= I < N)"
        )
    if not 0 <= process_id < num_processes or ":" not in coordinator:
        raise ConfigError(
            f"--coordinator={coordinator} --num_processes={num_processes} "
            f"--process_id={process_id}: expected HOST:PORT and 0 <= process_id < num_processes"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return f"{coordinator}: process {process_id} of {num_processes}"
