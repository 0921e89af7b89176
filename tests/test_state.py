"""jaxlm.state: one builder of the training state from a config, for training and for reading."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import optim, state, transforms, tree
from jaxlm.config import load_config


def test_build_gives_the_model_the_optimizer_and_an_abstract_state_matching_init():
    config = load_config("lstm:smoke")
    setup = state.build(config, vocab_size=30)
    fresh = jax.jit(setup.init)()
    assert jax.tree.structure(fresh) == jax.tree.structure(setup.abstract)
    for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(setup.abstract), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert fresh.params["embed"]["embedding"].shape == (30, 32) and int(fresh.step) == 0
    # The base key is the second half of PRNGKey(seed): step s folds it with s.
    np.testing.assert_array_equal(fresh.rng, jax.random.split(jax.random.PRNGKey(0))[1])
    assert len(fresh.carry) == 2 and fresh.carry[0][0].shape == (8, 64)  # (c, h) per layer


def test_init_with_given_parameters_keeps_them_and_starts_the_optimizer_fresh():
    setup = state.build(load_config("transformer:smoke"), vocab_size=30)
    params = jax.tree.map(lambda p: jnp.full_like(p, 0.5), setup.abstract.params)
    given = jax.jit(setup.init)(params)
    assert all(bool(jnp.all(p == 0.5)) for p in jax.tree.leaves(given.params))
    assert given.carry is None  # a Transformer carries nothing between windows
    assert jax.tree.structure(given.opt_state) == jax.tree.structure(setup.abstract.opt_state)


def test_presets_read_the_layout_from_the_abstract_parameters():
    config = load_config("lstm:smoke")
    config.finetune.strategy = "gradual_unfreeze"
    setup = state.build(config, vocab_size=30)
    assert optim.model_layout(setup.abstract.params).layers == ("layers_1", "layers_0")
    (unfreezing,) = tree.find_states(setup.abstract.opt_state, transforms.GradualUnfreezeState)
    assert unfreezing.count.shape == ()  # the unfreeze progress is part of the state
