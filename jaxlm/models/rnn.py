"""Recurrent language models: a stack of recurrent layers between an embedding and a softmax.

Every layer runs its input-to-hidden product for the whole window as one matrix multiply outside
the time loop; only the hidden-to-hidden product runs inside ``jax.lax.scan``, and the gates of a
cell are one fused matrix multiply. Gate order is PyTorch's (input, forget, cell, output), so
weights map one to one onto ``torch.nn.LSTM``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Carry = Any
Dtype = Any


def uniform_init(scale: float) -> nn.initializers.Initializer:
    """Uniform initialiser on ``[-scale, scale)``, as Zaremba et al. and AWD-LSTM use."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class LSTMLayer(nn.Module):
    """One LSTM layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``(c, h)``.

    Parameters: ``ih/kernel`` ``[I, 4H]``, ``ih/bias`` ``[4H]`` and ``hh/kernel`` ``[H, 4H]``.

    Attributes:
      hidden_size: H.
      init_scale: weights are uniform in ``[-init_scale, init_scale)``.
      dtype: compute dtype of the matrix products; the cell state stays float32.
      param_dtype: storage dtype of the parameters.
    """

    hidden_size: int
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxI: jax.Array, carry: tuple[jax.Array, jax.Array]):
        init = uniform_init(self.init_scale)
        xw_BxTx4H = nn.Dense(
            4 * self.hidden_size,
            name="ih",
            kernel_init=init,
            bias_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x_BxTxI).astype(jnp.float32)
        hh = self.param(
            "hh",
            lambda k, s, d: {"kernel": init(k, s, d)},
            (self.hidden_size, 4 * self.hidden_size),
            self.param_dtype,
        )["kernel"].astype(self.dtype)

        def step(carry, xw_Bx4H):
            c, h = carry
            z = xw_Bx4H + jnp.dot(h.astype(self.dtype), hh, preferred_element_type=jnp.float32)
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        carry, h_TxBxH = jax.lax.scan(step, carry, jnp.swapaxes(xw_BxTx4H, 0, 1))
        return jnp.swapaxes(h_TxBxH, 0, 1), carry

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Zero ``(c, h)``, float32 ``[B, H]`` each."""
        zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
        return zeros, zeros


_CELLS = {"lstm": LSTMLayer}


class RecurrentLM(nn.Module):
    """Embedding, stacked recurrent layers, softmax: a word- or character-level language model.

    The uniform interface of jaxlm's models: ``apply({"params": p}, tokens_BxT, carry,
    deterministic=...)`` returns ``(logits_BxTxV float32, new_carry, aux)``, where ``aux`` is a
    dict of float32 scalars and ``aux["reg_loss"]`` (if present) is added to the training loss.

    Attributes:
      vocab_size: V.
      cell: "lstm".
      embed_dim: E, the embedding width.
      hidden_sizes: the width of each recurrent layer, bottom to top.
      dropout: locked (variational) dropout on the embedding output, between layers and on the
        last layer's output: one mask per sequence, shared over time.
      embed_dropout: drops whole rows of the embedding matrix (a word is dropped everywhere it
        appears in the batch), remaining rows scaled by ``1 / (1 - p)``.
      tie_embeddings: the output layer reuses the embedding matrix (with a projection ``proj``
        when the last hidden width differs from E).
      init_scale: uniform initialisation range of all weights.
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter storage dtype.

    Example:
      >>> model = RecurrentLM(vocab_size=65, embed_dim=32, hidden_sizes=(64, 64))
      >>> tokens = jnp.zeros((2, 10), jnp.int32)
      >>> carry = model.initial_carry(2)
      >>> params = model.init(jax.random.key(0), tokens, carry)["params"]
      >>> logits, carry, aux = model.apply({"params": params}, tokens, carry)
      >>> logits.shape
      (2, 10, 65)
    """

    vocab_size: int
    cell: str = "lstm"
    embed_dim: int = 256
    hidden_sizes: Sequence[int] = (512, 512)
    dropout: float = 0.0
    embed_dropout: float = 0.0
    tie_embeddings: bool = False
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _layers(self) -> list[nn.Module]:
        cls = _CELLS[self.cell]
        return [
            cls(h, self.init_scale, self.dtype, self.param_dtype, parent=None)
            for h in self.hidden_sizes
        ]

    def initial_carry(self, batch_size: int, max_length: int | None = None) -> Carry:
        """The zero state of every layer for a batch (``max_length`` is unused here).

        Args:
          batch_size: B.
          max_length: ignored (the Transformer's cache needs it).

        Returns:
          A tuple with one carry per layer.
        """
        del max_length
        return tuple(layer.initial_carry(batch_size) for layer in self._layers())

    def _locked_dropout(self, x_BxTxF: jax.Array, deterministic: bool) -> jax.Array:
        return nn.Dropout(self.dropout, broadcast_dims=(1,))(x_BxTxF, deterministic=deterministic)

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, carry: Carry, *, deterministic: bool = True):
        init = uniform_init(self.init_scale)
        embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=init,
            name="embed",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.embed_dropout and not deterministic:
            keep = 1.0 - self.embed_dropout
            rows = jax.random.bernoulli(self.make_rng("dropout"), keep, (self.vocab_size, 1))
            table = embed.embedding * rows / keep
            x = jnp.take(table, tokens_BxT, axis=0).astype(self.dtype)
        else:
            x = embed(tokens_BxT)
        x = self._locked_dropout(x, deterministic)
        cls = _CELLS[self.cell]
        new_carry = []
        for i, size in enumerate(self.hidden_sizes):
            x, c = cls(size, self.init_scale, self.dtype, self.param_dtype, name=f"layers_{i}")(
                x, carry[i]
            )
            new_carry.append(c)
            x = self._locked_dropout(x, deterministic)
        if self.tie_embeddings:
            if self.hidden_sizes[-1] != self.embed_dim:
                x = nn.Dense(
                    self.embed_dim,
                    name="proj",
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(x)
            logits = embed.attend(x)
        else:
            logits = nn.Dense(
                self.vocab_size,
                name="head",
                kernel_init=init,
                bias_init=init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
        return logits.astype(jnp.float32), tuple(new_carry), {}
