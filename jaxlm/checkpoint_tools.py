"""Checkpoint tools as library functions: inspect, load, average, export/import, reshard, diff.

Every function takes a *checkpoint path*: a run folder (its latest checkpoint, or ``step=``),
its ``checkpoints/`` folder, or one ``<workdir>/checkpoints/<step>`` folder. A checkpoint is the
one :mod:`jaxlm.checkpoint` writes: items ``state`` (the TrainState as a tree: ``step``,
``params``, ``opt_state``, ``rng``, ``carry``) and ``meta`` (config and tokenizer JSON).

Trees here are plain nested dicts and lists with numpy leaves (``None`` where the optimizer
keeps an empty state), named by "/"-joined paths such as ``params/embed/embedding`` or
``opt_state/1/0/mu/head/kernel``. Nothing is ever unpickled: orbax reads tensorstore arrays and
JSON, ``.npz`` files are read with ``allow_pickle=False`` and ``.safetensors`` files hold raw
bytes and a JSON header.

Example:
  >>> from jaxlm import checkpoint_tools as ct
  >>> report = ct.inspect("runs/lstm_smoke")  # doctest: +SKIP
  >>> report["totals"]["params"]["count"]  # doctest: +SKIP
  87400
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm import checkpoint, sharding
from jaxlm.tree import flatten, unflatten_like

STATE_ITEM = "state"
META_ITEM = "meta"
NPZ_METADATA_KEY = "__jaxlm_metadata__"
TOP_LEVEL = ("step", "params", "opt_state", "rng", "carry")

PathLike = str | Path


class CheckpointError(Exception):
    """A checkpoint that cannot be found, read or matched; the message names the directory."""


# --------------------------------------------------------------------------------------------
# Finding checkpoints.


def list_steps(path: PathLike) -> list[int]:
    """The steps of the finished checkpoints under a run folder or a ``checkpoints/`` folder.

    Orbax writes each checkpoint to a temporary folder and renames it to ``<step>`` when
    complete, so unfinished saves (``<step>.orbax-checkpoint-tmp-*``) are not listed.

    Args:
      path: a run folder or its ``checkpoints/`` folder.

    Returns:
      The steps, ascending (empty when there are none).

    Example:
      >>> list_steps("runs/lstm_smoke")  # doctest: +SKIP
      [30, 60]
    """
    ckdir = _checkpoints_folder(Path(path))
    if ckdir is None:
        return []
    return sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit() and p.is_dir())


def _checkpoints_folder(path: Path) -> Path | None:
    if checkpoint.checkpoint_dir(path).is_dir():
        return checkpoint.checkpoint_dir(path)
    if path.is_dir() and path.name == "checkpoints":
        return path
    return None


def resolve(path: PathLike, step: int | None = None) -> Path:
    """The folder of one checkpoint: ``<workdir>/checkpoints/<step>``.

    Args:
      path: a run folder, its ``checkpoints/`` folder, or a checkpoint folder.
      step: which checkpoint of a run folder; its latest when None.

    Returns:
      The checkpoint folder (holding ``state/`` and ``meta/``).

    Raises:
      CheckpointError: nothing there is a jaxlm checkpoint, or ``step`` is not among them.

    Example:
      >>> resolve("runs/lstm_smoke")  # doctest: +SKIP
      PosixPath('runs/lstm_smoke/checkpoints/60')
    """
    path = Path(path)
    if (path / STATE_ITEM).is_dir():
        if step is not None and path.name.isdigit() and int(path.name) != step:
            raise CheckpointError(f"{path} is the checkpoint of step {path.name}, not {step}")
        return path
    ckdir = _checkpoints_folder(path)
    if ckdir is None:
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
        raise CheckpointError(
            f"{path} is not a jaxlm checkpoint: expected a run folder with checkpoints/, a "
            "checkpoints/ folder, or a checkpoint folder <workdir>/checkpoints/<step> holding "
            f"{STATE_ITEM}/ and {META_ITEM}/"
        )
    steps = list_steps(ckdir)
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {ckdir}")
    if step is None:
        return ckdir / str(steps[-1])
    if step not in steps:
        raise CheckpointError(f"no checkpoint of step {step} in {ckdir}; found steps {steps}")
    return ckdir / str(step)


def last_checkpoints(path: PathLike, k: int) -> list[Path]:
    """The folders of the last ``k`` checkpoints of a run, oldest first.

    Args:
      path: a run folder or its ``checkpoints/`` folder.
      k: how many.

    Returns:
      Checkpoint folders.

    Example:
      >>> last_checkpoints("runs/lstm_smoke", 2)  # doctest: +SKIP
      [PosixPath('runs/lstm_smoke/checkpoints/30'), PosixPath('runs/lstm_smoke/checkpoints/60')]
    """
    steps = list_steps(path)
    if k < 1 or len(steps) < k:
        raise CheckpointError(
            f"asked for the last {k} checkpoints of {path}, which holds {len(steps)}: {steps}"
        )
    ckdir = _checkpoints_folder(Path(path))
    return [ckdir / str(s) for s in steps[-k:]]


def _step_of(ckpt: Path) -> int | None:
    return int(ckpt.name) if ckpt.name.isdigit() else None


# --------------------------------------------------------------------------------------------
# Reading: metadata, meta JSON, arrays.


def read_meta(path: PathLike, step: int | None = None) -> dict[str, Any]:
    """The ``meta`` item of a checkpoint: ``{"config": ..., "tokenizer": ...}`` JSON.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.

    Returns:
      The JSON data.

    Example:
      >>> read_meta("runs/lstm_smoke")["tokenizer"]["kind"]  # doctest: +SKIP
      'char'
    """
    ckpt = resolve(path, step)
    try:
        return ocp.JsonCheckpointHandler().restore(epath.Path(ckpt / META_ITEM))
    except Exception as e:  # orbax and json raise many types
        raise CheckpointError(
            f"cannot read {ckpt / META_ITEM} (the config and tokenizer JSON): "
            f"{type(e).__name__}: {e}"
        ) from e


def metadata_tree(path: PathLike, step: int | None = None) -> Any:
    """The state's tree of orbax ``ArrayMetadata`` (shape, dtype, saved sharding), no array data.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.

    Returns:
      A nested dict/list tree with the structure of the saved state.

    Example:
      >>> metadata_tree("runs/lstm_smoke")["params"]["head"]["kernel"].shape  # doctest: +SKIP
      (64, 104)
    """
    ckpt = resolve(path, step)
    try:
        return ocp.StandardCheckpointHandler().metadata(epath.Path(ckpt / STATE_ITEM)).tree
    except Exception as e:
        raise CheckpointError(
            f"cannot read the array metadata of {ckpt / STATE_ITEM}: {type(e).__name__}: {e}"
        ) from e


def _numpy_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(jax.numpy.dtype(name))
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r}; expected e.g. float32, bfloat16, float16") from e


def _size(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def inspect(path: PathLike, step: int | None = None) -> dict[str, Any]:
    """Describes a checkpoint from its metadata alone, without reading any array data.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.

    Returns:
      A JSON-ready dict: ``directory``, ``step``, ``steps`` (all checkpoints of the run),
      ``config`` (model, data and training summary; the full config is in ``meta``),
      ``tokenizer`` (kind and vocabulary size), ``leaves`` (one entry per array: ``path``,
      ``shape``, ``dtype``, ``size``, ``bytes``) and ``totals`` per top-level part
      (``params``, ``opt_state``, ...) and overall (``count`` of elements and ``bytes``).

    Example:
      >>> report = inspect("runs/lstm_smoke")  # doctest: +SKIP
      >>> report["tokenizer"]  # doctest: +SKIP
      {'kind': 'char', 'vocab_size': 104}
    """
    ckpt = resolve(path, step)
    meta = read_meta(ckpt)
    tree = metadata_tree(ckpt)
    leaves = []
    totals: dict[str, dict[str, int]] = {}
    for name, m in flatten(tree).items():
        dtype = np.dtype(m.dtype)
        size = _size(m.shape)
        leaves.append(
            {
                "path": name,
                "shape": list(m.shape),
                "dtype": dtype.name,
                "size": size,
                "bytes": size * dtype.itemsize,
            }
        )
        part = totals.setdefault(name.split("/")[0], {"leaves": 0, "count": 0, "bytes": 0})
        part["leaves"] += 1
        part["count"] += size
        part["bytes"] += size * dtype.itemsize
    totals["all"] = {k: sum(t[k] for t in totals.values()) for k in ("leaves", "count", "bytes")}
    config = meta.get("config", {})
    tokenizer = meta.get("tokenizer", {})
    return {
        "directory": str(ckpt),
        "step": _step_of(ckpt),
        "steps": list_steps(ckpt.parent) if ckpt.parent.name == "checkpoints" else [],
        "config": _config_summary(config),
        "tokenizer": {"kind": tokenizer.get("kind"), "vocab_size": _vocab_size(tokenizer)},
        "leaves": leaves,
        "totals": totals,
    }


def _vocab_size(tokenizer: dict) -> int | None:
    """The vocabulary size from a tokenizer's JSON without building it."""
    from jaxlm.data.tokenizers import tokenizer_from_json

    try:
        return int(tokenizer_from_json(tokenizer).vocab_size)
    except Exception:  # an unknown or newer tokenizer kind: report what can be seen
        if isinstance(tokenizer.get("vocab_size"), int):
            return tokenizer["vocab_size"]
        for key in ("vocab", "chars", "words", "tokens"):
            if isinstance(tokenizer.get(key), list):
                return len(tokenizer[key])
        return None


