"""Attention maps of a Transformer, per layer and head, and attention rollout.

The queries and keys come from the model's own forward pass (each block sows them into the
``"intermediates"`` collection, a no-op unless collected), and the probabilities are the
softmax of their scaled products under the causal mask, as
:func:`~jaxlm.models.transformer.causal_attention` computes them. Rollout follows Abnar and
Zuidema (2020, https://arxiv.org/abs/2005.00928): the heads' mean, with the residual path as
half of each layer (``0.5 A + 0.5 I``, rows renormalised), multiplied through the layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Attention:
    """A Transformer's attention over one window.

    Attributes:
      maps: ``[L, H, T, T]``: layer, head, query position, key position; each row sums to 1
        over the keys at or before the query.
      rollout: ``[T, T]``: how much each position's output draws on each input token through
        all layers (rows sum to 1).
    """

    maps: np.ndarray
    rollout: np.ndarray


def rollout(maps_LxHxTxT: Any, residual: float = 0.5) -> np.ndarray:
    """Attention rollout: the heads' mean with the residual path, multiplied through layers.

    Args:
      maps_LxHxTxT: attention probabilities per layer and head.
      residual: the weight of the identity (the residual connection) in each layer.

    Returns:
      ``[T, T]`` float64, rows summing to 1.

    Example:
      >>> maps = np.full((2, 1, 2, 2), 0.5) * np.tril(np.ones((2, 2)))
      >>> maps[:, :, 0, 0] = 1.0
      >>> rollout(maps).round(3).tolist()
      [[1.0, 0.0], [0.438, 0.562]]
    """
    maps = np.asarray(maps_LxHxTxT, np.float64)
    t = maps.shape[-1]
    out = np.eye(t)
    for layer in maps:
        a = (1.0 - residual) * layer.mean(0) + residual * np.eye(t)
        a /= a.sum(-1, keepdims=True)
        out = a @ out
    return out


@functools.partial(jax.jit, static_argnames=("model",))
def _maps(model, params, tokens_T):
    _, state = model.apply(
        {"params": params}, tokens_T[None], None, deterministic=True, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    maps = []
    for i in range(model.num_layers):
        ((q, k),) = inter[f"blocks_{i}"]["queries_keys"]
        q, k = q[0].astype(jnp.float32), k[0].astype(jnp.float32)  # [T, N, D]
        scores = jnp.einsum("qnd,knd->nqk", q, k) / math.sqrt(q.shape[-1])
        t = q.shape[0]
        causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
        maps.append(jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1))
    return jnp.stack(maps)


def attention_maps(model: Any, params: Any, tokens: Any) -> Attention:
    """Every layer's and head's attention over a window, and their rollout.

    Args:
      model: a :class:`~jaxlm.models.Transformer`.
      params: its parameters.
      tokens: ``[T]`` token ids, at most the model's context.

    Returns:
      An :class:`Attention`.

    Example:
      >>> from jaxlm.models import Transformer
      >>> model = Transformer(vocab_size=7, embed_dim=8, num_layers=2, num_heads=2, max_len=8)
      >>> params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
      >>> a = attention_maps(model, params, jnp.array([1, 2, 3, 4]))
      >>> a.maps.shape, np.allclose(a.maps.sum(-1), 1), np.allclose(a.rollout.sum(-1), 1)
      ((2, 2, 4, 4), True, True)
    """
    maps = np.asarray(_maps(model, params, jnp.asarray(tokens, jnp.int32)), np.float64)
    return Attention(maps, rollout(maps))
