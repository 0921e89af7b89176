"""jaxlm.transforms.centralization: centralize_matrices against hand computations and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm import transforms as T
from tests.helpers import numbered_layers


def test_centralize_matrices_zero_mean_per_output_unit():
    rng = np.random.default_rng(0)
    g = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(6, 4)) + 3.0, jnp.float32),
            "bias": jnp.arange(4.0),
        },
        "conv": jnp.asarray(rng.normal(size=(2, 2, 3, 5)), jnp.float32),
        "embed": jnp.ones((7, 2)),
    }
    tx = T.centralize_matrices(exclude="embed")
    u, _ = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_allclose(u["dense"]["kernel"].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(u["conv"].mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(u["dense"]["bias"], g["dense"]["bias"])
    np.testing.assert_array_equal(u["embed"], g["embed"])
    # hand computation: each column minus its mean
    k = g["dense"]["kernel"]
    np.testing.assert_allclose(u["dense"]["kernel"], k - np.mean(k, axis=0), rtol=1e-6)
    # equals optax.centralize in PyTorch's [out, in] layout
    ref, _ = T.centralize().update(k.T, optax.EmptyState())
    np.testing.assert_allclose(u["dense"]["kernel"], ref.T, rtol=1e-6)


def test_centralize_matrices_exclude_takes_layers_1_not_layers_10():
    p = numbered_layers()
    tx = T.centralize_matrices(exclude="layers_1")
    u, _ = tx.update(p, tx.init(p))
    np.testing.assert_array_equal(u["layers_1"]["kernel"], p["layers_1"]["kernel"])
    for m in ("layers_10", "layers_11"):
        np.testing.assert_allclose(u[m]["kernel"].mean(axis=0), 0.0, atol=1e-6)
