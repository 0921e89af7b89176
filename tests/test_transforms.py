"""jaxlm.transforms against hand computations on small trees."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import transforms as T


def tree():
    """A tiny model-shaped tree: embedding, two layers, head."""
    k = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    return {
        "embed": {"embedding": jax.random.normal(next(k), (5, 3))},
        "layers_0": {"kernel": jax.random.normal(next(k), (3, 4)), "bias": jnp.zeros(4)},
        "layers_1": {"kernel": jax.random.normal(next(k), (4, 4)), "bias": jnp.zeros(4)},
        "head": {"kernel": jax.random.normal(next(k), (4, 5)), "bias": jnp.zeros(5)},
    }


@jax.jit
def grads_at(step, params):
    """Deterministic, step-dependent gradients shaped like ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), step), len(leaves))
    return jax.tree.unflatten(
        treedef, [3.0 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def run(tx, params, steps: int, jit: bool = True):
    """Applies ``steps`` updates; returns the parameter trajectory and the final state."""
    state = tx.init(params)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    traj = [params]
    for i in range(steps):
        params, state = step(params, state, grads_at(i, params))
        traj.append(params)
    return traj, state


def moved(a, b) -> dict[str, bool]:
    """Per top-level module: did any leaf change between two parameter trees?"""
    return {
        k: any(
            bool(jnp.any(x != y))
            for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k]), strict=True)
        )
        for k in a
    }


# Paths and patterns.


def test_param_paths_and_unmatched_pattern_error():
    p = tree()
    assert T.param_paths(p) == [
        "embed/embedding",
        "head/bias",
        "head/kernel",
        "layers_0/bias",
        "layers_0/kernel",
        "layers_1/bias",
        "layers_1/kernel",
    ]
    assert T.match_groups(p, ["^head", "kernel"])["layers_0"] == {"bias": -1, "kernel": 1}
    with pytest.raises(ValueError, match=r"(?s)'decoder' matches no parameter.*layers_1/kernel"):
        T.freeze("decoder", optax.sgd(0.1)).init(p)
    with pytest.raises(ValueError, match="'head/bias' matches no parameter path not already"):
        T.gradual_unfreeze(["^head", "head/bias"], [0, 1]).init(p)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        T.per_group_lr(["(unclosed"], [1.0])
    with pytest.raises(TypeError, match=r"a sequence \(list, tuple\) of them, got \{'embed'"):
        T.centralize_matrices(exclude={"embed": True})  # a dict's keys are no patterns
    with pytest.raises(TypeError, match="got {'head'"):
        T.per_group_lr([{"head": True}], [1.0])


def test_patterns_match_whole_path_components():
    k = iter(jax.random.split(jax.random.PRNGKey(2), 3))
    p = {f"layers_{i}": {"kernel": jax.random.normal(next(k), (3, 2))} for i in (1, 10, 11)}
    g = jax.tree.map(jnp.ones_like, p)
    assert T.match_groups(p, "layers_1") == {
        "layers_1": {"kernel": 0},
        "layers_10": {"kernel": -1},
        "layers_11": {"kernel": -1},
    }
    assert T.match_groups(p, "layers_1.*")["layers_10"] == {"kernel": 0}
    assert T.match_groups(p, "kernel")["layers_11"] == {"kernel": 0}
    with pytest.raises(ValueError, match="'ayers_1' matches no parameter path"):
        T.match_groups(p, "ayers_1")
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
    tx = T.centralize_matrices(exclude="layers_1")
    u, _ = tx.update(p, tx.init(p))
    np.testing.assert_array_equal(u["layers_1"]["kernel"], p["layers_1"]["kernel"])
    for m in ("layers_10", "layers_11"):
        np.testing.assert_allclose(u[m]["kernel"].mean(axis=0), 0.0, atol=1e-6)


# freeze.


def test_freeze_keeps_leaves_bit_identical_and_holds_no_state_for_them():
    p = tree()
    tx = T.freeze(["^embed", "layers_0"], optax.adamw(1e-2, weight_decay=0.1))
    traj, state = run(tx, p, 20)
    for q in traj:
        np.testing.assert_array_equal(q["embed"]["embedding"], p["embed"]["embedding"])
        np.testing.assert_array_equal(q["layers_0"]["kernel"], p["layers_0"]["kernel"])
    assert moved(p, traj[-1]) == {"embed": False, "layers_0": False, "layers_1": True, "head": True}
    # Adam's moments exist only for the 4 trainable leaves.
    adam_state = state.inner_states["train"].inner_state[0]
    assert len(jax.tree.leaves(adam_state.mu)) == 4
    assert adam_state.mu["embed"]["embedding"] == optax.MaskedNode()


