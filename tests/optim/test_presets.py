"""jaxlm.optim.presets: the fine-tuning strategies as optax transforms on a model's layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import transforms
from jaxlm.config import base_config
from jaxlm.models import get_model
from jaxlm.optim import build_optimizer, presets

V, D, H = 6, 3, 4


def lm_tree(v=V, tied=False, seed=0):
    """A tree named like RecurrentLM's: embed, layers_0..2, head (or proj when tied)."""
    k = iter(jax.random.split(jax.random.PRNGKey(seed), 12))
    t = {"embed": {"embedding": jax.random.normal(next(k), (v, D))}}
    for i, n_in in enumerate([D, H, H]):
        t[f"layers_{i}"] = {
            "ih": {"kernel": jax.random.normal(next(k), (n_in, 4 * H)), "bias": jnp.zeros(4 * H)},
            "hh": {"kernel": jax.random.normal(next(k), (H, 4 * H))},
        }
    if tied:
        t["proj"] = {"kernel": jax.random.normal(next(k), (H, D)), "bias": jnp.zeros(D)}
    else:
        t["head"] = {"kernel": jax.random.normal(next(k), (H, v)), "bias": jnp.zeros(v)}
    return t


def ft_config(strategy, **finetune_fields):
    c = base_config()
    c.train.num_steps = 100
    c.optimizer.update(dict(name="sgd", schedule="constant", learning_rate=0.1, clip_norm=0.0))
    c.finetune.strategy = strategy
    c.finetune.update(finetune_fields)
    return c


def one_step_updates(c, params, steps=1):
    """The updates of the ``steps``-th step with all-ones gradients, per top-level module."""
    tx = build_optimizer(c, params)
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    history = []
    for _ in range(steps):
        u, state = update(g, state, params)
        history.append(u)
    return history


def scale_of(u, module):
    """The single scale of a module's update (all-ones gradient, SGD): -lr * factor."""
    vals = np.unique(np.concatenate([np.ravel(x) for x in jax.tree.leaves(u[module])]))
    assert len(vals) == 1, (module, vals)
    return float(vals[0])


def test_layout_of_the_real_models():
    m = base_config().model
    m.hidden_sizes = (8, 8, 8)
    m.embed_dim = 4
    tokens = jnp.zeros((1, 2), jnp.int32)
    for tied, output in [(False, ["^head/bias$", "^head/kernel$"]), (True, None)]:
        m.tie_embeddings = tied
        model = get_model(m, 11)
        params = jax.eval_shape(
            lambda model=model: model.init(jax.random.PRNGKey(0), tokens, model.initial_carry(1))[
                "params"
            ]
        )
        layout = presets.model_layout(params)
        assert layout.layers == tuple(f"layers_{i}" for i in (2, 1, 0))
        if output:
            assert list(layout.output) == output and layout.inputs == ("^embed/embedding$",)
        else:  # tied: the embedding is the output layer
            assert "^embed/embedding$" in layout.output and layout.inputs == ()


def test_layout_of_a_transformer_shaped_tree():
    x = jnp.zeros(2)
    block = {"qkv": {"kernel": x}, "mlp_fc": {"kernel": x}}
    tree = {
        "embed": {"embedding": x},
        "pos_embed": x,
        "blocks_0": block,
        "blocks_1": block,
        "final_norm": {"scale": x},
        "head": {"kernel": x},
    }
    assert presets.model_layout(tree).groups() == [
        ["^final_norm/scale$", "^head/kernel$"],
        ["blocks_1"],
        ["blocks_0"],
        ["^embed/embedding$", "^pos_embed$"],
    ]
    del tree["head"]  # tied: the embedding joins the output group, positions stay at the bottom
    groups = presets.model_layout(tree).groups()
    assert groups[0] == ["^embed/embedding$", "^final_norm/scale$"]
    assert groups[-1] == ["^pos_embed$"]


def test_layer_groups_select_exactly_their_layer():
    # transforms match whole path components: layers_1's group must not take layers_10..11
    x = jnp.zeros(2)
    tree = {f"layers_{i}": {"ih": {"kernel": x}} for i in range(12)}
    tree |= {"embed": {"embedding": x}, "head": {"kernel": x}}
    groups = presets.model_layout(tree).groups()
    labels = transforms.match_groups(tree, [p for g in groups for p in g])
    flat = dict(zip(transforms.param_paths(tree), jax.tree.leaves(labels), strict=True))
    order = [p for g in groups for p in g]
    assert {path: order[i] for path, i in flat.items()} == {
        **{f"layers_{i}/ih/kernel": f"layers_{i}" for i in range(12)},
        "embed/embedding": "^embed/embedding$",
        "head/kernel": "^head/kernel$",
    }


