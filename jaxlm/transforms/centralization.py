"""Gradient centralization: optax's, and a matrices-only variant in flax's kernel layout."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlm.transforms.paths import Patterns, compile_patterns
from jaxlm.tree import path_str

centralize = optax.centralize


def centralize_matrices(exclude: Patterns = ()) -> optax.GradientTransformation:
    """Gradient centralization on weight matrices only (rank >= 2), per output unit.

    For every leaf of rank >= 2 the mean over all axes but the last is subtracted, so each
    output unit's incoming gradient vector has zero mean; vectors (biases, norm scales) pass
    unchanged, which is how the paper applies it. What this adds to ``optax.centralize``: optax
    averages over all axes but the *first* (PyTorch's ``[out, in]`` layout); flax kernels are
    ``[in, out]`` (``[..., in, out]`` for convolutions), so ours averages over all but the *last*.
    Leaves whose path matches an ``exclude`` pattern (for example embedding tables) are left
    alone; patterns match whole path components (:func:`jaxlm.tree.compile_pattern`), so
    ``exclude="layers_1"`` skips ``layers_1/kernel`` but not ``layers_10/kernel``.

    Args:
      exclude: regular expression(s) matched against "/"-joined parameter paths as whole
        components; matching leaves are skipped (an exclude that matches nothing is no error).

    Returns:
      A stateless ``optax.GradientTransformation``; chain it before the optimizer.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = centralize_matrices()
      >>> g = {"kernel": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "bias": jnp.array([1.0, 1.0])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u["kernel"]
      Array([[-1., -2.],
             [ 1.,  2.]], dtype=float32)

    References:
      Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural
      Networks", ECCV 2020, https://arxiv.org/abs/2004.01461.
    """
    skip = compile_patterns(exclude)

    def center(path: Any, g: jax.Array) -> jax.Array:
        if g.ndim < 2 or any(rx.search(path_str(path)) for rx in skip):
            return g
        return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)

    def update_fn(
        updates: Any, state: optax.EmptyState, params: Any = None
    ) -> tuple[Any, optax.EmptyState]:
        del params
        return jax.tree_util.tree_map_with_path(center, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)
