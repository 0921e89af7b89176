"""Small pieces shared by the models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    fused with the conversion, the backward products take the cotangent in float32, and a
    float32 kernel gets its gradient in float32 (flax rounds it to the compute dtype first).

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
        dtype = self.dtype or jnp.result_type(inputs, kernel)
        dims = (((inputs.ndim - 1,), (0,)), ((), ()))
        if dtype == jnp.float32:  # flax's own program
            inputs, kernel = self.promote_dtype(inputs, kernel, dtype=dtype)
            y = jax.lax.dot_general(inputs, kernel, dims, precision=self.precision)
        else:  # the kernel's gradient comes back in its own dtype, not rounded to ``dtype``
            y = precision.dot_general(inputs, kernel, dims, dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(dtype)


def is_on(value: Any) -> bool:
    """Whether a rate or coefficient switches its part of the program on.

    A Python number is on when it is not 0; anything else (a traced value, an array: a
    hyperparameter passed into the compiled step, :mod:`jaxlm.train.hparams`) is on whatever
    its value, so that one program serves every value. A rate of exactly 0 in the config thus
    stays a static "off" (a smaller program), and a traced 0 drops nothing.

    Args:
      value: a rate, a coefficient, or a traced scalar.

    Returns:
      True when the program must compute the part.

    Example:
      >>> import jax.numpy as jnp
      >>> is_on(0.0), is_on(0.1), is_on(jnp.float32(0.0))
      (False, True, True)
    """
    if isinstance(value, int | float):
        return value != 0
    return True


class Dropout(nn.Dropout):
    """``flax.linen.Dropout`` whose rate may be a traced value (a hyperparameter argument).

    flax's own compares ``rate == 0.0`` in Python, which a traced rate cannot answer. This one
    decides on :func:`is_on` instead and otherwise computes exactly what flax's does (the
    same mask from the same key: the class keeps flax's name, so its modules are auto-named
    ``Dropout_<i>`` and draw the same ``make_rng("dropout")`` streams as before).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((2, 4))
      >>> y = Dropout(jnp.float32(0.5)).apply({}, x, deterministic=False,
      ...                                     rngs={"dropout": jax.random.key(0)})
      >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
    """

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: Any = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or not is_on(self.rate):
            return inputs
        if isinstance(self.rate, int | float) and self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if not isinstance(keep_prob, float):  # traced float32: divide in the inputs' dtype, as
            keep_prob = jnp.asarray(keep_prob, inputs.dtype)  # a Python float would
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep_prob, shape=shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
