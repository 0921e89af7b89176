"""jaxlm.transforms.freezing: freeze, gradual_unfreeze, per-group and discriminative rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import transforms as T
from tests.helpers import count_compiles, grads_at, moved, numbered_layers, run_steps, toy_params


def test_freeze_keeps_leaves_bit_identical_and_holds_no_state_for_them():
    p = toy_params()
    tx = T.freeze(["^embed", "layers_0"], optax.adamw(1e-2, weight_decay=0.1))
    traj, state = run_steps(tx, p, 20)
    for q in traj:
        np.testing.assert_array_equal(q["embed"]["embedding"], p["embed"]["embedding"])
        np.testing.assert_array_equal(q["layers_0"]["kernel"], p["layers_0"]["kernel"])
    assert moved(p, traj[-1]) == {"embed": False, "layers_0": False, "layers_1": True, "head": True}
    # Adam's moments exist only for the 4 trainable leaves.
    adam_state = state.inner_states["train"].inner_state[0]
    assert len(jax.tree.leaves(adam_state.mu)) == 4
    assert adam_state.mu["embed"]["embedding"] == optax.MaskedNode()


def test_freeze_without_inner_zeroes_updates():
    p = toy_params()
    tx = optax.chain(optax.sgd(0.1), T.freeze("^head"))
    updates, _ = tx.update(grads_at(0, p), tx.init(p))
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates["head"]))
    assert bool(jnp.any(updates["embed"]["embedding"] != 0))


def test_freeze_global_norm_clip_equals_clipping_trainable_leaves_alone():
    p = toy_params()
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    traj, _ = run_steps(T.freeze(["^embed", r"^layers_\d+"], inner), p, 10)
    sub = {"head": p["head"]}
    state = inner.init(sub)
    update = jax.jit(inner.update)
    for i in range(10):
        g = {"head": grads_at(i, traj[i])["head"]}
        u, state = update(g, state, sub)
        sub = optax.apply_updates(sub, u)
        np.testing.assert_allclose(sub["head"]["kernel"], traj[i + 1]["head"]["kernel"], rtol=1e-6)


def test_freeze_unfreeze_and_rates_take_layers_1_not_layers_10():
    p = numbered_layers()
    g = jax.tree.map(jnp.ones_like, p)
    for tx in [
        T.freeze("layers_1", optax.sgd(1.0)),
        optax.chain(optax.sgd(1.0), T.freeze("layers_1")),
        T.gradual_unfreeze(["layers_1"], [5], optax.sgd(1.0)),
        optax.chain(optax.sgd(1.0), T.per_group_lr(["layers_1"], [0.0])),
    ]:
        u, _ = tx.update(g, tx.init(p), p)
        assert {m: bool(jnp.any(u[m]["kernel"] != 0)) for m in u} == {
            "layers_1": False,
            "layers_10": True,
            "layers_11": True,
        }


def test_freeze_takes_an_optax_style_dict_mask_as_a_mask_not_as_patterns():
    p = {k: v for k, v in toy_params().items() if k in ("embed", "head")}
    for make in [
        lambda spec: T.freeze(spec, optax.adam(1e-2)),
        lambda spec: optax.chain(optax.adam(1e-2), T.freeze(spec)),
    ]:
        traj, state = run_steps(make({"embed": True, "head": False}), p, 5)
        assert moved(p, traj[-1]) == {"embed": False, "head": True}
        ref, ref_state = run_steps(
            make("^embed"), p, 5
        )  # the same as the pattern form, bit for bit
        for a, b in zip(jax.tree.leaves(traj), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b)
        assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    _, state = run_steps(T.freeze({"embed": True, "head": False}, optax.adam(1e-2)), p, 1)
    adam_state = state.inner_states["train"].inner_state[0]  # inner sees trainable leaves only
    assert adam_state.mu["embed"]["embedding"] == optax.MaskedNode()
    assert len(jax.tree.leaves(adam_state.mu)) == 2


def test_freeze_takes_a_prefix_mask():
    p = toy_params()
    mask = {
        "embed": True,
        "layers_0": True,
        "layers_1": False,
        "head": {"kernel": False, "bias": True},
    }
    for tx in [T.freeze(mask, optax.sgd(0.1)), optax.chain(optax.sgd(0.1), T.freeze(mask))]:
        traj, _ = run_steps(tx, p, 3)
        assert moved(p, traj[-1]) == {
            "embed": False,
            "layers_0": False,
            "layers_1": True,
            "head": True,
        }
        np.testing.assert_array_equal(traj[-1]["head"]["bias"], p["head"]["bias"])
        assert bool(jnp.any(traj[-1]["head"]["kernel"] != p["head"]["kernel"]))


def test_freeze_takes_a_mask_function():
    p = toy_params()

    def biases(params):
        return jax.tree.map(lambda x: x.ndim == 1, params)

    for tx in [T.freeze(biases, optax.adam(1e-2)), optax.chain(optax.adam(1e-2), T.freeze(biases))]:
        traj, _ = run_steps(tx, p, 3)
        paths, before, after = T.param_paths(p), jax.tree.leaves(p), jax.tree.leaves(traj[-1])
        for path, a, b in zip(paths, before, after, strict=True):
            assert bool(jnp.any(a != b)) == (not path.endswith("bias")), path
    _, state = run_steps(T.freeze(biases, optax.adam(1e-2)), p, 1)
    assert len(jax.tree.leaves(state.inner_states["train"].inner_state[0].mu)) == 4


def test_freeze_refuses_what_is_neither_patterns_nor_a_mask():
    accepted = "expected regular-expression pattern.*pytree of booleans.*function"
    with pytest.raises(TypeError, match=f"leaf at 'embed' that is not a boolean.*{accepted}"):
        T.freeze({"embed": "yes", "head": False})
    with pytest.raises(TypeError, match=f"leaf at 'head/kernel' .*not a boolean: 0 .*{accepted}"):
        T.freeze({"embed": True, "head": {"kernel": 0}}, optax.sgd(0.1))
    for bad in [3, None, 0.5, jnp.ones(2), ["^embed", True]]:
        with pytest.raises(TypeError, match=accepted):
            T.freeze(bad)
    p = toy_params()
    with pytest.raises(ValueError, match="not shaped like the parameters or a prefix of them"):
        T.freeze({"embed": True, "head": False}, optax.sgd(0.1)).init(p)  # layers_* missing
    with pytest.raises(TypeError, match="the mask function's result has a leaf at 'embed'"):
        T.freeze(lambda params: {k: 1 for k in params}).init(p)


GROUPS = ["^head", "^layers_1", "^layers_0"]  # embed matches no group: always trains


def test_gradual_unfreeze_moves_exactly_the_next_group_after_each_boundary():
    p = toy_params()
    tx = T.gradual_unfreeze(GROUPS, [0, 3, 6], optax.adamw(1e-2, weight_decay=0.1))
    traj, _ = run_steps(tx, p, 9)
    for step in range(9):  # update number `step` takes traj[step] to traj[step + 1]
        want = {"embed": True, "head": True, "layers_1": step >= 3, "layers_0": step >= 6}
        assert moved(traj[step], traj[step + 1]) == want, step
    # frozen leaves are bit-identical until their boundary, despite weight decay
    for step in range(4):
        np.testing.assert_array_equal(traj[step]["layers_1"]["kernel"], p["layers_1"]["kernel"])
    for step in range(7):
        np.testing.assert_array_equal(traj[step]["layers_0"]["kernel"], p["layers_0"]["kernel"])


def test_gradual_unfreeze_compiles_once_across_boundaries():
    p = toy_params()
    tx = T.gradual_unfreeze(GROUPS, [0, 2, 4], optax.adam(1e-2))
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)  # runs only while tracing
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(p)
    params, state = step(p, state, grads_at(0, p))  # warm-up: the one compile
    with count_compiles() as compiles:
        for i in range(1, 7):
            params, state = step(params, state, grads_at(i, params))
    assert len(traces) == 1
    assert compiles() == 0  # boundaries at updates 2 and 4 crossed without recompiling
    assert int(state.count) == 7


def test_gradual_unfreeze_clip_and_moments_ignore_frozen_leaves():
    p = toy_params()
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    traj, state = run_steps(
        T.gradual_unfreeze(["^head", r"^(embed|layers_\d+)"], [0, 100], inner), p, 10
    )
    sub = {"head": p["head"]}
    sub_state = inner.init(sub)
    update = jax.jit(inner.update)
    for i in range(10):
        u, sub_state = update({"head": grads_at(i, traj[i])["head"]}, sub_state, sub)
        sub = optax.apply_updates(sub, u)
        np.testing.assert_allclose(sub["head"]["kernel"], traj[i + 1]["head"]["kernel"], rtol=1e-6)
    adam = state.inner_state[1][0]
    assert all(bool(jnp.all(m == 0)) for m in jax.tree.leaves(adam.mu["layers_0"]))
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(adam.nu["embed"]))


def test_gradual_unfreeze_holds_frozen_state_with_weight_decay_inside():
    # With L2 added inside the inner chain, a momentum trace would fill up for frozen leaves if
    # their state were not held: it must stay zero until the boundary.
    p = toy_params()
    inner = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1, momentum=0.9))
    _, state = run_steps(T.gradual_unfreeze(GROUPS, [0, 5, 50], inner), p, 8)
    trace = state.inner_state[1][0].trace
    assert bool(jnp.all(trace["layers_0"]["kernel"] == 0))
    assert bool(jnp.any(trace["layers_1"]["kernel"] != 0))


def test_gradual_unfreeze_validates_arguments():
    with pytest.raises(ValueError, match="2 groups but 1 boundaries"):
        T.gradual_unfreeze(["a", "b"], [0])
    with pytest.raises(ValueError, match="non-decreasing"):
        T.gradual_unfreeze(["a", "b"], [5, 0])


def test_per_group_lr_and_discriminative_scales():
    assert T.discriminative_scales(3) == pytest.approx((1.0, 1 / 2.6, 1 / 2.6**2))
    p = toy_params()
    g = jax.tree.map(jnp.ones_like, p)
    tx = optax.chain(optax.sgd(1.0), T.discriminative_lr(GROUPS, 2.0))
    u, _ = tx.update(g, tx.init(p))
    assert float(u["head"]["kernel"][0, 0]) == -1.0
    assert float(u["layers_1"]["bias"][0]) == -0.5
    assert float(u["layers_0"]["kernel"][0, 0]) == -0.25
    assert float(u["embed"]["embedding"][0, 0]) == -1.0  # no group: scale 1
    u, _ = jax.jit(T.per_group_lr(["bias"], [3.0]).update)(g, optax.EmptyState())
    assert float(u["head"]["bias"][0]) == 3.0 and float(u["head"]["kernel"][0, 0]) == 1.0