def _config_summary(config: dict) -> dict[str, Any]:
    model = dict(config.get("model", {}))
    data = config.get("data", {})
    train = config.get("train", {})
    return {
        "name": config.get("name"),
        "model": model,
        "precision": config.get("precision"),
        "data": {k: data.get(k) for k in ("corpus", "path", "tokenizer", "batch_size", "seq_len")},
        "optimizer": {k: config.get("optimizer", {}).get(k) for k in ("name", "learning_rate")},
        "num_steps": train.get("num_steps"),
        "parallel": config.get("parallel"),
    }


def format_inspect(report: dict[str, Any], *, parts: Iterable[str] = ("params",)) -> str:
    """The human-readable text of an :func:`inspect` report.

    Args:
      report: from :func:`inspect`.
      parts: top-level parts whose leaves are listed one per line (all parts are totalled).

    Returns:
      Multi-line text.
    """
    c = report["config"]
    m = c.get("model", {})
    if "hidden_sizes" in m and m.get("name") in ("lstm", "gru", "rnn"):
        model_keys = ("name", "embed_dim", "hidden_sizes", "tie_embeddings")
    else:
        model_keys = (
            "name",
            "embed_dim",
            "num_layers",
            "num_heads",
            "mlp_dim",
            "norm",
            "positions",
            "tie_embeddings",
        )
    model_desc = ", ".join(f"{k}={m[k]}" for k in model_keys if k in m)
    lines = [
        f"checkpoint {report['directory']} (step {report['step']}; run steps {report['steps']})",
        f"config: {c.get('name')}: {model_desc}; precision {c.get('precision')}",
        f"data: {c.get('data')}; {c.get('num_steps')} steps",
        f"tokenizer: {report['tokenizer']['kind']}, vocabulary {report['tokenizer']['vocab_size']}",
    ]
    parts = tuple(parts)
    rows = [leaf for leaf in report["leaves"] if leaf["path"].split("/")[0] in parts]
    if rows:
        width = max(len(r["path"]) for r in rows)
        lines.append(f"{'path':<{width}}  {'shape':<16} {'dtype':<9} {'size':>12}")
        for r in rows:
            shape = str(tuple(r["shape"]))
            lines.append(f"{r['path']:<{width}}  {shape:<16} {r['dtype']:<9} {r['size']:>12,}")
    for part, t in report["totals"].items():
        lines.append(
            f"total {part}: {t['count']:,} values in {t['leaves']} arrays, "
            f"{t['bytes'] / 2**20:,.2f} MiB"
        )
    return "\n".join(lines)