def test_freeze_without_inner_zeroes_updates():
    p = tree()
    tx = optax.chain(optax.sgd(0.1), T.freeze("^head"))
    updates, _ = tx.update(grads_at(0, p), tx.init(p))
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates["head"]))
    assert bool(jnp.any(updates["embed"]["embedding"] != 0))


def test_freeze_global_norm_clip_equals_clipping_trainable_leaves_alone():
    p = tree()
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    traj, _ = run(T.freeze(["^embed", r"^layers_\d+"], inner), p, 10)
    sub = {"head": p["head"]}
    state = inner.init(sub)
    update = jax.jit(inner.update)
    for i in range(10):
        g = {"head": grads_at(i, traj[i])["head"]}
        u, state = update(g, state, sub)
        sub = optax.apply_updates(sub, u)
        np.testing.assert_allclose(sub["head"]["kernel"], traj[i + 1]["head"]["kernel"], rtol=1e-6)


def test_freeze_takes_an_optax_style_dict_mask_as_a_mask_not_as_patterns():
    p = {k: v for k, v in tree().items() if k in ("embed", "head")}
    for make in [
        lambda spec: T.freeze(spec, optax.adam(1e-2)),
        lambda spec: optax.chain(optax.adam(1e-2), T.freeze(spec)),
    ]:
        traj, state = run(make({"embed": True, "head": False}), p, 5)
        assert moved(p, traj[-1]) == {"embed": False, "head": True}
        ref, ref_state = run(make("^embed"), p, 5)  # the same as the pattern form, bit for bit
        for a, b in zip(jax.tree.leaves(traj), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b)
        assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    _, state = run(T.freeze({"embed": True, "head": False}, optax.adam(1e-2)), p, 1)
    adam_state = state.inner_states["train"].inner_state[0]  # inner sees trainable leaves only
    assert adam_state.mu["embed"]["embedding"] == optax.MaskedNode()
    assert len(jax.tree.leaves(adam_state.mu)) == 2


def test_freeze_takes_a_prefix_mask():
    p = tree()
    mask = {
        "embed": True,
        "layers_0": True,
        "layers_1": False,
        "head": {"kernel": False, "bias": True},
    }
    for tx in [T.freeze(mask, optax.sgd(0.1)), optax.chain(optax.sgd(0.1), T.freeze(mask))]:
        traj, _ = run(tx, p, 3)
        assert moved(p, traj[-1]) == {
            "embed": False,
            "layers_0": False,
            "layers_1": True,
            "head": True,
        }
        np.testing.assert_array_equal(traj[-1]["head"]["bias"], p["head"]["bias"])
        assert bool(jnp.any(traj[-1]["head"]["kernel"] != p["head"]["kernel"]))


def test_freeze_takes_a_mask_function():
    p = tree()

    def biases(params):
        return jax.tree.map(lambda x: x.ndim == 1, params)

    for tx in [T.freeze(biases, optax.adam(1e-2)), optax.chain(optax.adam(1e-2), T.freeze(biases))]:
        traj, _ = run(tx, p, 3)
        paths, before, after = T.param_paths(p), jax.tree.leaves(p), jax.tree.leaves(traj[-1])
        for path, a, b in zip(paths, before, after, strict=True):
            assert bool(jnp.any(a != b)) == (not path.endswith("bias")), path
    _, state = run(T.freeze(biases, optax.adam(1e-2)), p, 1)
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
    p = tree()
    with pytest.raises(ValueError, match="not shaped like the parameters or a prefix of them"):
        T.freeze({"embed": True, "head": False}, optax.sgd(0.1)).init(p)  # layers_* missing
    with pytest.raises(TypeError, match="the mask function's result has a leaf at 'embed'"):
        T.freeze(lambda params: {k: 1 for k in params}).init(p)


# gradual_unfreeze.

GROUPS = ["^head", "^layers_1", "^layers_0"]  # embed matches no group: always trains


def test_gradual_unfreeze_moves_exactly_the_next_group_after_each_boundary():
    p = tree()
    tx = T.gradual_unfreeze(GROUPS, [0, 3, 6], optax.adamw(1e-2, weight_decay=0.1))
    traj, _ = run(tx, p, 9)
    for step in range(9):  # update number `step` takes traj[step] to traj[step + 1]
        want = {"embed": True, "head": True, "layers_1": step >= 3, "layers_0": step >= 6}
        assert moved(traj[step], traj[step + 1]) == want, step
    # frozen leaves are bit-identical until their boundary, despite weight decay
    for step in range(4):
        np.testing.assert_array_equal(traj[step]["layers_1"]["kernel"], p["layers_1"]["kernel"])
    for step in range(7):
        np.testing.assert_array_equal(traj[step]["layers_0"]["kernel"], p["layers_0"]["kernel"])


