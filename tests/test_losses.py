"""jaxlm.losses.cross_entropy: label smoothing against optax, and its memory footprint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.losses import cross_entropy


def reference(logits, labels, eps, mask=None):
    """optax.smooth_labels on a one-hot target + optax.softmax_cross_entropy, as (sum, count)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), eps)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    mask = jnp.ones_like(loss) if mask is None else mask.astype(jnp.float32)
    return jnp.sum(loss * mask), jnp.sum(mask)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3.0 * rng.normal(size=(2, 5, 7)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 7, size=(2, 5)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 5)) < 0.7)
    return logits, labels, mask


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_loss_equals_optax_smooth_labels(small, eps):
    logits, labels, mask = small
    for m in (None, mask):
        total, count = jax.jit(lambda lg, y, m: cross_entropy(lg, y, label_smoothing=eps, mask=m))(
            logits, labels, m
        )
        want_total, want_count = reference(logits, labels, eps, m)
        np.testing.assert_allclose(total, want_total, rtol=1e-5)
        assert float(count) == float(want_count)
    # and the gradients agree
    g = jax.grad(lambda lg: cross_entropy(lg, labels, label_smoothing=eps, mask=mask)[0])(logits)
    g_ref = jax.grad(lambda lg: reference(lg, labels, eps, mask)[0])(logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_unsmoothed_loss_is_integer_label_cross_entropy_and_hand_value(small):
    logits, labels, _ = small
    total, count = cross_entropy(logits, labels)
    want = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert float(count) == 10.0
    # uniform logits: log V per token, smoothed or not
    total, count = cross_entropy(
        jnp.zeros((1, 4, 8)), jnp.zeros((1, 4), jnp.int32), label_smoothing=0.3
    )
    np.testing.assert_allclose(total / count, np.log(8.0), rtol=1e-6)


def test_bfloat16_logits_are_computed_in_float32(small):
    logits, labels, _ = small
    total, _ = cross_entropy(logits.astype(jnp.bfloat16), labels, label_smoothing=0.1)
    want, _ = reference(logits.astype(jnp.bfloat16).astype(jnp.float32), labels, 0.1)
    assert total.dtype == jnp.float32
    np.testing.assert_allclose(total, want, rtol=1e-5)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        cross_entropy(jnp.zeros((1, 3)), jnp.zeros((1,), jnp.int32), label_smoothing=1.0)


def test_smoothed_loss_needs_no_vocabulary_sized_buffers():
    """Compiled temporaries of the smoothed loss and its gradient stay under one [B, T, V] buffer.

    The one-hot formulation needs two in the forward pass on this backend; ours fuses to
    reductions over the logits.
    """
    b, t, v = 4, 64, 8192
    logits = jax.ShapeDtypeStruct((b, t, v), jnp.float32)
    labels = jax.ShapeDtypeStruct((b, t), jnp.int32)
    btv_bytes = b * t * v * 4

    def ours(lg, y):
        return cross_entropy(lg, y, label_smoothing=0.1)[0]

    def one_hot(lg, y):
        return reference(lg, y, 0.1)[0]

    def temp_bytes(fn):
        return jax.jit(fn).lower(logits, labels).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(ours) <= btv_bytes
    assert temp_bytes(jax.grad(ours)) <= btv_bytes  # the gradient itself is the output buffer
    assert temp_bytes(ours) < temp_bytes(one_hot)