def load_state(
    path: PathLike, step: int | None = None, *, parts: Sequence[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint's state as numpy arrays on the host, whatever devices saved it.

    It works whatever number of devices saved the checkpoint (it never rebuilds the saved
    shardings).

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.
      parts: read only these top-level parts (e.g. ``("params",)``); all when None.

    Returns:
      ``(state, meta)``: the state as nested dicts/lists of numpy arrays, and the meta JSON.

    Raises:
      CheckpointError: the checkpoint is unreadable, truncated or corrupted (the message
        names its directory and the cause).

    Example:
      >>> state, meta = load_state("runs/lstm_smoke", parts=("params",))  # doctest: +SKIP
      >>> sorted(state)  # doctest: +SKIP
      ['params']
    """
    ckpt = resolve(path, step)
    meta = read_meta(ckpt)
    tree = metadata_tree(ckpt)
    if parts is not None:
        missing = [p for p in parts if p not in tree]
        if missing:
            raise CheckpointError(f"{ckpt / STATE_ITEM} has no {missing}; it holds {sorted(tree)}")
        tree = {p: tree[p] for p in parts}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        state = handler.restore(
            epath.Path(ckpt / STATE_ITEM),
            args=ocp.args.PyTreeRestore(
                item=tree, restore_args=restore_args, partial_restore=parts is not None
            ),
        )
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {ckpt} (truncated or corrupted?): {type(e).__name__}: {e}"
        ) from e
    finally:
        handler.close()
    state = jax.tree.map(np.asarray, state)
    return dict(state), meta


def _abstract_on(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]]) -> Any:
    """Target leaves for orbax: shape, dtype and a sharding by the rules on ``mesh``."""
    shardings = sharding.rule_shardings(tree, mesh, rules)
    data = mesh.shape["data"]
    if "carry" in tree:  # as in the trainer: recurrent state split over "data" by batch row
        shardings["carry"] = jax.tree.map(
            lambda m: (
                NamedSharding(mesh, PartitionSpec("data"))
                if len(m.shape) and m.shape[0] % data == 0
                else NamedSharding(mesh, PartitionSpec())
            ),
            tree["carry"],
        )
    return jax.tree.map(
        lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=s), tree, shardings
    )


def rules_from_config(config: dict | None) -> list[tuple[str, PartitionSpec]]:
    """``config.parallel.rules`` (as stored in a checkpoint's JSON) as ``(regex, spec)`` pairs.

    Args:
      config: the config JSON of a checkpoint.

    Returns:
      The rules, empty when there are none.
    """
    rules = ((config or {}).get("parallel") or {}).get("rules") or ()
    return [(pattern, PartitionSpec(*spec)) for pattern, spec in rules]


def restore_sharded(
    path: PathLike,
    mesh: Mesh,
    rules: Sequence[tuple[str, PartitionSpec]] | None = None,
    step: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores a checkpoint onto ``mesh`` with target shardings, whatever mesh saved it.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      mesh: the ("data", "model") mesh to place the arrays on.
      rules: ``(regex, PartitionSpec)`` sharding rules on "/"-joined paths (the first match
        applies, unmatched leaves are replicated); the checkpoint's own
        ``config.parallel.rules`` when None. The recurrent carry is split over "data".
      step: which checkpoint of a run folder.

    Returns:
      ``(state, meta)`` with ``jax.Array`` leaves on ``mesh``.

    Example:
      >>> mesh = sharding.make_mesh(1, 1)  # doctest: +SKIP
      >>> state, _ = restore_sharded("runs/four_devices", mesh)  # doctest: +SKIP
    """
    ckpt = resolve(path, step)
    meta = read_meta(ckpt)
    tree = metadata_tree(ckpt)
    rules = rules_from_config(meta.get("config")) if rules is None else list(rules)
    target = _abstract_on(tree, mesh, rules)
    handler = ocp.StandardCheckpointHandler()
    try:
        state = handler.restore(
            epath.Path(ckpt / STATE_ITEM), args=ocp.args.StandardRestore(target)
        )
    except Exception as e:
        raise CheckpointError(
            f"cannot restore checkpoint {ckpt} onto mesh {dict(mesh.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from e
    finally:
        handler.close()
    return dict(state), meta


# --------------------------------------------------------------------------------------------
# Writing.


def write_checkpoint(
    workdir: PathLike, step: int, state: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Writes a state tree and its meta JSON as checkpoint ``step`` of ``workdir``.

    The layout is the trainer's (``<workdir>/checkpoints/<step>/{state,meta}``), written
    atomically by orbax, so ``train``, ``evaluate``, ``--config.init_from`` and these tools read
    it like any other.

    Args:
      workdir: the run folder to write into (created if needed).
      step: the checkpoint's step.
      state: ``step``, ``params``, ``opt_state``, ``rng``, ``carry`` as numpy or jax arrays.
      meta: ``{"config": ..., "tokenizer": ...}`` JSON.

    Returns:
      The new checkpoint's folder.

    Raises:
      CheckpointError: ``workdir`` already holds a checkpoint of ``step``.
    """
    workdir = Path(workdir)
    if step in list_steps(workdir):
        raise CheckpointError(
            f"{checkpoint.checkpoint_dir(workdir) / str(step)} already exists; choose another "
            "output folder"
        )
    mgr = checkpoint.manager(workdir, keep=1_000_000)
    try:
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mgr.wait_until_finished()
    finally:
        mgr.close()
    return checkpoint.checkpoint_dir(workdir) / str(step)


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


# --------------------------------------------------------------------------------------------
# Average.


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
    newest = max(folders, key=lambda f: _step_of(f) or -1)
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
    return write_checkpoint(out_workdir, _step_of(newest) or 0, state, meta)


# --------------------------------------------------------------------------------------------
# Export and import (.npz, .safetensors).


def _format_of(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    raise ValueError(f"{file}: unknown array file format; expected a .npz or .safetensors name")


def write_arrays(file: PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Writes named arrays to ``.npz`` or ``.safetensors`` (chosen by the file name).

    ``.npz`` files cannot say bfloat16 (numpy reads it back as raw bytes), so their dtypes
    are recorded in a ``__jaxlm_metadata__`` JSON string entry with ``metadata``; safetensors
    keeps dtypes and string metadata in its header.

    Args:
      file: the ``.npz`` or ``.safetensors`` path.
      arrays: ``{name: array}``.
      metadata: strings to store with them.

    Returns:
      The path written.
    """
    file = Path(file)
    fmt = _format_of(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {n: np.asarray(a, order="C") for n, a in arrays.items()}  # keeps 0-d arrays 0-d
    if fmt == "npz":
        info = dict(metadata, dtypes=json.dumps({n: a.dtype.name for n, a in arrays.items()}))
        np.savez(file, **arrays, **{NPZ_METADATA_KEY: np.array(json.dumps(info))})
    else:
        safetensors_numpy = _safetensors()
        safetensors_numpy.save_file(arrays, str(file), metadata=metadata)
    return file


def read_arrays(file: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads named arrays from ``.npz`` (without pickle) or ``.safetensors``.

    Args:
      file: the path.

    Returns:
      ``(arrays, metadata)``.

    Example:
      >>> arrays, info = read_arrays("/tmp/params.npz")  # doctest: +SKIP
    """
    file = Path(file)
    fmt = _format_of(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    if fmt == "npz":
        with np.load(file, allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files}
        raw = arrays.pop(NPZ_METADATA_KEY, None)
        info = json.loads(str(raw)) if raw is not None else {}
        dtypes = json.loads(info.get("dtypes", "{}"))
        for n, a in arrays.items():
            want = dtypes.get(n)
            if want and a.dtype.name != want:  # bfloat16 and friends come back as raw bytes
                arrays[n] = a.view(_numpy_dtype(want))
        return arrays, {k: v for k, v in info.items() if k != "dtypes"}
    safetensors_numpy = _safetensors()
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        info = dict(f.metadata() or {})
    return dict(safetensors_numpy.load_file(str(file))), info


def _safetensors():
    try:
        import safetensors.numpy as safetensors_numpy
    except ImportError as e:
        raise ImportError(
            ".safetensors files need the safetensors package: pip install 'jaxlm[interop]' "
            "(or pip install safetensors)"
        ) from e
    return safetensors_numpy


def _cast(a: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Casts floating-point arrays to ``dtype``; integers (steps, counts, keys) stay."""
    if dtype is None or not jax.numpy.issubdtype(a.dtype, jax.numpy.floating):
        return a
    return a.astype(dtype)


def export(
    path: PathLike,
    file: PathLike,
    *,
    step: int | None = None,
    dtype: str | None = None,
    opt_state: bool = True,
) -> dict[str, Any]:
    """Writes a checkpoint's arrays to ``.npz`` or ``.safetensors`` with "/"-joined names.

    Names are paths in the state tree: ``params/embed/embedding``, ``opt_state/1/0/mu/...``,
    ``step``, ``rng``, ``carry/0/0``.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      file: the output file; its suffix picks the format.
      step: which checkpoint of a run folder.
      dtype: cast floating-point arrays to this (e.g. ``"bfloat16"``); as saved when None.
      opt_state: include the whole state; False writes only ``params/...``.

    Returns:
      ``{"file", "arrays", "bytes", "step"}``.

    Example:
      >>> export("runs/lstm_smoke", "/tmp/p.safetensors", opt_state=False)  # doctest: +SKIP
    """
    ckpt = resolve(path, step)
    state, _ = load_state(ckpt, parts=None if opt_state else ("params",))
    cast = _numpy_dtype(dtype) if dtype else None
    arrays = {n: _cast(a, cast) for n, a in flatten(state).items()}
    metadata = {"format": "jaxlm", "source": str(ckpt), "step": str(_step_of(ckpt))}
    out = write_arrays(file, arrays, metadata)
    return {
        "file": str(out),
        "arrays": len(arrays),
        "bytes": int(sum(a.nbytes for a in arrays.values())),
        "step": _step_of(ckpt),
    }


def import_arrays(
    file: PathLike,
    out_workdir: PathLike,
    *,
    like: PathLike,
    step: int | None = None,
    dtype: str | None = None,
) -> Path:
    """Writes a checkpoint from a ``.npz``/``.safetensors`` file of "/"-joined names.

    The checkpoint ``like`` gives the tree structure, the meta (config and tokenizer) and every
    array the file does not hold (e.g. the optimizer state when only ``params/...`` were
    exported). Every name in the file must be a path of ``like``'s state with the same shape.

    Args:
      file: the array file (as :func:`export` writes it).
      out_workdir: run folder for the new checkpoint.
      like: a checkpoint of the same model (see :func:`resolve`).
      step: the new checkpoint's step; the file's recorded step, else ``like``'s.
      dtype: cast the file's floating-point arrays to this; kept as stored when None.

    Returns:
      The new checkpoint's folder.

    Example:
      >>> import_arrays("/tmp/p.npz", "runs/imported", like="runs/lstm_smoke")  # doctest: +SKIP
    """
    template = resolve(like)
    arrays, info = read_arrays(file)
    state, meta = load_state(template)
    flat = flatten(state)
    unknown = sorted(set(arrays) - set(flat))
    if unknown:
        raise CheckpointError(
            f"{file} holds arrays that {template} has no place for: {unknown[:5]} (expected "
            f"names like {list(flat)[:3]})"
        )
    cast = _numpy_dtype(dtype) if dtype else None
    for name, a in arrays.items():
        if a.shape != flat[name].shape:
            raise CheckpointError(
                f"{file}: {name} has shape {a.shape}; {template} expects {flat[name].shape}"
            )
        flat[name] = _cast(a, cast)
    new_state = unflatten_like(state, flat)
    if step is None:
        recorded = info.get("step", "")
        step = int(recorded) if recorded.isdigit() else (_step_of(template) or 0)
    meta = dict(meta, imported_from=str(file))
    return write_checkpoint(out_workdir, step, new_state, meta)


# --------------------------------------------------------------------------------------------
# Reshard.


def parse_rules(specs: Iterable[str]) -> list[tuple[str, PartitionSpec]]:
    """Parses ``"REGEX=AXES"`` rules, AXES comma-separated mesh axes or ``None`` per dimension.

    Args:
      specs: e.g. ``["embed/embedding=None,model", "head/kernel=model"]``.

    Returns:
      ``(regex, PartitionSpec)`` pairs.

    Example:
      >>> parse_rules(["embed=None,model"])
      [('embed', PartitionSpec(None, 'model'))]
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
    return write_checkpoint(out_workdir, _step_of(ckpt) or 0, state, meta)


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


# --------------------------------------------------------------------------------------------
# Diff.


def diff(
    a: PathLike, b: PathLike, *, step_a: int | None = None, step_b: int | None = None
) -> dict[str, Any]:
    """Compares two checkpoints leaf by leaf.

    The relative difference of two values is ``|x - y| / max(|x|, |y|)`` (0 where both are 0).

    Args:
      a: a checkpoint path (see :func:`resolve`).
      b: another.
      step_a: which checkpoint of ``a`` when it is a run folder.
      step_b: which checkpoint of ``b``.

    Returns:
      A JSON-ready dict: ``a``, ``b``, ``leaves`` (``path``, ``shape``, ``dtype``,
      ``max_abs``, ``max_rel``, ``equal``), ``only_in_a``, ``only_in_b``, ``mismatched``
      (shape or dtype), the overall ``max_abs``/``max_rel`` and ``identical`` (every leaf
      present in both, same shape, dtype and bits).

    Example:
      >>> diff("runs/resumed", "runs/straight")["identical"]  # doctest: +SKIP
      True
    """
    ca, cb = resolve(a, step_a), resolve(b, step_b)
    sa, _ = load_state(ca)
    sb, _ = load_state(cb)
    fa, fb = flatten(sa), flatten(sb)
    leaves, mismatched = [], []
    for name in [n for n in fa if n in fb]:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            mismatched.append(
                {
                    "path": name,
                    "a": [list(x.shape), x.dtype.name],
                    "b": [list(y.shape), y.dtype.name],
                }
            )
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        d = np.abs(x64 - y64)
        scale = np.maximum(np.abs(x64), np.abs(y64))
        rel = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
        leaves.append(
            {
                "path": name,
                "shape": list(x.shape),
                "dtype": x.dtype.name,
                "max_abs": float(d.max()) if d.size else 0.0,
                "max_rel": float(rel.max()) if rel.size else 0.0,
                "equal": x.tobytes() == y.tobytes(),
            }
        )
    only_a = [n for n in fa if n not in fb]
    only_b = [n for n in fb if n not in fa]
    return {
        "a": str(ca),
        "b": str(cb),
        "leaves": leaves,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "mismatched": mismatched,
        "max_abs": max((r["max_abs"] for r in leaves), default=0.0),
        "max_rel": max((r["max_rel"] for r in leaves), default=0.0),
        "identical": not (only_a or only_b or mismatched) and all(r["equal"] for r in leaves),
    }


def format_diff(report: dict[str, Any], *, all_leaves: bool = False) -> str:
    """The human-readable text of a :func:`diff` report.

    Args:
      report: from :func:`diff`.
      all_leaves: list equal leaves too (else only those that differ).

    Returns:
      Multi-line text.
    """
    lines = [f"a: {report['a']}", f"b: {report['b']}"]
    rows = [r for r in report["leaves"] if all_leaves or not r["equal"]]
    if rows:
        width = max(len(r["path"]) for r in rows)
        lines.append(f"{'path':<{width}}  {'max abs':>12} {'max rel':>12}")
        for r in rows:
            lines.append(f"{r['path']:<{width}}  {r['max_abs']:>12.6g} {r['max_rel']:>12.6g}")
    for key in ("only_in_a", "only_in_b", "mismatched"):
        for item in report[key]:
            lines.append(f"{key}: {item}")
    n_diff = sum(not r["equal"] for r in report["leaves"])
    verdict = "identical" if report["identical"] else f"{n_diff} of {len(report['leaves'])} differ"
    lines.append(
        f"{verdict}; max abs diff {report['max_abs']:.6g}, max rel diff {report['max_rel']:.6g}"
    )
    return "\n".join(lines)
