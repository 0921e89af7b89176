"""Small pieces shared by the models."""

from __future__ import annotations

from collections.abc import Callable

import jax


def on_rows(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Applies a map of the last axis (a Dense layer, ``embed.attend``) to ``x`` as a matrix.

    ``x [..., F]`` is flattened to ``[N, F]`` before ``fn`` and the result's leading axes are
    restored after; both reshapes are free. XLA's CPU backend compiles a dense layer on a rank-3
    operand and its gradients noticeably slower than the same layer on a matrix: with the
    10,000-way output layer of a PTB-small LSTM on ``[B, T, H]`` a whole training step took 70 ms
    instead of 59 ms (``python benchmarks/lstm_speed.py``), a Transformer step 830 instead of
    745 ms.

    Args:
      fn: maps ``[N, F]`` to ``[N, G]``.
      x: ``[..., F]``.

    Returns:
      ``fn`` of each row of ``x``, shaped ``[..., G]``.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> dense = nn.Dense(3)
      >>> x = jnp.ones((2, 5, 4))
      >>> params = dense.init(jax.random.key(0), x)
      >>> on_rows(lambda r: dense.apply(params, r), x).shape
      (2, 5, 3)
    """
    lead = x.shape[:-1]
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])
