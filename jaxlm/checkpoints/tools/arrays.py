"""Checkpoint arrays in and out of ``.npz`` and ``.safetensors`` files, by "/"-joined names.

Names are paths in the state tree: ``params/embed/embedding``, ``opt_state/1/0/mu/...``,
``step``, ``rng``, ``carry/0/0``. Nothing is unpickled: ``.npz`` files are read with
``allow_pickle=False``, ``.safetensors`` files hold raw bytes and a JSON header.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.checkpoints.layout import PathLike, resolve, run_folder, step_of
from jaxlm.checkpoints.read import load_state
from jaxlm.checkpoints.store import write_checkpoint
from jaxlm.errors import CheckpointError
from jaxlm.tree import flatten, unflatten_like

NPZ_METADATA_KEY = "__jaxlm_metadata__"


def _numpy_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(jax.numpy.dtype(name))
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r}; expected e.g. float32, bfloat16, float16") from e


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

    Raises:
      CheckpointError: the file is truncated, not of its format, or holds pickled objects
        (the message names the file and the cause).

    Example:
      >>> arrays, info = read_arrays("/tmp/params.npz")  # doctest: +SKIP
    """
    file = Path(file)
    fmt = _format_of(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    if fmt == "safetensors":
        _safetensors()  # a missing package is an ImportError that says what to install
    read = _read_npz if fmt == "npz" else _read_safetensors
    try:
        return read(file)
    except CheckpointError:
        raise
    except Exception as e:  # zipfile, numpy, json and safetensors raise many types
        guess = "damaged, or holding pickled objects?" if fmt == "npz" else "truncated or damaged?"
        raise CheckpointError(
            f"{file}: not a readable .{fmt} file ({guess}): {type(e).__name__}: {e}"
        ) from e


def _read_npz(file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of an ``.npz`` file, bfloat16 and friends restored."""
    if not zipfile.is_zipfile(file):  # numpy would take it for a pickle and offer to load it
        raise CheckpointError(
            f"{file}: not a readable .npz file: not a zip archive of .npy files (truncated, or "
            "another format?)"
        )
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


def _read_safetensors(file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and string metadata of a ``.safetensors`` file."""
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        info = dict(f.metadata() or {})
    return dict(_safetensors().load_file(str(file))), info


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


def _matching(a: np.ndarray, like: np.ndarray, what: str, template: Path) -> np.ndarray:
    """``a`` when it has ``like``'s shape and dtype; else a CheckpointError that says the fix."""
    if a.shape != like.shape:
        raise CheckpointError(f"{what} has shape {a.shape}; {template} expects {like.shape}")
    if a.dtype != like.dtype:
        want = like.dtype.name
        if all(jax.numpy.issubdtype(d, jax.numpy.floating) for d in (a.dtype, like.dtype)):
            fix = f"cast floating-point arrays with --dtype {want} (dtype={want!r} in Python)"
        else:
            fix = f"--dtype casts floating-point arrays only, so write this array as {want}"
        raise CheckpointError(f"{what} is {a.dtype.name}; {template} expects {want}: {fix}")
    return a


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
    # The run folder's name, not the absolute path: an exported file tells nothing of the machine.
    source = f"{run_folder(ckpt).name}/checkpoints/{ckpt.name}"
    metadata = {"format": "jaxlm", "source": source, "step": str(step_of(ckpt))}
    out = write_arrays(file, arrays, metadata)
    return {
        "file": str(out),
        "arrays": len(arrays),
        "bytes": int(sum(a.nbytes for a in arrays.values())),
        "step": step_of(ckpt),
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
    exported). Every name in the file must be a path of ``like``'s state with the same shape
    and dtype (after ``dtype`` casts the floating-point ones): an array of integers where
    ``like`` holds floats would otherwise be read as a different model.

    Args:
      file: the array file (as :func:`export` writes it).
      out_workdir: run folder for the new checkpoint.
      like: a checkpoint of the same model (see :func:`resolve`).
      step: the new checkpoint's step; the file's recorded step, else ``like``'s.
      dtype: cast the file's floating-point arrays to this; kept as stored when None.

    Returns:
      The new checkpoint's folder.

    Raises:
      CheckpointError: an array has no place in ``like``, or another shape or dtype (the
        message names the array and the fix); nothing is written then.

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
        flat[name] = _matching(_cast(a, cast), flat[name], f"{file}: {name}", template)
    new_state = unflatten_like(state, flat)
    if step is None:
        recorded = info.get("step", "")
        step = int(recorded) if recorded.isdigit() else (step_of(template) or 0)
    meta = dict(meta, imported_from=str(file))
    return write_checkpoint(out_workdir, step, new_state, meta)
