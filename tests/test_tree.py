"""jaxlm.tree: leaf paths, patterns bounded by path components, state lookup."""

from __future__ import annotations

import jax.numpy as jnp
import optax
import pytest

from jaxlm import tree
from jaxlm.state import TrainState


def test_paths_of_a_train_state_name_every_part():
    params = {"embed": {"embedding": jnp.ones((3, 2))}, "layers_0": [jnp.ones(2)]}
    state = TrainState(
        step=jnp.zeros(()),
        params=params,
        opt_state=optax.adam(1e-3).init(params),
        rng=jnp.zeros(2),
        carry=(jnp.zeros((2, 2)), None),
    )
    paths = tree.tree_paths(state)
    assert paths[:3] == ["step", "params/embed/embedding", "params/layers_0/0"]
    assert "opt_state/0/mu/embed/embedding" in paths and paths[-2:] == ["rng", "carry/0"]
    flat = tree.flatten(state)
    assert list(flat) == paths
    back = tree.unflatten_like(state, {k: v + 1 for k, v in flat.items()})
    assert float(back.params["layers_0"][0][0]) == 2.0


@pytest.mark.parametrize(
    "pattern, path, matches",
    [
        ("layers_1", "layers_1/ih/kernel", True),
        ("layers_1", "layers_10/ih/kernel", False),
        ("layers_1.*", "layers_10/ih/kernel", True),
        ("head", "opt_state/0/mu/head/bias", True),
        ("^embed", "embed/embedding", True),
        ("^embed", "x/embed/embedding", False),
        ("embed", "pos_embed", False),
        ("kernel$", "head/kernel", True),
        ("(^|/)layers_1(/|$)", "layers_1/ih", True),  # patterns may spell the slashes out
        ("(^|/)embed/embedding$", "decoder/embed/embedding", True),
        ("ih/kernel", "layers_0/ih/kernel", True),
    ],
)
def test_patterns_match_whole_components(pattern, path, matches):
    assert bool(tree.compile_pattern(pattern).search(path)) is matches


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        tree.compile_pattern("a)|(b")  # valid only once wrapped: refused on its own
    with pytest.raises(TypeError, match="regular-expression strings"):
        tree.compile_pattern(3)


def test_find_states_reaches_into_chains_and_wrappers():
    tx = optax.apply_if_finite(optax.chain(optax.clip(1.0), optax.adam(1e-3)), 3)
    state = tx.init({"w": jnp.ones(2)})
    (adam,) = tree.find_states(state, optax.ScaleByAdamState)
    assert adam.mu["w"].shape == (2,)
    assert tree.find_states(state, optax.ScaleByScheduleState) == []
