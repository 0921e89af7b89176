"""The recurrent kernels: the hand-written backward pass equals autodiff of the plain loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.recurrent import kernels
from jaxlm.models.recurrent.kernels import recurrent_layer, reference_layer

CELLS = ["rnn", "lstm", "gru"]


# groups=2: the time loop runs as two batch slices side by side, as on a single CPU device
# (kernels.batch_groups; the tests run with 4 devices, where it keeps one slice).
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_hand_written_backward_equals_autodiff(cell, groups, monkeypatch):
    monkeypatch.setattr(kernels, "batch_groups", lambda batch: groups)
    t, b, i, h = 6, 4, 4, 5
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    ks = jax.random.split(jax.random.key(0), 9)
    x = jax.random.normal(ks[0], (t, b, i))
    w_ih = 0.5 * jax.random.normal(ks[1], (i, g * h))
    b_ih = jax.random.normal(ks[2], (g * h,))
    w_hh = 0.5 * jax.random.normal(ks[3], (h, g * h))
    b_hh = jax.random.normal(ks[4], (g * h,)) if cell == "gru" else None
    h0 = jax.random.normal(ks[5], (b, h))
    carry = (jax.random.normal(ks[6], (b, h)), h0) if cell == "lstm" else h0
    r_out, r_fin = jax.random.normal(ks[7], (t, b, h)), jax.random.normal(ks[8], (b, h))

    def loss(fn, *args):
        out, fin = fn(cell, *args)
        return jnp.sum(out * r_out) + sum(jnp.sum(f * r_fin) for f in jax.tree.leaves(fin))

    args = (x, w_ih, b_ih, w_hh, b_hh, carry)
    argnums = (0, 1, 2, 3, 4, 5)
    ours = jax.jit(jax.grad(functools.partial(loss, recurrent_layer), argnums=argnums))(*args)
    ref = jax.jit(jax.grad(functools.partial(loss, reference_layer), argnums=argnums))(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), ours, ref)
