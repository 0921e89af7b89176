"""Our LSTM, GRU and Elman RNN equal torch.nn.LSTM/GRU/RNN given identical weights (CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.rnn import RecurrentLM

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


def _to_jax(embed, rnn, head, cell: str) -> dict:
    """Maps torch weights onto our parameter names (transposing kernels)."""

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
        else:
            layer["ih"]["bias"] = a(b_ih) + a(b_hh)
        params[f"layers_{i}"] = layer
    return params


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_outputs_and_states_match_torch(cell):
    embed, rnn, head = _torch_model(cell)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (B, T))
    h0 = rng.uniform(-1, 1, (L, B, H)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (L, B, H)).astype(np.float32)
    with torch.no_grad():
        x = embed(torch.as_tensor(tokens))
        state = (
            (torch.as_tensor(h0), torch.as_tensor(c0)) if cell == "lstm" else torch.as_tensor(h0)
        )
        out, state = rnn(x, state)
        want_logits = head(out).numpy()
    if cell == "lstm":
        carry = tuple((jnp.asarray(c0[i]), jnp.asarray(h0[i])) for i in range(L))
        want_h, want_c = state[0].numpy(), state[1].numpy()
    else:
        carry = tuple(jnp.asarray(h0[i]) for i in range(L))
        want_h = state.numpy()

    model = RecurrentLM(vocab_size=V, cell=cell, embed_dim=E, hidden_sizes=(H,) * L)
    params = _to_jax(embed, rnn, head, cell)
    # Same tree as our own initialisation: no parameter is missing or extra.
    ours = model.init(jax.random.key(0), jnp.asarray(tokens), carry)["params"]
    assert jax.tree.structure(ours) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, params)

    logits, new_carry, _ = model.apply({"params": params}, jnp.asarray(tokens), carry)
    np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
    for i in range(L):
        if cell == "lstm":
            np.testing.assert_allclose(new_carry[i][0], want_c[i], atol=TOL, rtol=0)
            np.testing.assert_allclose(new_carry[i][1], want_h[i], atol=TOL, rtol=0)
        else:
            np.testing.assert_allclose(new_carry[i], want_h[i], atol=TOL, rtol=0)
