"""Checksums of a checkpoint's arrays, written into its meta at save and verified at restore.

Orbax and tensorstore check neither the bytes they write nor the bytes they read back: two
flipped bits in a parameter file restore silently, and overwritten bytes give NaNs steps later.
Every array of a saved state gets a 64-bit checksum (two 32-bit sums of its words, each word
mixed with its position by MurmurHash3's finalizer), computed where the array lives: under
``jax.jit`` on the devices for a training state (sharded arrays included, no copy to the host),
with numpy for arrays on the host. Both give the same numbers, so a checkpoint saved from
devices verifies when read to the host (``python tools/checkpoint.py verify``) and the other way
round. Any changed bit, and any change of a few bytes short of a deliberate collision, changes
the checksum.

The meta JSON itself (config, tokenizer, those checksums) gets a SHA-256 of its canonical text
(:func:`with_meta_digest`, checked by :func:`check_meta`): a changed character there would
otherwise resume a run with another tokenizer or config, or refuse it as "incompatible".

Files that are not orbax checkpoints (an n-gram run's ``model.npz`` and ARPA file) get SHA-256
digests instead (:func:`file_digest`), kept in ``model.checksums.json`` beside them
(:func:`write_model_checksums`, checked by :func:`model_files_status` and
:func:`check_model_files`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxlm.checkpoints.layout import NGRAM_CHECKSUMS
from jaxlm.errors import CheckpointError

if TYPE_CHECKING:  # JAX is imported where a state is summed: an n-gram run never needs it
    import jax

_MIX = 0x9E3779B1  # the golden-ratio step: positions spread over all 32 bits
_SEED = 0x2545F491  # the second sum starts from other words
_CHUNK = 1 << 16  # words per host block: its buffers (256 KiB each) stay in the cache


class ChecksumMismatch(CheckpointError):
    """Arrays whose bytes are not the bytes that were saved."""


def _fmix(h, xp):
    """MurmurHash3's 32-bit finalizer: every input bit changes about half the output bits, so
    changed words (sign bits included) do not cancel in a sum, as they do in a weighted sum."""
    h = h ^ (h >> 16)
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _sums(words, i, xp):
    """The two sums of one block of words at flat positions ``i`` (both uint32, same shape)."""
    first = _fmix(words + i * xp.uint32(_MIX), xp)
    second = _fmix(first ^ (i + xp.uint32(_SEED)), xp)
    return xp.sum(first, dtype=xp.uint32), xp.sum(second, dtype=xp.uint32)


def _host_words(x: np.ndarray) -> np.ndarray:
    """The array's bit pattern as flat uint32 words (one word per element of 4 bytes or fewer,
    two per element of 8)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    size = x.dtype.itemsize
    if size in (4, 8):
        return x.reshape(-1).view(np.uint32)
    return x.reshape(-1).view({1: np.uint8, 2: np.uint16}[size])


def _fmix_inplace(h: np.ndarray, tmp: np.ndarray) -> None:
    """:func:`_fmix` of ``h`` in place (``tmp``: scratch of the same size)."""
    for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        np.right_shift(h, shift, out=tmp)
        np.bitwise_xor(h, tmp, out=h)
        if factor is not None:
            np.multiply(h, np.uint32(factor), out=h)


def _host_checksum(x: np.ndarray) -> list[int]:
    """:func:`_sums` over the whole array, block by block in buffers that stay in the cache
    (the same numbers as the device's, at a few times the speed of whole-array temporaries)."""
    words = _host_words(np.asarray(x))
    if words.size == 0:
        return [0, 0]
    chunk = min(_CHUNK, words.size)
    offsets = np.arange(chunk, dtype=np.uint32)
    steps = offsets * np.uint32(_MIX)  # (start + j) * MIX = start * MIX + j * MIX, mod 2**32
    h, tmp = np.empty(chunk, np.uint32), np.empty(chunk, np.uint32)
    totals = [0, 0]
    with np.errstate(over="ignore"):
        for start in range(0, words.size, chunk):
            block = words[start : start + chunk]
            n = block.size
            first, scratch = h[:n], tmp[:n]
            np.add(steps[:n], np.uint32(start * _MIX % 2**32), out=first)
            np.add(first, block, out=first)
            _fmix_inplace(first, scratch)
            totals[0] += int(first.sum(dtype=np.uint64))
            np.add(offsets[:n], np.uint32((start + _SEED) % 2**32), out=scratch)
            np.bitwise_xor(first, scratch, out=first)  # the second sum's words
            _fmix_inplace(first, scratch)
            totals[1] += int(first.sum(dtype=np.uint64))
    return [totals[0] % 2**32, totals[1] % 2**32]