def test_gradual_unfreeze_compiles_once_across_boundaries():
    p = tree()
    tx = T.gradual_unfreeze(GROUPS, [0, 2, 4], optax.adam(1e-2))
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)  # runs only while tracing
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(p)
    params = p
    for i in range(7):
        params, state = step(params, state, grads_at(i, params))
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert int(state.count) == 7


def test_gradual_unfreeze_clip_and_moments_ignore_frozen_leaves():
    p = tree()
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    traj, state = run(T.gradual_unfreeze(["^head", r"^(embed|layers_\d+)"], [0, 100], inner), p, 10)
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
    p = tree()
    inner = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1, momentum=0.9))
    _, state = run(T.gradual_unfreeze(GROUPS, [0, 5, 50], inner), p, 8)
    trace = state.inner_state[1][0].trace
    assert bool(jnp.all(trace["layers_0"]["kernel"] == 0))
    assert bool(jnp.any(trace["layers_1"]["kernel"] != 0))


def test_gradual_unfreeze_validates_arguments():
    with pytest.raises(ValueError, match="2 groups but 1 boundaries"):
        T.gradual_unfreeze(["a", "b"], [0])
    with pytest.raises(ValueError, match="non-decreasing"):
        T.gradual_unfreeze(["a", "b"], [5, 0])


# per-group rates.


def test_per_group_lr_and_discriminative_scales():
    assert T.discriminative_scales(3) == pytest.approx((1.0, 1 / 2.6, 1 / 2.6**2))
    p = tree()
    g = jax.tree.map(jnp.ones_like, p)
    tx = optax.chain(optax.sgd(1.0), T.discriminative_lr(GROUPS, 2.0))
    u, _ = tx.update(g, tx.init(p))
    assert float(u["head"]["kernel"][0, 0]) == -1.0
    assert float(u["layers_1"]["bias"][0]) == -0.5
    assert float(u["layers_0"]["kernel"][0, 0]) == -0.25
    assert float(u["embed"]["embedding"][0, 0]) == -1.0  # no group: scale 1
    u, _ = jax.jit(T.per_group_lr(["bias"], [3.0]).update)(g, optax.EmptyState())
    assert float(u["head"]["bias"][0]) == 3.0 and float(u["head"]["kernel"][0, 0]) == 1.0


# centralization.


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


# schedules.


def test_slanted_triangular_matches_ulmfit_formula():
    peak, total, cut_frac, ratio = 0.01, 1000, 0.1, 32.0
    sched = T.slanted_triangular(peak, total, cut_frac, ratio)
    cut = math.floor(total * cut_frac)

    def formula(t):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        return peak * (1 + max(p, 0.0) * (ratio - 1)) / ratio

    for t in [0, 1, 50, 99, 100, 101, 550, 999, 1000, 1200]:
        assert float(sched(t)) == pytest.approx(formula(t), rel=1e-5), t
    assert float(sched(cut)) == pytest.approx(peak)
    assert float(sched(0)) == pytest.approx(peak / ratio)


def test_warmup_cosine_matches_formula():
    sched = T.warmup_cosine(2.0, 10, 110, end_value=0.2)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(1.0)
    for t in [10, 35, 60, 85, 110]:
        want = 0.2 + (2.0 - 0.2) * (1 + math.cos(math.pi * (t - 10) / 100)) / 2
        assert float(sched(t)) == pytest.approx(want, rel=1e-5), t


def test_sgdr_restarts_with_growing_periods():
    sched = T.sgdr(1.0, 10, 70, period_mult=2.0, end_value=0.1, peak_decay=0.5)
    starts, lengths, peaks = [0, 10, 30], [10, 20, 40], [1.0, 0.5, 0.25]
    for s, n, pk in zip(starts, lengths, peaks, strict=True):
        for frac in [0.0, 0.25, 0.5, 0.9]:
            t = s + int(frac * n)
            want = 0.1 + (pk - 0.1) * (1 + math.cos(math.pi * (t - s) / n)) / 2
            assert float(sched(t)) == pytest.approx(want, rel=1e-5), t
    assert float(sched(9)) < 0.2 and float(sched(10)) == pytest.approx(0.5)


