"""The backend and process switches, in one place (see :mod:`jaxlm.runtime`)."""

from __future__ import annotations

from typing import Any

import jax


def on_cpu() -> bool:
    """Whether JAX computes on XLA's CPU backend."""
    return jax.default_backend() == "cpu"


def single_cpu_device() -> bool:
    """Whether the whole computation runs on one CPU device (no sharding to respect)."""
    return on_cpu() and jax.device_count() == 1


def serialise_steps(mesh: Any = None) -> bool:
    """Whether each computation with collectives must finish before the next is dispatched.

    The CPU backend's gloo collectives deadlock when two computations with collectives run at
    once across processes (seen on 2 processes x 2 devices), and its in-process collectives
    when several are in flight on one process's devices (jaxlib 0.10.2 on 2 cores, 4 or 8
    devices: 160 small sums of an array sharded over 4 devices, dispatched without waiting,
    hang in an all-reduce that one device never joins, even chained one on the next; waiting
    for each, 800 do not). Parameters sharded over the devices (the fsdp and tensor
    strategies) put collectives in every checksum and evaluation window. GPUs and TPUs order
    them on streams.

    Args:
      mesh: the mesh the computations run on (one device: nothing to wait for); None: all
        devices.

    Returns:
      True on the CPU backend with several processes, or several devices in ``mesh``.
    """
    devices = jax.device_count() if mesh is None else mesh.size
    return on_cpu() and (jax.process_count() > 1 or devices > 1)


def async_checkpointing() -> bool:
    """Whether orbax may save in a background thread.

    Across processes, orbax's background thread synchronises hosts with collectives that could
    interleave with the training step's own: save in the foreground there.
    """
    return jax.process_count() == 1
