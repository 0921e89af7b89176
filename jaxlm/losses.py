"""Token losses, returned as ``(sum, count)`` so callers reduce over batches before dividing."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy in nats, and the number of tokens it covers.

    Computed in float32 whatever the logits' dtype. With ``label_smoothing=eps`` the target is
    ``(1 - eps) * one_hot(label) + eps / V``, as ``optax.smooth_labels`` gives, but the loss is
    computed as ``(1 - eps) * nll + eps * (logsumexp(logits) - mean(logits))`` so no one-hot of the
    vocabulary is ever built: memory stays that of the logits themselves.

    Args:
      logits: ``[..., V]`` unnormalised scores.
      labels: ``[...]`` integer targets in ``[0, V)``.
      label_smoothing: mass spread uniformly over the vocabulary, in ``[0, 1)``; a traced
        scalar (a hyperparameter argument of a compiled step) is applied whatever its value.
      mask: optional ``[...]`` weights (1 counts a token, 0 ignores it).

    Returns:
      ``(loss_sum, count)``: float32 scalars; the mean loss is ``loss_sum / count``.

    Example:
      >>> logits = jnp.zeros((2, 3, 5)); labels = jnp.ones((2, 3), jnp.int32)
      >>> total, count = cross_entropy(logits, labels)
      >>> float(total / count)  # log(5)
      1.609...
    """
    static = isinstance(label_smoothing, int | float)  # else traced: one program for any value
    if static and not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss = lse - label_logit
    if not static or label_smoothing:
        uniform = lse - jnp.mean(logits, axis=-1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
    if mask is None:
        return jnp.sum(loss), jnp.asarray(loss.size, jnp.float32)
    mask = mask.astype(jnp.float32)
    return jnp.sum(loss * mask), jnp.sum(mask)
