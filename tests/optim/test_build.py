"""jaxlm.optim.build_optimizer: schedules, accumulation, skipping non-finite updates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import transforms
from jaxlm.config import base_config
from jaxlm.optim import build_optimizer, build_schedule


def params():
    return {
        "embed": {"embedding": jnp.ones((4, 3))},
        "layers_0": {"kernel": jnp.ones((3, 3))},
        "head": {"kernel": jnp.full((3, 4), 0.5), "bias": jnp.zeros(4)},
    }


def config(**optimizer):
    c = base_config()
    c.train.num_steps = 100
    c.optimizer.update(dict(name="sgd", schedule="constant", learning_rate=0.1, clip_norm=0.0))
    c.optimizer.update(optimizer)
    return c


def grads(scale=1.0):
    return jax.tree.map(
        lambda p: scale * jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape), params()
    )


def test_default_optimizer_builds_and_cosine_schedule_points():
    c = base_config()
    tx = build_optimizer(c, params())
    state = tx.init(params())
    u, _ = jax.jit(tx.update)(grads(), state, params())
    assert float(jnp.abs(u["head"]["kernel"]).sum()) == 0.0  # warm-up starts at rate 0
    sched = build_schedule(c.optimizer, 2000)
    assert float(sched(100)) == pytest.approx(2e-3)
    assert float(sched(2000)) == pytest.approx(2e-3 * 0.05)


@pytest.mark.parametrize(
    "name, fields, points",
    [
        ("slanted_triangular", {}, {0: 0.1 / 32, 10: 0.1, 100: 0.1 / 32}),
        ("sgdr", {"sgdr_period": 20, "end_lr_fraction": 0.0}, {0: 0.1, 10: 0.05, 20: 0.1}),
        ("epoch_step", {"steps_per_epoch": 10, "decay_after_epochs": 2}, {19: 0.1, 20: 0.05}),
        ("plateau", {}, {0: 0.1, 99: 0.1}),
        ("step", {"decay_every": 30}, {29: 0.1, 30: 0.05, 60: 0.025}),
    ],
)
def test_named_schedules_hit_their_key_points(name, fields, points):
    opt = config(schedule=name, **fields).optimizer
    sched = build_schedule(opt, 100)
    for step, want in points.items():
        assert float(sched(step)) == pytest.approx(want, rel=1e-5), step


@pytest.mark.parametrize(
    "start, every, num_steps",
    [(0, 30, 100), (0, 25, 100), (10, 7, 60), (-15, 10, 50), (120, 30, 100), (0, 200, 100)],
)
def test_step_schedule_closed_form_equals_piecewise_constant(start, every, num_steps):
    opt = config(schedule="step", decay_start_step=start, decay_every=every).optimizer
    sched = build_schedule(opt, num_steps)
    boundaries = {s: opt.decay_factor for s in range(start, num_steps, every) if s > 0}
    old = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
    steps = np.arange(0, num_steps + 2 * every + 1)
    np.testing.assert_allclose(jax.vmap(sched)(steps), jax.vmap(old)(steps), rtol=1e-6)
    for step in [0, start - 1, start, start + every, num_steps - 1, num_steps, 10 * num_steps]:
        step = max(step, 0)
        assert float(jax.jit(sched)(step)) == pytest.approx(float(old(step)), rel=1e-6), step


def test_bad_schedule_and_epoch_step_without_epoch_length_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        build_optimizer(config(schedule="linear"))
    with pytest.raises(ValueError, match="steps_per_epoch must be set"):
        build_optimizer(config(schedule="epoch_step"))
    with pytest.raises(ValueError, match="decay_every must be >= 1"):
        build_optimizer(config(schedule="step", decay_every=0))


def test_accumulation_equals_one_step_on_the_mean_gradient():
    k = 3
    tx = build_optimizer(config(accumulate_steps=k, name="adam"))
    ref = build_optimizer(config(name="adam"))
    p, s = params(), tx.init(params())
    update = jax.jit(tx.update)
    micro = [grads(1.0), grads(-2.0), grads(4.0)]
    for i, g in enumerate(micro):
        u, s = update(g, s, p)
        if i < k - 1:  # nothing moves before the k-th micro-batch
            assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    mean = jax.tree.map(lambda *g: sum(g) / k, *micro)
    want, _ = ref.update(mean, ref.init(p), p)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_skip_nonfinite_leaves_params_and_state_untouched():
    tx = build_optimizer(config(skip_nonfinite=True, momentum=0.9))
    p, s = params(), tx.init(params())
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads())
    u, s2 = jax.jit(tx.update)(bad, s, p)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    assert int(s2.notfinite_count) == 1 and int(s2.total_notfinite) == 1
    for a, b in zip(jax.tree.leaves(s2.inner_state), jax.tree.leaves(s.inner_state), strict=True):
        np.testing.assert_array_equal(a, b)
    u, s3 = tx.update(grads(), s2, p)
    assert int(s3.notfinite_count) == 0 and bool(jnp.any(u["head"]["kernel"] != 0))


def test_skip_nonfinite_with_accumulation_drops_the_bad_micro_batch():
    tx = build_optimizer(config(skip_nonfinite=True, accumulate_steps=2))
    p, s = params(), tx.init(params())
    bad = jax.tree.map(lambda g: g * jnp.inf, grads())
    _, s = tx.update(bad, s, p)
    _, s = tx.update(grads(), s, p)
    u, s = tx.update(grads(), s, p)
    np.testing.assert_allclose(u["head"]["kernel"], -0.1 * grads()["head"]["kernel"], rtol=1e-6)


def test_plateau_schedule_cuts_the_rate_after_validation_plateaus():
    tx = build_optimizer(config(schedule="plateau", plateau_factor=0.5, plateau_patience=1))
    p, s = params(), tx.init(params())
    for loss in [3.0, 3.0]:  # the second one is a plateau of length 1: halve
        s = transforms.report_validation_loss(s, loss)
    u, _ = tx.update(grads(), s, p)
    np.testing.assert_allclose(u["head"]["kernel"], -0.1 * 0.5 * grads()["head"]["kernel"])


def test_nt_asgd_and_centralize_from_the_config():
    tx = build_optimizer(config(nt_asgd_nonmono=1, centralize=True))
    p, s = params(), tx.init(params())
    for loss in [2.0, 1.0, 2.5]:  # 2.5 is worse than 2.0, logged more than one check ago
        s = transforms.report_validation_loss(s, loss)
    u, s = tx.update(grads(), s, p)
    np.testing.assert_allclose(u["head"]["kernel"].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_array_equal(u["head"]["bias"], -0.1 * grads()["head"]["bias"])
    new = optax.apply_updates(p, u)
    avg = transforms.averaged_params(s, new)
    np.testing.assert_allclose(avg["head"]["kernel"], new["head"]["kernel"])
    iterates = [new]
    for i in range(3):  # three more averaged steps, with different gradients
        u, s = tx.update(grads(scale=2.0 + i), s, new)
        new = optax.apply_updates(new, u)
        iterates.append(new)
    avg = transforms.averaged_params(s, new)
    for path in (("head", "kernel"), ("head", "bias"), ("layers_0", "kernel")):
        mean = np.mean([it[path[0]][path[1]] for it in iterates], axis=0)
        np.testing.assert_allclose(avg[path[0]][path[1]], mean, rtol=1e-6, atol=1e-6)
        assert not np.allclose(avg[path[0]][path[1]], new[path[0]][path[1]])


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_centralize_leaves_embedding_tables_alone(name):
    from jaxlm.models.recurrent import RecurrentLM
    from jaxlm.models.transformer import Transformer

    if name == "lstm":
        model = RecurrentLM(vocab_size=11, embed_dim=8, hidden_sizes=(8, 8))
        carry = model.initial_carry(1)
        matrices = ["layers_0/ih/kernel", "layers_0/hh/kernel", "head/kernel"]
        tables = ["embed/embedding"]
    else:
        model = Transformer(
            vocab_size=11, embed_dim=8, num_layers=1, num_heads=2, max_len=16, positions="learned"
        )
        carry = None
        matrices = ["blocks_0/qkv/kernel", "blocks_0/mlp_fc/kernel"]
        tables = ["embed/embedding", "pos_embed"]
    tokens = jnp.zeros((1, 3), jnp.int32)
    p = model.init(jax.random.key(0), tokens, carry)["params"]
    assert set(matrices + tables) <= set(transforms.param_paths(p))
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    g = jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    tx = build_optimizer(config(centralize=True))
    u, _ = tx.update(g, tx.init(p), p)
    flat_u = dict(zip(transforms.param_paths(u), jax.tree.leaves(u), strict=True))
    flat_g = dict(zip(transforms.param_paths(g), jax.tree.leaves(g), strict=True))
    for path in tables:  # plain SGD: exactly -lr * g, rows not centred
        np.testing.assert_allclose(flat_u[path], -0.1 * flat_g[path], rtol=1e-6)
        assert np.abs(np.asarray(flat_u[path]).mean(axis=0)).max() > 1e-3
    for path in matrices:  # each output unit's incoming gradient has zero mean
        np.testing.assert_allclose(flat_u[path].mean(axis=0), 0.0, atol=1e-6)
        np.testing.assert_allclose(
            flat_u[path], -0.1 * (flat_g[path] - flat_g[path].mean(axis=0)), rtol=1e-5, atol=1e-6
        )


def test_schedule_counts_updates_not_micro_batches():
    c = config(schedule="cosine", warmup_steps=0, accumulate_steps=4)
    c.optimizer.end_lr_fraction = 0.0
    tx = build_optimizer(c)  # 100 training steps = 25 updates of the cosine
    p, s = params(), tx.init(params())
    update = jax.jit(tx.update)
    g = jax.tree.map(jnp.ones_like, p)
    rates = []
    for i in range(100):
        u, s = update(g, s, p)
        if i % 4 == 3:
            rates.append(-float(u["head"]["bias"][0]))
    want = [0.1 * (1 + math.cos(math.pi * n / 25)) / 2 for n in range(25)]
    np.testing.assert_allclose(rates, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mask", ["weights", "all"])
def test_adamw_decays_weight_matrices_only_unless_told_otherwise(mask):
    # The usual mask: embeddings, biases and norm scales are not decayed.
    c = config(name="adamw", weight_decay=0.5, learning_rate=0.1)
    c.optimizer.decay_mask = mask
    p = params()
    tx = build_optimizer(c, p)
    zero = jax.tree.map(jnp.zeros_like, p)  # no gradient: the update is the decay alone
    u, _ = tx.update(zero, tx.init(p), p)
    decayed = {
        path: bool(jnp.any(leaf != 0))
        for path, leaf in zip(transforms.param_paths(u), jax.tree.leaves(u), strict=True)
    }
    assert decayed == {
        "embed/embedding": mask == "all",
        "head/bias": False,  # zero parameters decay to nothing either way
        "head/kernel": True,
        "layers_0/kernel": True,
    }
    np.testing.assert_allclose(u["head"]["kernel"], -0.1 * 0.5 * p["head"]["kernel"], rtol=1e-6)
