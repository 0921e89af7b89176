"""Transformer: causality, the key/value cache, remat, dropout, norms, tying, the registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.models import get_model
from jaxlm.models.transformer import Transformer, causal_attention, rotary
from jaxlm.precision import Policy

V, B, T = 19, 2, 9
TOKENS = jax.random.randint(jax.random.key(1), (B, T), 0, V)


def _model(**kw) -> Transformer:
    kw = {"embed_dim": 16, "num_layers": 2, "num_heads": 4, "max_len": 12, **kw}
    return Transformer(vocab_size=V, **kw)


@functools.cache
def _params(**kw):
    model = _model(**kw)
    return jax.jit(model.init)(jax.random.key(0), TOKENS, None)["params"]


@jax.jit(static_argnums=0)
def _fwd(model, params, tokens, carry=None, key=None):
    if key is None:
        return model.apply({"params": params}, tokens, carry)
    return model.apply(
        {"params": params}, tokens, carry, deterministic=False, rngs={"dropout": key}
    )


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_outputs_depend_on_no_later_input(positions):
    model, params = _model(positions=positions), _params(positions=positions)
    weights = jax.random.normal(jax.random.key(2), (V,))
    zero = jnp.zeros((B, T, 16))

    @jax.jit
    def grad_at(t):  # d (logits[0, t] @ weights) / d (embedded inputs), [B, T, E]
        def score(delta):
            logits, _, _ = model.apply(
                {"params": params, "perturbations": {"embedded": delta}}, TOKENS, None
            )
            return logits[0, t] @ weights

        return jax.grad(score)(zero)

    for t in range(T):
        g = np.asarray(grad_at(t))
        assert np.all(g[0, t + 1 :] == 0.0), t  # exactly zero: the future
        assert np.all(g[1] == 0.0)  # and the other sequence
        assert np.all(np.abs(g[0, : t + 1]).sum(-1) > 0)  # the past does count


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_decoding_equals_the_full_forward(positions):
    model, params = _model(positions=positions), _params(positions=positions)
    full, none_carry, _ = _fwd(model, params, TOKENS)
    assert none_carry is None and model.initial_carry(B) is None
    carry = model.initial_carry(B, T)
    assert carry["layers"][0]["k"].shape == (B, T, 4, 4)
    step = jax.jit(lambda tok, c: model.apply({"params": params}, tok, c))
    first, carry, _ = step(TOKENS[:, :4], carry)  # the prompt in one call
    outs = [first]
    for i in range(4, T):
        out, carry, _ = step(TOKENS[:, i : i + 1], carry)
        outs.append(out)
    assert int(carry["pos"]) == T
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=0)


def test_cache_longer_than_learned_positions_is_refused():
    with pytest.raises(ValueError, match="max_len"):
        _model().initial_carry(1, 13)
    assert _model(positions="rotary").initial_carry(1, 100)["layers"][0]["k"].shape[1] == 100


def test_remat_changes_nothing_but_memory():
    params = _params(num_layers=1)

    def grads(model):
        def loss(p):
            logits, _, _ = model.apply(
                {"params": p},
                TOKENS,
                None,
                deterministic=False,
                rngs={"dropout": jax.random.key(3)},
            )
            return jnp.mean(logits**2)

        return jax.jit(jax.grad(loss))(params)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        grads(_model(remat=True, dropout=0.2, num_layers=1)),
        grads(_model(dropout=0.2, num_layers=1)),
    )

    # And remat is really on: the gradient recomputes the block (a remat equation and the
    # forward matrix products again).
    def grad_jaxpr(model):
        def loss(p):
            return jnp.mean(model.apply({"params": p}, TOKENS, None)[0] ** 2)

        return str(jax.make_jaxpr(jax.grad(loss))(params))

    with_remat, without = (
        grad_jaxpr(_model(remat=True, num_layers=1)),
        grad_jaxpr(_model(num_layers=1)),
    )
    assert "remat" in with_remat and "remat" not in without
    assert with_remat.count("dot_general") > without.count("dot_general")


def test_dropout_only_in_training_and_seeded():
    model, params = _model(dropout=0.3), _params()
    a, _, _ = _fwd(model, params, TOKENS, None, jax.random.key(0))
    b, _, _ = _fwd(model, params, TOKENS, None, jax.random.key(0))
    c, _, _ = _fwd(model, params, TOKENS, None, jax.random.key(1))
    e1, _, _ = _fwd(model, params, TOKENS)
    e2, _, _ = _fwd(_model(), params, TOKENS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, e1)
    np.testing.assert_array_equal(e1, e2)


def test_parameter_names_norms_and_tying():
    tied = _params()
    assert {"embed", "pos_embed", "blocks_0", "blocks_1", "final_norm"} == set(tied)
    assert set(tied["blocks_0"]) == {
        "norm_attn",
        "qkv",
        "attn_out",
        "norm_mlp",
        "mlp_fc",
        "mlp_proj",
    }
    assert tied["blocks_0"]["mlp_fc"]["kernel"].shape == (16, 64)  # mlp_dim 0: 4 E
    assert set(tied["blocks_0"]["norm_attn"]) == {"scale", "bias"}
    shapes = jax.eval_shape(
        _model(norm="rmsnorm", positions="rotary", tie_embeddings=False, mlp_dim=24).init,
        jax.random.key(0),
        TOKENS,
        None,
    )["params"]
    assert set(shapes["blocks_0"]["norm_attn"]) == {"scale"}
    assert "pos_embed" not in shapes and shapes["head"]["kernel"].shape == (16, V)
    assert shapes["blocks_1"]["mlp_fc"]["kernel"].shape == (16, 24)
    with pytest.raises(ValueError, match="norm"):
        jax.eval_shape(_model(norm="batchnorm").init, jax.random.key(0), TOKENS, None)


def test_rotary_is_a_rotation_that_depends_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    np.testing.assert_allclose(
        jnp.linalg.norm(rotary(q, jnp.array([5]))), jnp.linalg.norm(q), rtol=1e-6
    )
    dot = [
        float(jnp.sum(rotary(q, jnp.array([i + 3])) * rotary(k, jnp.array([i])))) for i in (0, 7)
    ]
    np.testing.assert_allclose(dot[0], dot[1], rtol=1e-5)


def test_registry_and_bfloat16():
    cfg = base_config("transformer").model
    cfg.update(
        name="transformer",
        embed_dim=16,
        num_layers=1,
        num_heads=2,
        max_len=16,
        positions="rotary",
        norm="rmsnorm",
        tie_embeddings=True,
    )
    model = get_model(cfg, V, Policy.from_string("params=float32,compute=bfloat16"))
    assert isinstance(model, Transformer) and model.positions == "rotary"
    params = jax.jit(model.init)(jax.random.key(0), TOKENS, None)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits, _, _ = _fwd(model, params, TOKENS)
    assert logits.dtype == jnp.float32 and logits.shape == (B, T, V)
    assert model.initial_carry(B, 4)["layers"][0]["k"].dtype == jnp.bfloat16


def test_decoding_past_the_cache_gives_nan_not_wrong_numbers():
    model, params = _model(positions="rotary"), _params()
    cache = model.initial_carry(1, 4)
    tokens = TOKENS[:1, :3]
    logits, cache, _ = model.apply({"params": params}, tokens, cache)
    assert np.all(np.isfinite(logits))
    logits, _, _ = model.apply({"params": params}, tokens, cache)  # 6 tokens into 4 slots
    assert np.all(np.isnan(logits))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("query_block", [64, 3, 1])
def test_causal_attention_equals_jax_dot_product_attention(dtype, query_block):
    # On CPU causal_attention writes the maths out in blocks of queries; it must equal jax's
    # causal attention, values and gradients: one block, blocks of 3 with a shorter last one,
    # and single queries (each block's first query sees exactly the keys up to its position).
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 3, 8)).astype(dtype) for i in range(3))
    r = jax.random.normal(jax.random.key(3), (2, 7, 3, 8))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * r)

    def ref(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)

    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    ours = functools.partial(causal_attention, query_block=query_block)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, ours), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, ref), (0, 1, 2)))(q, k, v)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol
        ),
        got,
        want,
    )
    assert jax.eval_shape(ours, q, k, v).dtype == dtype


@pytest.mark.parametrize("query_block", [64, 3])
def test_attention_dropout_drops_probabilities_and_rescales_the_rest(query_block):
    # With one-hot values (v at key s is the unit vector e_s), the output of query t is its row
    # of attention probabilities, so the dropped row can be read off and checked entry by entry.
    b, t, n = 2, 8, 2
    q, k = (jax.random.normal(jax.random.key(i), (b, t, n, t)) for i in range(2))
    v = jnp.broadcast_to(jnp.eye(t)[None, :, None, :], (b, t, n, t))
    probs = np.asarray(jax.jit(lambda: causal_attention(q, k, v, query_block))())
    dropping = jax.jit(
        lambda key: causal_attention(q, k, v, query_block, dropout_rate=0.5, dropout_rng=key)
    )
    dropped = np.asarray(dropping(jax.random.key(7)))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], probs[kept] / 0.5, rtol=1e-6)
    assert np.all(probs[kept] > 0)  # nothing appears where attention is masked
    visible = int((probs > 0).sum())  # b * n * t(t+1)/2 = 144
    assert visible == b * n * t * (t + 1) // 2
    assert 0.3 < 1 - kept.sum() / visible < 0.7
    other = np.asarray(dropping(jax.random.key(8)))
    assert np.any((other != 0) != kept)  # the key decides the mask


def test_attention_dropout_keeps_causality():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 2, 8)) for i in range(3))

    def output_at_3(k, v):
        out = causal_attention(q, k, v, 3, dropout_rate=0.3, dropout_rng=jax.random.key(5))
        return out[:, 3].sum()

    dk, dv = jax.jit(jax.grad(output_at_3, (0, 1)))(k, v)
    assert np.all(np.asarray(dk)[:, 4:] == 0.0) and np.all(np.asarray(dv)[:, 4:] == 0.0)
    assert np.abs(np.asarray(dv)[:, :4]).sum() > 0  # (single past keys may be dropped)


def test_attention_dropout_acts_only_in_training():
    params = _params()  # attention dropout adds no parameters
    plain, dropping = _model(), _model(attention_dropout=0.5)
    np.testing.assert_array_equal(_fwd(plain, params, TOKENS)[0], _fwd(dropping, params, TOKENS)[0])
    key = jax.random.key(3)
    train_plain = _fwd(plain, params, TOKENS, key=key)[0]
    train_dropping = _fwd(dropping, params, TOKENS, key=key)[0]
    assert not np.allclose(train_plain, train_dropping)


def test_attention_dropout_rate_and_key_are_checked():
    x = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match="attention dropout rate must be in"):
        causal_attention(x, x, x, dropout_rate=1.0)
    with pytest.raises(ValueError, match="attention dropout needs dropout_rng"):
        causal_attention(x, x, x, dropout_rate=0.1)


def test_attention_dropout_maps_to_gpt2_attn_pdrop():
    from jaxlm.interop import gpt2

    assert gpt2.model_config_from_hf({"attn_pdrop": 0.2})["attention_dropout"] == 0.2
    model = {"name": "transformer", "embed_dim": 16, "num_layers": 1, "num_heads": 2}
    assert gpt2.hf_config_from_model({**model, "attention_dropout": 0.3}, 10)["attn_pdrop"] == 0.3
    assert gpt2.hf_config_from_model(model, 10)["attn_pdrop"] == 0.0


@pytest.mark.parametrize("scheme", ["gpt2", "normal"])
def test_initial_standard_deviations_follow_the_init_scheme(scheme):
    # 3 blocks of width 128: the smallest kernel (attn_out, 16k weights) estimates its std to
    # about 0.6%, so 3% separates 0.02 from GPT-2's 0.02 / sqrt(6) = 0.0082 with room.
    layers = 3
    model = Transformer(
        vocab_size=500,
        embed_dim=128,
        num_layers=layers,
        num_heads=4,
        max_len=64,
        tie_embeddings=False,
        init_scheme=scheme,
    )
    params = jax.jit(model.init)(jax.random.key(0), TOKENS, None)["params"]
    residual = 0.02 / np.sqrt(2 * layers) if scheme == "gpt2" else 0.02
    want = {"embed/embedding": 0.02, "pos_embed": 0.02, "head/kernel": 0.02}
    for i in range(layers):
        block = f"blocks_{i}"
        want |= {f"{block}/qkv/kernel": 0.02, f"{block}/mlp_fc/kernel": 0.02}
        want |= {f"{block}/attn_out/kernel": residual, f"{block}/mlp_proj/kernel": residual}
    flat = {
        "/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(params)
    }
    for name, std in want.items():
        w = np.asarray(flat[name])
        np.testing.assert_allclose(w.std(), std, rtol=0.03, err_msg=name)
        assert abs(w.mean()) < 0.1 * std, name
    # Every kernel and embedding is one of the above; biases start at 0, norm scales at 1.
    kernels = {k for k in flat if k.endswith(("kernel", "embedding", "pos_embed"))}
    assert kernels == set(want)
    for name, value in flat.items():
        if name.endswith("bias"):
            assert not np.any(np.asarray(value)), name
        elif name.endswith("scale"):
            np.testing.assert_array_equal(value, 1.0)


def test_gpt2_init_is_the_default_and_unknown_schemes_are_refused():
    assert Transformer(vocab_size=V).init_scheme == "gpt2"
    from jaxlm.config import _MODEL_RANGES
    from jaxlm.models.transformer import INIT_SCHEMES

    assert all(_MODEL_RANGES["init_scheme"].ok(s) for s in INIT_SCHEMES)  # config agrees
    with pytest.raises(ValueError, match="Transformer.init_scheme: unknown 'xavier'"):
        jax.eval_shape(_model(init_scheme="xavier").init, jax.random.key(0), TOKENS, None)
