"""XLA compiler options for a model's jitted training and evaluation steps.

On CPU, XLA runs a batched matrix product (attention's ``[B*N, T, D] x [B*N, D, S]``) on one
thread: at the Transformer benchmark's shapes it reaches 65-100 GFLOP/s on one core or two
alike, where PyTorch's ``bmm`` reaches 140-170 on two. XLA's CPU backend can hand its matrix
products to oneDNN instead (``xla_cpu_use_onednn``), whose kernels use every thread for them:
125-190 GFLOP/s for the same products. The option is experimental, off by default, and only
worth it where such products dominate: one whole Transformer benchmark step (forward, backward,
AdamW) went from 551 to 494 ms, while the LSTM benchmark steps (small products inside
``lax.scan``) got slower (CPU ms per step: PTB small 80-83 -> 92-94, char 709-727 -> 808-902).
So a model class asks for it with a class attribute ``xla_cpu_onednn_matmuls = True`` (the
:class:`~jaxlm.models.Transformer` does) and :func:`compiler_options` returns the options for it.

Each product is its own oneDNN call (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``): with
``LIBRARY_FUSION_TYPE_DOT`` XLA puts a product that feeds another into one oneDNN partition,
and in jaxlib 0.10.2 running such a program aborts the process ("partition compile failed",
``SIGILL``), e.g. ``x.T @ (x @ w)``. Results equal XLA's own products to float32 rounding (the
benchmark step's gradients within 1.2e-6 relative).

Set ``JAXLM_XLA_ONEDNN=0`` in the environment to compile every model with XLA's defaults.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.runtime.backend import on_cpu

ONEDNN_MATMULS: dict[str, Any] = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
ENV = "JAXLM_XLA_ONEDNN"


def compiler_options(model: Any) -> dict[str, Any] | None:
    """The ``compiler_options`` for jitting ``model``'s steps on the default backend.

    Args:
      model: a jaxlm model (or any object); it asks for oneDNN matrix products on CPU with a
        true class attribute ``xla_cpu_onednn_matmuls``.

    Returns:
      :data:`ONEDNN_MATMULS` when the model asks for them, the backend is CPU, this jaxlib's XLA
      accepts them and ``JAXLM_XLA_ONEDNN`` is not ``0``; otherwise None (XLA's defaults).

    Example:
      >>> from jaxlm.models import Transformer
      >>> model = Transformer(vocab_size=65)
      >>> step = jax.jit(lambda x: x @ x, compiler_options=compiler_options(model))
    """
    if not getattr(model, "xla_cpu_onednn_matmuls", False):
        return None
    if os.environ.get(ENV, "1").strip() == "0" or not on_cpu():
        return None
    return dict(ONEDNN_MATMULS) if onednn_available() else None


@functools.cache
def onednn_available() -> bool:
    """Whether XLA here compiles a batched matrix product through oneDNN with the options.

    Compiles (does not run) one small product: False if the options are unknown to this XLA or
    the product is not handed to oneDNN (a build without it, or another CPU architecture).
    """
    x = jax.ShapeDtypeStruct((64, 64, 64), jnp.float32)
    try:
        compiled = jax.jit(jnp.matmul, compiler_options=ONEDNN_MATMULS).lower(x, x).compile()
    except Exception:  # noqa: BLE001 - XLA rejects unknown options with various error types
        return False
    return "onednn" in compiled.as_text()