def test_step_decay_per_epoch_is_zarembas_rule():
    sched = T.step_decay_per_epoch(1.0, steps_per_epoch=10, decay_after_epochs=4, factor=0.5)
    for epoch in range(9):
        want = 0.5 ** max(
            epoch + 1 - 4, 0
        )  # Zaremba's ptb_word_lm: lr_decay ** max(i+1-max_epoch, 0)
        assert float(sched(epoch * 10)) == pytest.approx(want)
        assert float(sched(epoch * 10 + 9)) == pytest.approx(want)


# validation-driven transforms.


def test_reduce_on_plateau_agrees_with_optax_contrib():
    kw = dict(factor=0.5, patience=2, rtol=1e-3, atol=0.0, cooldown=1, min_scale=0.05)
    ours = optax.chain(optax.sgd(1.0), T.reduce_on_plateau(**kw))
    ref = optax.contrib.reduce_on_plateau(**kw, accumulation_size=1)
    p = {"w": jnp.ones(3)}
    s, r = ours.init(p), ref.init(p)
    report = jax.jit(T.report_validation_loss)
    ref_update = jax.jit(lambda r, v: ref.update(p, r, value=v)[1])
    losses = [5.0, 4.0, 4.0, 3.999, 4.1, 4.2, 4.3, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    for loss in losses:
        s = report(s, loss)
        r = ref_update(r, jnp.float32(loss))
        assert float(s[1].scale) == pytest.approx(float(r.scale)), loss
        assert int(s[1].plateau_count) == int(r.plateau_count)
        assert int(s[1].cooldown_count) == int(r.cooldown_count)
    assert float(s[1].scale) == pytest.approx(0.05)  # 1 -> 0.5 -> ... -> 0.03125, floored
    u, _ = ours.update({"w": jnp.ones(3)}, s)
    np.testing.assert_allclose(u["w"], -0.05)


def _awd_switch_index(losses, nonmono):
    """AWD-LSTM main.py's rule; returns the index of the loss that triggers ASGD, or None."""
    best = []
    for i, v in enumerate(losses):
        if len(best) > nonmono and v > min(best[:-nonmono]):
            return i
        best.append(v)
    return None


@pytest.mark.parametrize("rises", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_nt_asgd_triggers_like_awd_lstm_and_averages_iterates(seed, rises):
    rng = np.random.default_rng(seed)
    if rises:  # falls for 5-8 checks, then rises steadily: triggers within 4 rising checks
        k = int(rng.integers(5, 9))
        falls = 5.0 - np.cumsum(rng.uniform(0.1, 1.0, size=k))
        rises_by = np.cumsum(rng.uniform(0.05, 0.3, size=15 - k))
        losses = list(np.concatenate([falls, falls[-1] + rises_by]))
    else:  # mostly falling: these never trigger, and the average is never used
        losses = list(5.0 - np.cumsum(rng.uniform(-0.3, 1.0, size=15)))
    want = _awd_switch_index(losses, 3)
    assert (want is not None) == rises
    tx = optax.chain(optax.sgd(0.1), T.nt_asgd(nonmono=3))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    report = jax.jit(T.report_validation_loss)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    got, iterates = None, []
    for i, loss in enumerate(losses):
        state = report(state, loss)
        if got is None and bool(state[1].triggered):
            got = i
        updates, state = step(params, state, {"w": jnp.array([float(i), -1.0])})
        params = optax.apply_updates(params, updates)
        if bool(state[1].triggered):
            iterates.append(params["w"])
    assert got == want
    avg = T.averaged_params(state, params)["w"]
    if want is None:
        np.testing.assert_array_equal(avg, params["w"])
    else:
        assert len(iterates) >= 3 and int(state[1].num_averaged) == len(iterates)
        np.testing.assert_allclose(avg, np.mean(iterates, axis=0), rtol=1e-5)
        assert not np.allclose(avg, params["w"])  # the mean, not the last iterate


def test_report_validation_loss_reaches_into_wrappers_and_is_a_no_op_otherwise():
    p = {"w": jnp.ones(2)}
    plain = optax.adam(1e-3).init(p)
    assert T.report_validation_loss(plain, 1.0) is not None
    same = T.report_validation_loss(plain, 1.0)
    assert jax.tree.structure(same) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    inner = optax.chain(optax.sgd(1.0), T.reduce_on_plateau(factor=0.5, patience=1))
    tx = optax.MultiSteps(optax.apply_if_finite(inner, 3), 2)
    s = tx.init(p)
    for loss in [1.0, 1.0]:
        s = T.report_validation_loss(s, loss)
    found = [
        x
        for x in jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, T.PlateauState))
        if isinstance(x, T.PlateauState)
    ]
    assert len(found) == 1 and float(found[0].scale) == 0.5
