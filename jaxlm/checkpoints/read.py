"""Reading a checkpoint directly, without a manager: its array metadata, its state as numpy on
the host (whatever devices saved it), or its state onto a mesh.

Orbax reads in an event loop of its own; :func:`finished_reads` makes those loops finish every
read before they close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, PartitionSpec

from jaxlm import sharding
from jaxlm.checkpoints.checksums import verify
from jaxlm.checkpoints.layout import STATE_ITEM, PathLike, resolve
from jaxlm.checkpoints.meta import read_meta
from jaxlm.errors import CheckpointError


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, asked to close, first lets the tasks it still runs finish."""

    def close(self) -> None:
        if not self.is_running() and not self.is_closed():
            pending = [t for t in asyncio.all_tasks(self) if not t.done()]
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingLoop()


@contextlib.contextmanager
def finished_reads() -> Iterator[None]:
    """Orbax reads in an event loop of its own and closes it as soon as the restore returns or
    raises. A read that fails (a truncated or missing file) raises while its sibling reads are
    still in flight; their completions then reach a closed loop ("Event loop is closed", and
    coroutines closed mid-read). Inside this block the loops orbax makes finish those reads
    before they close."""
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(old)


def metadata_tree(path: PathLike, step: int | None = None) -> Any:
    """The state's tree of orbax ``ArrayMetadata`` (shape, dtype, saved sharding), no array data.

    Args:
      path: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      step: which checkpoint of a run folder.

    Returns:
      A nested dict/list tree with the structure of the saved state.

    Example:
      >>> metadata_tree("runs/lstm_smoke")["params"]["head"]["kernel"].shape  # doctest: +SKIP
      (64, 104)
    """
    item = resolve(path, step) / STATE_ITEM
    handler = ocp.StandardCheckpointHandler()
    try:
        with finished_reads():
            return handler.metadata(epath.Path(item)).tree
    except Exception as e:
        raise CheckpointError(
            f"cannot read the array metadata of {item}: {type(e).__name__}: {e}"
        ) from e
    finally:
        handler.close()


def load_state(
    path: PathLike, step: int | None = None, *, parts: Sequence[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint's state as numpy arrays on the host, whatever devices saved it.

    Args:
      path: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      step: which checkpoint of a run folder.
      parts: read only these top-level parts (e.g. ``("params",)``); all when None.

    Returns:
      ``(state, meta)``: the state as nested dicts/lists of numpy arrays (NamedTuple states
      come back as dicts of their fields), and the upgraded meta JSON.

    Raises:
      CheckpointError: the checkpoint is unreadable, truncated or corrupted, or its arrays are
        not the bytes that were saved (checksums); the message names its directory and why.

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
        with finished_reads():
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
    state = dict(jax.tree.map(np.asarray, state))
    verify(state, meta.get("checksums"), ckpt)
    return state, meta


def restore_sharded(
    path: PathLike,
    mesh: Mesh,
    rules: Sequence[tuple[str, PartitionSpec]] | None = None,
    step: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores a checkpoint onto ``mesh`` with target shardings, whatever mesh saved it.

    Args:
      path: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      mesh: the ("data", "model") mesh to place the arrays on.
      rules: ``(regex, PartitionSpec)`` sharding rules (see :func:`jaxlm.sharding.state_shardings`);
        the checkpoint's own (``config.parallel.rules`` and its strategy's) when None.
      step: which checkpoint of a run folder.

    Returns:
      ``(state, meta)`` with ``jax.Array`` leaves on ``mesh``.

    Example:
      >>> state, _ = restore_sharded("runs/four_devices", make_mesh(1, 1))  # doctest: +SKIP
    """
    ckpt = resolve(path, step)
    meta = read_meta(ckpt)
    tree = metadata_tree(ckpt)
    if rules is None:
        rules = sharding.parallel_rules(meta["config"].get("parallel"))
    target = sharding.abstract_on(tree, sharding.state_shardings(tree, mesh, rules))
    handler = ocp.StandardCheckpointHandler()
    try:
        with finished_reads():
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
    verify(state, meta.get("checksums"), ckpt)
    return dict(state), meta
