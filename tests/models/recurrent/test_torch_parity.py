"""Our LSTM, GRU and Elman RNN equal torch.nn.LSTM/GRU/RNN given identical weights (CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.recurrent import RecurrentLM

torch = pytest.importorskip("torch")

V, E, H, L, B, T = 23, 6, 8, 2, 3, 7
TOL = 1e-5


def _torch_model(cell: str):
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    torch.manual_seed(0)
    embed = torch.nn.Embedding(V, E)
    rnn = rnn_cls(E, H, num_layers=L, batch_first=True)
    head = torch.nn.Linear(H, V)
    for p in [*embed.parameters(), *rnn.parameters(), *head.parameters()]:
        torch.nn.init.uniform_(p, -0.5, 0.5)
    return embed, rnn, head


def _to_jax(embed, rnn, head, cell: str, grads: bool = False) -> dict:
    """Maps torch weights (or, with ``grads``, gradients) onto our names and layouts."""

    def a(t):
        return jnp.asarray(t.detach().numpy())

    params = {
        "embed": {"embedding": a(embed.weight)},
        "head": {"kernel": a(head.weight).T, "bias": a(head.bias)},
    }
    for i in range(L):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{i}"), getattr(rnn, f"bias_hh_l{i}")
        layer = {"ih": {"kernel": a(w_ih).T}, "hh": {"kernel": a(w_hh).T}}
        if cell == "gru":  # the reset gate multiplies h W_hn + b_hn: the biases stay apart
            layer["ih"]["bias"] = a(b_ih)
            layer["hh"]["bias"] = a(b_hh)
        elif grads:  # our one bias stands for torch's two: it gets the gradient of either
            layer["ih"]["bias"] = a(b_ih)
        else:
            layer["ih"]["bias"] = a(b_ih) + a(b_hh)
        params[f"layers_{i}"] = layer
    return params


def _grads_of(module):
    """A copy of ``module`` whose parameters hold their gradients."""
    import copy

    clone = copy.deepcopy(module)
    for p, q in zip(clone.parameters(), module.parameters(), strict=True):
        p.data = q.grad.clone()
    return clone


# Batch B x T = 21 tokens < 2V: the first layer projects each token's embedding; 8 x T = 56
# >= 2V: it looks the projection up in the [V, 4H] table embedding @ W_ih.
@pytest.mark.parametrize("batch", [B, 8], ids=["projected", "vocab_table"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_outputs_and_states_match_torch(cell, batch):
    embed, rnn, head = _torch_model(cell)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (batch, T))
    h0 = rng.uniform(-1, 1, (L, batch, H)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (L, batch, H)).astype(np.float32)
    weights = rng.uniform(-1, 1, (batch, T, V)).astype(np.float32)
    x = embed(torch.as_tensor(tokens))
    state = (torch.as_tensor(h0), torch.as_tensor(c0)) if cell == "lstm" else torch.as_tensor(h0)
    out, state = rnn(x, state)
    logits_t = head(out)
    (logits_t * torch.as_tensor(weights)).sum().backward()
    want_logits = logits_t.detach().numpy()
    state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
    if cell == "lstm":
        carry = tuple((jnp.asarray(c0[i]), jnp.asarray(h0[i])) for i in range(L))
        want_h, want_c = state[0].numpy(), state[1].numpy()
    else:
        carry = tuple(jnp.asarray(h0[i]) for i in range(L))
        want_h = state.numpy()

    model = RecurrentLM(vocab_size=V, cell=cell, embed_dim=E, hidden_sizes=(H,) * L)
    params = _to_jax(embed, rnn, head, cell)
    # Same tree as our own initialisation: no parameter is missing or extra.
    ours = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(tokens), carry)["params"]
    assert jax.tree.structure(ours) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, params)

    def loss(p):
        logits, new_carry, _ = model.apply({"params": p}, jnp.asarray(tokens), carry)
        return jnp.sum(logits * weights), (logits, new_carry)

    (_, (logits, new_carry)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
    # Gradients too: torch's, mapped like the weights, equal ours.
    want_grads = _to_jax(*(_grads_of(m) for m in (embed, rnn, head)), cell, grads=True)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL), grads, want_grads
    )
    for i in range(L):
        if cell == "lstm":
            np.testing.assert_allclose(new_carry[i][0], want_c[i], atol=TOL, rtol=0)
            np.testing.assert_allclose(new_carry[i][1], want_h[i], atol=TOL, rtol=0)
        else:
            np.testing.assert_allclose(new_carry[i], want_h[i], atol=TOL, rtol=0)
