"""The backend and process switches, in one place (see :mod:`jaxlm.runtime`)."""

from __future__ import annotations

import jax


def on_cpu() -> bool:
    """Whether JAX computes on XLA's CPU backend."""
    return jax.default_backend() == "cpu"


def single_cpu_device() -> bool:
    """Whether the whole computation runs on one CPU device (no sharding to respect)."""
    return on_cpu() and jax.device_count() == 1


def serialise_steps() -> bool:
    """Whether each step must finish before the next is dispatched.

    The CPU backend's gloo collectives deadlock when two computations with collectives run at
    once across processes (seen on 2 processes x 2 devices); GPUs and TPUs order them on
    streams.
    """
    return jax.process_count() > 1 and on_cpu()


def async_checkpointing() -> bool:
    """Whether orbax may save in a background thread.

    Across processes, orbax's background thread synchronises hosts with collectives that could
    interleave with the training step's own: save in the foreground there.
    """
    return jax.process_count() == 1