def test_full_trains_everything_at_the_base_rate():
    u = one_step_updates(ft_config("full"), lm_tree())[0]
    assert {m: scale_of(u, m) for m in u} == {m: pytest.approx(-0.1) for m in u}


@pytest.mark.parametrize(
    "k, trained", [(1, {"head", "layers_2"}), (2, {"head", "layers_2", "layers_1"})]
)
def test_freeze_all_but_last(k, trained):
    u = one_step_updates(ft_config("freeze_all_but_last", num_last_layers=k), lm_tree())[0]
    assert {m for m in u if scale_of(u, m) != 0.0} == trained


def test_tune_last_layers_clips_and_adds_l2():
    params = lm_tree()
    c = ft_config("tune_last_layers", num_last_layers=1, clip_norm=0.5, l2=0.01)
    u = one_step_updates(c, params)[0]
    assert {m for m in u if any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u[m]))} == {
        "head",
        "layers_2",
    }
    # hand computation over the trainable leaves only: g + l2 * p, clipped to norm 0.5
    trainable = {m: params[m] for m in ("head", "layers_2")}
    g = jax.tree.map(lambda p: 1.0 + 0.01 * p, trainable)
    norm = optax.tree.norm(g)
    want = jax.tree.map(lambda x: -0.1 * x * 0.5 / norm, g)
    np.testing.assert_allclose(u["head"]["kernel"], want["head"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(
        u["layers_2"]["hh"]["kernel"], want["layers_2"]["hh"]["kernel"], rtol=1e-5
    )
    c.model.dropout = 0.0
    assert presets.prepare_config(c).model.dropout == 0.3
    assert c.model.dropout == 0.0


def test_feature_trains_only_the_output_layer_at_a_smaller_rate():
    u = one_step_updates(ft_config("feature", lr_factor=0.1), lm_tree())[0]
    assert scale_of(u, "head") == pytest.approx(-0.01)
    assert all(scale_of(u, m) == 0.0 for m in ("embed", "layers_0", "layers_1", "layers_2"))
    u = one_step_updates(ft_config("feature", lr_factor=0.1), lm_tree(tied=True))[0]
    assert scale_of(u, "proj") == pytest.approx(-0.01) and scale_of(u, "embed") == pytest.approx(
        -0.01
    )
    assert scale_of(u, "layers_2") == 0.0


def test_gradual_unfreeze_from_the_top_one_group_per_interval():
    history = one_step_updates(ft_config("gradual_unfreeze", unfreeze_every=2), lm_tree(), steps=9)
    order = ["head", "layers_2", "layers_1", "layers_0", "embed"]
    for step, u in enumerate(history):
        live = {m for m in order if scale_of(u, m) != 0.0}
        assert live == set(order[: step // 2 + 1]), step


def test_gradual_unfreeze_counts_updates_under_accumulation():
    c = ft_config("gradual_unfreeze", unfreeze_every=4)
    c.optimizer.accumulate_steps = 2
    history = one_step_updates(c, lm_tree(), steps=6)
    # micro-batches 1, 3, 5 apply updates 0, 1, 2; layers_2 unfreezes at update 2 (= step 4)
    assert scale_of(history[3], "layers_2") == 0.0
    assert scale_of(history[5], "layers_2") != 0.0


def test_discriminative_rates_shrink_by_the_factor_per_group():
    u = one_step_updates(ft_config("discriminative", discriminative_factor=2.0), lm_tree())[0]
    for i, m in enumerate(["head", "layers_2", "layers_1", "layers_0", "embed"]):
        assert scale_of(u, m) == pytest.approx(-0.1 / 2.0**i), m


def test_unknown_strategy_and_layerless_trees_are_refused():
    with pytest.raises(ValueError, match="unknown strategy 'partial'"):
        build_optimizer(ft_config("partial"))
    with pytest.raises(ValueError, match="layers_<i> or blocks_<i>"):
        build_optimizer(ft_config("feature"), {"head": {"kernel": jnp.ones((2, 2))}})
