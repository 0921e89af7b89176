"""Small pieces shared by the models."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm import precision


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


class Dense(nn.Dense):
    """``flax.linen.Dense`` as the compute dtype's product, its bias added in float32.

    Same parameters as flax's layer, and in float32 the same program. Under a narrower compute
    dtype (bfloat16, float16) the inputs and kernel are rounded to it and multiplied with a
    float32 sum (:func:`jaxlm.precision.dot_general`: on CPU in float32 kernels, which are the
    faster ones there); the bias is added in float32 and the sum rounded once to the compute
    dtype. flax rounds the product, adds a rounded bias and rounds again, and its backward
    pass sums the bias gradient, the output's cotangent over every row, in bfloat16: XLA's CPU
    backend rewrites that sum into a tree of windowed reductions that took 75 of a 675 ms
    bfloat16 Transformer step (``benchmarks/transformer_speed.py``). Here it is one float32 pass
    fused with the conversion, and the backward products take the cotangent in float32.

    Example:
      >>> dense = Dense(3, dtype=jnp.bfloat16)
      >>> x = jnp.ones((2, 4))
      >>> params = dense.init(jax.random.key(0), x)
      >>> y = dense.apply(params, x)
      >>> y.dtype, sorted(params["params"])
      (dtype(bfloat16), ['bias', 'kernel'])
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``inputs [..., F] @ kernel [F, G] + bias [G]``, in the compute dtype."""
        kernel = self.param(
            "kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype
        )
        inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
        dims = (((inputs.ndim - 1,), (0,)), ((), ()))
        if inputs.dtype == jnp.float32:  # flax's own program
            y = jax.lax.dot_general(inputs, kernel, dims, precision=self.precision)
        else:
            y = precision.dot_general(inputs, kernel, dims, inputs.dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(inputs.dtype)