def _device_words(x: jax.Array) -> jax.Array:
    import jax
    import jax.numpy as jnp

    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)


def _device_checksum(x: jax.Array) -> jax.Array:
    import jax
    import jax.numpy as jnp

    words = _device_words(x)
    # The flat position of every element, built from iotas: the array is never reshaped, so
    # a sharded array stays where it is.
    i = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(words.ndim)):
        i = i + jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim) * jnp.uint32(stride)
        stride *= words.shape[dim]
    return jnp.stack(_sums(words, i, jnp))


# One computation per array, not one for the whole tree: arrays of the same shape (every layer's)
# share a compilation, so a checkpoint of a deep model compiles a few small programs once,
# instead of one with every array in it at every tree it meets (a restored state's arrays
# differ from a fresh one's in being committed to their devices).
@functools.cache
def _device_checksum_jit() -> Any:
    import jax

    return jax.jit(_device_checksum)


def tree_checksums(tree: Any) -> dict[str, list[int]]:
    """The checksum of every array in a tree, by "/"-joined path.

    Args:
      tree: a state (``TrainState`` or its saved form) of jax arrays (computed on their
        devices) or numpy arrays (on the host).

    Returns:
      ``{path: [sum, weighted sum]}``, JSON-ready.

    Example:
      >>> a = tree_checksums({"w": np.arange(4, dtype=np.float32)})
      >>> import jax.numpy as jnp
      >>> a == tree_checksums({"w": jnp.arange(4, dtype=jnp.float32)})  # host and device agree
      True
      >>> a == tree_checksums({"w": np.array([0, 1, 2, 3.0000002], np.float32)})  # one bit
      False
    """
    import jax

    from jaxlm.runtime.backend import serialise_steps
    from jaxlm.tree import flatten

    flat = flatten(tree)
    on_device = {k: v for k, v in flat.items() if isinstance(v, jax.Array)}
    out = {k: _host_checksum(v) for k, v in flat.items() if k not in on_device}
    if on_device:
        if serialise_steps():  # several CPU devices: one sum (and its collectives) at a time
            sums = [jax.device_get(_device_checksum_jit()(x)) for x in on_device.values()]
        else:
            sums = jax.device_get([_device_checksum_jit()(x) for x in on_device.values()])
        out.update({k: [int(s[0]), int(s[1])] for k, s in zip(on_device, sums, strict=True)})
    return {k: out[k] for k in flat}


def verify(tree: Any, expected: dict[str, list[int]] | None, where: str | Path) -> None:
    """Checks a restored tree against the checksums saved with it.

    Args:
      tree: the restored state (or some of its parts: only the arrays present are checked).
      expected: the checksums of the meta; None (a checkpoint written before jaxlm saved
        them) checks nothing.
      where: the checkpoint, for the message.

    Raises:
      ChecksumMismatch: an array's bytes differ from those saved (the message names them).
    """
    if expected is None:
        return
    got = tree_checksums(tree)
    bad = [path for path, value in got.items() if path in expected and expected[path] != value]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ChecksumMismatch(
            f"{where}: the bytes of {', '.join(bad[:3])}{more} are not those that were saved "
            "(checksum mismatch: the files were changed or damaged after the save)"
        )


META_DIGEST = "meta_sha256"


def _meta_text(meta: dict[str, Any]) -> bytes:
    """The canonical JSON text of a meta, its digest left out."""
    rest = {k: v for k, v in meta.items() if k != META_DIGEST}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


