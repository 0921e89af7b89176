"""jaxlm.explain.core: diagnostics and attributions on a tiny LSTM trained here on a copy task
(shared by every test of this file), and on a random Transformer.

The copy task: random tokens, and the model is trained so that its prediction after token t is
the token K - 1 places before it (the next token copies the token K positions back). A faithful
attribution of that prediction puts its largest score on that one position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.explain import Target, attribute, randomisation_check
from jaxlm.models import RecurrentLM, Transformer

V, T, K = 8, 16, 3


def _texts(key: jax.Array, n: int) -> jax.Array:
    return jax.random.randint(key, (n, T), 0, V)


@pytest.fixture(scope="module")
def copy_lstm():
    """A 1x32 LSTM trained for 300 steps to predict the token K - 1 places back."""
    model = RecurrentLM(vocab_size=V, embed_dim=16, hidden_sizes=(32,))
    params = jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, T), jnp.int32), model.initial_carry(1)
    )
    params = params["params"]
    opt = optax.adam(2e-2)

    def loss(p, x):
        logits, _, _ = model.apply({"params": p}, x, model.initial_carry(x.shape[0]))
        labels = x[:, : T - K + 1]
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, K - 1 :], labels).mean()

    @jax.jit
    def train(p):
        def step(carry, key):
            p, st = carry
            value, g = jax.value_and_grad(loss)(p, _texts(key, 32))
            u, st = opt.update(g, st, p)
            return (optax.apply_updates(p, u), st), value

        (p, _), losses = jax.lax.scan(
            step, (p, opt.init(p)), jax.random.split(jax.random.key(1), 300)
        )
        return p, losses

    params, losses = train(params)
    assert float(losses[-10:].mean()) < 0.05  # it learned the task
    return model, params


def _copy_targets() -> list[Target]:
    return [Target(p) for p in range(K - 1, T)]  # the top token at every position that copies


def test_integrated_gradients_and_gradient_x_input_find_the_copied_token(copy_lstm):
    model, params = copy_lstm
    hits = {"ig": [], "gxi": []}
    for text in np.asarray(_texts(jax.random.key(7), 6)):
        e = attribute(model, params, text, _copy_targets(), method=("ig", "gxi"), steps=64)
        for t in e.targets:
            assert t.token == text[t.position + 1 - K]  # the model predicts the copy
            for m in hits:
                hits[m].append(int(np.argmax(t.attributions[m])) == t.position + 1 - K)
    print({m: f"{np.mean(h):.3f} of {len(h)}" for m, h in hits.items()})
    for m, h in hits.items():
        assert np.mean(h) >= 0.95, (m, np.mean(h))


def test_completeness_within_one_percent_at_64_steps_lstm_with_the_carry(copy_lstm):
    model, params = copy_lstm
    text = np.asarray(jax.random.randint(jax.random.key(3), (T + 6,), 0, V))
    e = attribute(model, params, text, _copy_targets(), method="ig", steps=64, window=T)
    assert e.start == 6 and len(e.tokens) == T
    gaps = [abs(t.completeness_gap) for t in e.targets]
    assert max(gaps) < 0.01, gaps
    # the first predictions copy tokens from before the window: the carried state holds them
    assert all(abs(t.carry["ig"]) > 0.1 for t in e.targets if t.position + 1 - K < 0)
    inside = [t for t in e.targets if t.position + 1 - K >= 0]
    assert all(abs(t.carry["ig"]) < t.attributions["ig"][t.position + 1 - K] for t in inside)


def test_completeness_within_one_percent_at_64_steps_transformer():
    model = Transformer(vocab_size=V, embed_dim=32, num_layers=2, num_heads=2, max_len=T)
    params = jax.jit(model.init)(jax.random.key(2), jnp.zeros((1, T), jnp.int32))["params"]
    text = np.arange(T + 4) % V  # longer than the context: cropped, with a warning
    with pytest.warns(UserWarning, match=f"exceed the Transformer's context of {T}"):
        e = attribute(
            model, params, text, [Target(3), Target(9), Target(-1)], steps=64, attention=False
        )
    assert e.start == 4 and len(e.tokens) == T and e.warnings
    for t in e.targets:
        assert abs(t.score - t.baseline_score) > 1e-3  # a real change to explain
        assert abs(t.completeness_gap) < 0.01


def test_batched_targets_equal_one_at_a_time(copy_lstm):
    model, params = copy_lstm
    text = np.asarray(_texts(jax.random.key(5), 1))[0]
    targets = [
        Target(p, token=(None, 3, 1)[p % 3], contrast=(None, None, 2)[p % 3])
        for p in range(K - 1, T)
    ]
    together = attribute(model, params, text, targets, method=("ig", "gxi"), steps=64)
    for t, batched in zip(targets, together.targets, strict=True):
        (alone,) = attribute(model, params, text, t, method=("ig", "gxi"), steps=64).targets
        assert alone.token == batched.token and alone.contrast == batched.contrast
        assert alone.score == pytest.approx(batched.score, abs=1e-5)
        for m in ("ig", "gxi"):
            np.testing.assert_allclose(alone.attributions[m], batched.attributions[m], atol=1e-5)


def test_diagnostics_match_the_model_s_own_probabilities(copy_lstm):
    model, params = copy_lstm
    text = np.asarray(_texts(jax.random.key(9), 1))[0]
    e = attribute(model, params, text, method=())
    apply = jax.jit(model.apply)
    logits, _, _ = apply({"params": params}, jnp.asarray(text)[None], model.initial_carry(1))
    logp = np.asarray(jax.nn.log_softmax(logits[0]), np.float64)
    d = e.diagnostics
    np.testing.assert_allclose(
        d.surprisal_bits[:-1], -logp[np.arange(T - 1), text[1:]] / np.log(2), rtol=1e-5
    )
    np.testing.assert_array_equal(d.top_ids, np.argsort(-logp, axis=-1)[:, :5])
    ranks = 1 + (logp[:-1] > logp[np.arange(T - 1), text[1:]][:, None]).sum(-1)
    np.testing.assert_array_equal(d.actual_rank[:-1], ranks)
    p = np.exp(logp)
    np.testing.assert_allclose(d.entropy_bits, -(p * logp).sum(-1) / np.log(2), rtol=1e-5)
    assert np.isnan(d.surprisal_bits[-1]) and d.actual_rank[-1] == -1


def test_the_randomisation_check_tells_a_trained_model_from_a_fresh_one(copy_lstm):
    model, params = copy_lstm
    text = np.asarray(_texts(jax.random.key(11), 1))[0]
    check = randomisation_check(model, params, text, _copy_targets(), steps=64, seed=3)
    print(
        f"rank correlation trained vs re-initialised: {check.mean:.3f} (|.|: {check.mean_abs:.3f})"
    )
    assert len(check.spearman) == len(_copy_targets())
    assert check.mean_abs < 0.5  # the attributions depend on what the model learned


def test_contrast_scores_are_differences_and_logit_scores_too(copy_lstm):
    model, params = copy_lstm
    text = np.asarray(_texts(jax.random.key(13), 1))[0]
    (a,) = attribute(model, params, text, Target(-1, 2), method="occlusion").targets
    (b,) = attribute(model, params, text, Target(-1, 5), method="occlusion").targets
    (c,) = attribute(model, params, text, Target(-1, 2, 5), method="occlusion").targets
    assert c.score == pytest.approx(a.score - b.score, abs=1e-5)
    np.testing.assert_allclose(
        c.attributions["occlusion"],
        a.attributions["occlusion"] - b.attributions["occlusion"],
        atol=1e-5,
    )
    (d,) = attribute(
        model, params, text, Target(-1, 2, 5), method="occlusion", score="logit"
    ).targets
    assert d.score == pytest.approx(c.score, abs=1e-4)  # log-prob differences are logit differences


@pytest.mark.parametrize(
    "tokens, kwargs, message",
    [
        ([], {}, "the text is empty"),
        ([1, 2], {"method": "lime"}, "method: unknown 'lime'"),
        ([1, 2], {"targets": Target(5)}, "position 5 is outside the text of 2"),
        ([1, 2], {"targets": 99}, "targets: token: ids must be in [0, 8)"),
        ([1, 9], {}, "tokens: ids must be in [0, 8)"),
        ([1, 2], {"steps": 0}, "steps: must be >= 1"),
        ([1, 2], {"bogus": 1}, "unknown option(s) ['bogus']"),
    ],
)
def test_bad_input_is_one_clear_error(copy_lstm, tokens, kwargs, message):
    model, params = copy_lstm
    with pytest.raises(ValueError) as info:
        attribute(model, params, np.array(tokens, np.int32), **kwargs)
    assert message in str(info.value)
