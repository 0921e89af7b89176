"""jaxlm.explain.attention: attention maps from the model's own queries and keys, and rollout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.explain import attention_maps, rollout
from jaxlm.models import Transformer


def test_identical_inputs_attend_uniformly_to_every_visible_position():
    model = Transformer(vocab_size=5, embed_dim=16, num_layers=2, num_heads=4, max_len=6)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    params = {**params, "pos_embed": jnp.zeros_like(params["pos_embed"])}  # no positions
    a = attention_maps(model, params, jnp.full((6,), 3))
    uniform = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]  # 1 / (t + 1) over t + 1 keys
    np.testing.assert_allclose(a.maps, np.broadcast_to(uniform, (2, 4, 6, 6)), atol=1e-6)
    np.testing.assert_allclose(a.rollout, rollout(a.maps))
    # by hand: two layers of 0.5 * uniform + 0.5 * identity
    layer = 0.5 * uniform + 0.5 * np.eye(6)
    np.testing.assert_allclose(a.rollout, layer @ layer, atol=1e-6)