def with_meta_digest(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as JSON data with the SHA-256 of the rest of it under ``"meta_sha256"``.

    Example:
      >>> meta = with_meta_digest({"config": {"seed": 0}, "tokenizer": {"kind": "byte"}})
      >>> check_meta(meta, "ckpt")
      >>> meta["config"]["seed"] = 8
      >>> check_meta(meta, "ckpt")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.checkpoints.checksums.ChecksumMismatch: ckpt: its meta JSON ... is not the one saved ...
    """
    meta = json.loads(json.dumps(meta))  # as it will be read back: tuples as lists
    meta[META_DIGEST] = hashlib.sha256(_meta_text(meta)).hexdigest()
    return meta


def check_meta(meta: dict[str, Any], where: str | Path) -> None:
    """Checks a meta as read from disk (before any upgrade) against its digest; a meta saved
    before jaxlm wrote one is accepted as it is.

    Raises:
      ChecksumMismatch: the meta's text differs from the one saved.
    """
    saved = meta.get(META_DIGEST)
    if saved is not None and saved != hashlib.sha256(_meta_text(meta)).hexdigest():
        raise ChecksumMismatch(
            f"{where}: its meta JSON (config, tokenizer, checksums) is not the one saved "
            "(SHA-256 mismatch: changed or damaged after the save)"
        )


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, as hex.

    Example:
      >>> import tempfile
      >>> f = Path(tempfile.mkdtemp()) / "x"; _ = f.write_bytes(b"abc")
      >>> file_digest(f)[:12]
      'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_model_checksums(
    folder: str | Path, names: Sequence[str], digests: dict[str, str] | None = None
) -> Path:
    """Writes the SHA-256 and size of a run's model files to ``model.checksums.json``.

    Call it once the files are complete and before the run is marked finished, so that the
    digests of a finished run describe the files its numbers came from.

    Args:
      folder: the run folder.
      names: the files to describe, relative to ``folder`` (``model.npz``, ``model.arpa``).
      digests: SHA-256 hex digests already taken of some of them as they were written (what
        :func:`jaxlm.models.ngram.arpa.write_arpa` returns), by name; the others are read.

    Returns:
      The checksums file (written under a temporary name and renamed: whole or absent).

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp()); _ = (run / "model.npz").write_bytes(b"abc")
      >>> write_model_checksums(run, ["model.npz"]).name
      'model.checksums.json'
      >>> model_files_status(run)
      {'model.npz': None}
    """
    folder = Path(folder)
    digests = digests or {}
    files = {
        name: {
            "sha256": digests.get(name) or file_digest(folder / name),
            "bytes": (folder / name).stat().st_size,
        }
        for name in names
    }
    out = folder / NGRAM_CHECKSUMS
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, out)
    return out


def _saved_digests(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The ``files`` of the checksums file; None when there is none.

    Raises:
      ChecksumMismatch: the checksums file is there but not JSON of the expected shape.
    """
    record = folder / NGRAM_CHECKSUMS
    if not record.is_file():
        return None
    try:
        files = json.loads(record.read_text())["files"]
        if not all(isinstance(v["sha256"], str) for v in files.values()):
            raise TypeError("a sha256 that is not a string")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChecksumMismatch(
            f"{record}: unreadable ({type(e).__name__}: {e}); expected "
            '{"files": {name: {"sha256": hex, "bytes": size}}} as jaxlm writes it'
        ) from None
    return files


def _file_problem(path: Path, saved: dict[str, Any]) -> str | None:
    """Why ``path`` is not the file that was saved (None when it is)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if "bytes" in saved and size != saved["bytes"]:
        return f"{size:,} bytes, {saved['bytes']:,} when saved (truncated or replaced)"
    if file_digest(path) != saved["sha256"]:
        return "not the file that was saved (its SHA-256 differs: changed or damaged since)"
    return None


def model_files_status(folder: str | Path) -> dict[str, str | None] | None:
    """Each model file of a run checked against ``model.checksums.json``.

    Args:
      folder: the run folder (an n-gram run's).

    Returns:
      ``{file name: None when intact, else why not}`` (``"missing"``, ``"... bytes, ... when
      saved"``, ``"not the file that was saved ..."``) for every file the checksums list, or
      None when the folder has no checksums file (a run saved before jaxlm wrote them).

    Raises:
      ChecksumMismatch: the checksums file itself is unreadable.

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp()); _ = (run / "model.npz").write_bytes(b"abc")
      >>> print(model_files_status(run))  # no checksums file
      None
      >>> _ = write_model_checksums(run, ["model.npz"]); _ = (run / "model.npz").write_bytes(b"abd")
      >>> model_files_status(run)["model.npz"][:31]
      'not the file that was saved (it'
    """
    folder = Path(folder)
    saved = _saved_digests(folder)
    if saved is None:
        return None
    return {name: _file_problem(folder / name, digest) for name, digest in saved.items()}


def check_model_files(folder: str | Path) -> None:
    """Raises unless every model file is the one saved (nothing to check: accepted as is).

    Args:
      folder: the run folder (an n-gram run's).

    Raises:
      ChecksumMismatch: a file is missing, or changed since the save (the message names it).

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp()); _ = (run / "model.npz").write_bytes(b"abc")
      >>> _ = write_model_checksums(run, ["model.npz"]); (run / "model.npz").unlink()
      >>> check_model_files(run)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.checkpoints.checksums.ChecksumMismatch: .../model.npz: missing
    """
    status = model_files_status(folder) or {}
    problems = [f"{Path(folder) / name}: {why}" for name, why in status.items() if why]
    if problems:
        raise ChecksumMismatch("; ".join(problems))
