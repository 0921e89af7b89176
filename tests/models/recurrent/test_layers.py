"""Recurrent layers: reading an embedding (a token lookup or a vocabulary table) is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.recurrent import CELLS as LAYERS

CELLS = ["rnn", "lstm", "gru"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("vocab", [5, 40], ids=["vocab_table", "lookup"])
def test_layer_reading_an_embedding_equals_the_embedded_input(cell, vocab):
    # 3 x 10 = 30 tokens: V = 5 takes the [V, G] table path, V = 40 looks each token up.
    layer = LAYERS[cell](8)
    emb = jax.random.normal(jax.random.key(2), (vocab, 6))
    tokens = jax.random.randint(jax.random.key(3), (3, 10), 0, vocab)
    carry = jax.tree.map(lambda z: z + 0.3, layer.initial_carry(3))
    params = layer.init(jax.random.key(0), emb[tokens], carry)
    r = jax.random.normal(jax.random.key(4), (3, 10, 8))

    def loss(p, e, by_table):
        if by_table:
            h, fin = layer.apply(p, tokens, carry, embedding=e)
        else:
            h, fin = layer.apply(p, e[tokens], carry)
        return jnp.sum(h * r) + sum(jnp.sum(f) for f in jax.tree.leaves(fin))

    got = jax.value_and_grad(loss, argnums=(0, 1))(params, emb, True)
    want = jax.value_and_grad(loss, argnums=(0, 1))(params, emb, False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)
    # The table path really is the one taken for the small vocabulary: a [V, G] product.
    g = layer.num_gates * 8
    jaxpr = str(jax.make_jaxpr(lambda e: loss(params, e, True))(emb))
    assert (f"f32[{vocab},{g}] = dot_general" in jaxpr) == (vocab == 5)
