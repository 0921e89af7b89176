"""A decoder-only Transformer language model with a key/value cache for decoding.

Pre-norm blocks (LayerNorm or RMSNorm), learned or rotary positions, a GELU MLP, tied or separate
output embeddings, dropout on the embeddings, on each residual branch and on the attention
probabilities, optional rematerialisation of each block, GPT-2's initialisation (or plain
normal(0.02) everywhere, ``init_scheme="normal"``). Attention runs through
``jax.nn.dot_product_attention`` with a causal mask, so GPUs get the fused kernel where one
exists; on CPU (and wherever attention dropout is on) the training window's causal attention is
the same maths written out in causal blocks (:func:`causal_attention`), which XLA's CPU backend
compiles faster.

Parameter layout: ``embed/embedding`` ``[V, E]``, ``pos_embed`` ``[max_len, E]`` (learned
positions), ``blocks_<i>/{norm_attn, qkv, attn_out, norm_mlp, mlp_fc, mlp_proj}``,
``final_norm``, and ``head/kernel`` ``[E, V]`` unless the embeddings are tied.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm import precision
from jaxlm.models.common import Dense, Dropout, is_on, on_rows
from jaxlm.runtime.backend import on_cpu

Dtype = Any
Cache = dict[str, Any]


def rotary(x_BxTxNxD: jax.Array, positions_T: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021), the half-split ("NeoX") layout.

    Args:
      x_BxTxNxD: queries or keys; D even.
      positions_T: the absolute position of each of the T entries.
      base: the frequency base.

    Returns:
      ``x`` rotated, same shape and dtype.

    Example:
      >>> q = jnp.ones((1, 4, 2, 8))
      >>> rotary(q, jnp.arange(4)).shape
      (1, 4, 2, 8)
    """
    d = x_BxTxNxD.shape[-1]
    half = d // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_TxH = positions_T.astype(jnp.float32)[:, None] * freq[None, :]
    cos = jnp.cos(angle_TxH)[None, :, None, :]
    sin = jnp.sin(angle_TxH)[None, :, None, :]
    x = x_BxTxNxD.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxD.dtype)


def causal_attention(
    q_BxTxNxD: jax.Array,
    k_BxTxNxD: jax.Array,
    v_BxTxNxD: jax.Array,
    query_block: int = 64,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Causal self-attention over a window: ``jax.nn.dot_product_attention(..., is_causal=True)``.

    On GPUs and TPUs that call (and its fused kernels) does the work. On CPU the same maths is
    written out in the ``[B, N, T, S]`` layout with an additive causal bias, in blocks of
    ``query_block`` queries, each against only the keys it may see (its own block and those
    before it): a quarter fewer products at two blocks, over a third fewer at four. XLA's CPU
    backend compiles this to a faster training step than the generic path. Measured on the
    2-core CPU, one layer's forward and backward at 4 heads of 64: 23.1 -> 17.7 ms at T=128
    (the unblocked write-out; jax's generic path was 28), 32.6 -> 22.6 ms at T=256, 64.9 ->
    43.8 ms at T=512. With the oneDNN products the Transformer's steps compile with
    (``jaxlm.runtime.compiler_options``) the blocks still win: one whole benchmark step took
    509 ms, 535 through jax's generic path and 512 unblocked (medians of 11 alternating runs).

    Args:
      q_BxTxNxD: queries.
      k_BxTxNxD: keys.
      v_BxTxNxD: values.
      query_block: queries per block on CPU (the last block may be shorter).
      dropout_rate: drops each attention probability with this chance and scales the rest by
        ``1 / (1 - rate)`` (training only; ``jax.nn.dot_product_attention`` has no dropout, so
        a non-zero rate takes the written-out path on every backend).
      dropout_rng: the key for those drops; required when ``dropout_rate > 0``.

    Returns:
      ``[B, T, N, D]``, each query's average of the values at its own and earlier positions.

    Example:
      >>> x = jnp.ones((1, 4, 2, 8))
      >>> causal_attention(x, x, x).shape
      (1, 4, 2, 8)
    """
    if isinstance(dropout_rate, int | float) and not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"attention dropout rate must be in [0, 1), got {dropout_rate}")
    if is_on(dropout_rate) and dropout_rng is None:
        raise ValueError("attention dropout needs dropout_rng")
    if not on_cpu() and not is_on(dropout_rate):
        return jax.nn.dot_product_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, is_causal=True)
    t, dtype = q_BxTxNxD.shape[1], q_BxTxNxD.dtype
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q_BxTxNxD, k_BxTxNxD, v_BxTxNxD))  # [B, N, T, D]
    blocks = []
    for a in range(0, t, query_block):
        probs = _causal_probs(q[:, :, a : a + query_block], k[:, :, : a + query_block], a)
        if is_on(dropout_rate):
            keep = jax.random.bernoulli(
                jax.random.fold_in(dropout_rng, a), 1.0 - dropout_rate, probs.shape
            )
            probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
        # [B, N, Q, S] x [B, N, S, D] in the compute dtype (on CPU in float32 kernels).
        dims = (((3,), (2,)), ((0, 1), (0, 1)))
        blocks.append(precision.dot_general(probs, v[:, :, : a + query_block], dims, dtype))
    return jnp.swapaxes(jnp.concatenate(blocks, axis=2), 1, 2).astype(dtype)


def _causal_probs(q_BxNxQxD: jax.Array, k_BxNxSxD: jax.Array, start: int) -> jax.Array:
    """Attention of the queries at ``start, ...`` over the keys at ``0, ...``: ``[B, N, Q, S]``."""
    n_q, n_s = q_BxNxQxD.shape[2], k_BxNxSxD.shape[2]
    dims = (((3,), (3,)), ((0, 1), (0, 1)))  # q . k over D, per batch row and head
    scores = precision.dot_general(q_BxNxQxD, k_BxNxSxD, dims, q_BxNxQxD.dtype)
    scores = scores * (1.0 / math.sqrt(q_BxNxQxD.shape[-1]))
    visible = jnp.arange(n_s)[None, :] <= start + jnp.arange(n_q)[:, None]
    bias = jnp.where(visible, 0.0, -jnp.inf).astype(jnp.float32)
    return jax.nn.softmax(scores + bias, axis=-1)


def _gelu(x: jax.Array) -> jax.Array:
    """GELU (tanh form); in a narrower dtype, computed in float32 and rounded once.

    In bfloat16 each of its eight operations would round (its constants too), and XLA's CPU
    backend runs that chain and its gradient 4-10x slower than in float32. That float32 pass is
    rematerialised, so the backward pass keeps ``x`` in its own dtype, not float32 copies.
    """
    if x.dtype == jnp.float32:
        return jax.nn.gelu(x, approximate=True)
    return _gelu_f32(x)


@jax.checkpoint
def _gelu_f32(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x.astype(jnp.float32), approximate=True).astype(x.dtype)


def _norm(kind: str, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"Transformer.norm: unknown norm {kind!r}; expected layernorm or rmsnorm")


INIT_SCHEMES = ("gpt2", "normal")


def residual_out_std(init_scheme: str, num_layers: int) -> float:
    """The initial standard deviation of the residual output projections (``attn_out``,
    ``mlp_proj``): GPT-2 scales them by depth so that the residual stream's variance does not
    grow with the ``2 x num_layers`` branches added to it; "normal" does not.

    Args:
      init_scheme: one of :data:`INIT_SCHEMES`.
      num_layers: the number of blocks.

    Returns:
      0.02 / sqrt(2 x num_layers) for "gpt2", 0.02 for "normal".

    Example:
      >>> residual_out_std("gpt2", 8), residual_out_std("normal", 8)
      (0.005, 0.02)
    """
    return 0.02 / math.sqrt(2 * num_layers) if init_scheme == "gpt2" else 0.02


class Block(nn.Module):
    """One pre-norm Transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Attributes:
      num_heads: attention heads; the width must divide by it.
      mlp_dim: hidden width of the MLP.
      dropout: dropout on each residual branch in training.
      attention_dropout: dropout on the attention probabilities in training.
      norm: "layernorm" or "rmsnorm".
      positions: "learned" (added to the embeddings outside) or "rotary" (applied here).
      out_init_std: standard deviation of the residual output projections.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    norm: str = "layernorm"
    positions: str = "learned"
    out_init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxE: jax.Array,
        cache: Cache | None,
        pos: jax.Array,
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        b, t, e = x_BxTxE.shape
        n = self.num_heads
        d = e // n
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        out_init = nn.initializers.normal(self.out_init_std)

        y = _norm(self.norm, "norm_attn", self.dtype, self.param_dtype)(x_BxTxE)
        qkv = on_rows(Dense(3 * e, kernel_init=init, name="qkv", **dense), y)
        q, k, v = jnp.split(qkv.reshape(b, t, 3 * n, d), 3, axis=2)
        positions = pos + jnp.arange(t)
        if self.positions == "rotary":
            q, k = rotary(q, positions), rotary(k, positions)
        if cache is None:
            # Kept only when a caller collects "intermediates" (jaxlm.explain's attention maps);
            # otherwise a no-op that leaves the program unchanged.
            self.sow("intermediates", "queries_keys", (q, k))
            rate = 0.0 if deterministic else self.attention_dropout
            rng = self.make_rng("dropout") if is_on(rate) else None
            att = causal_attention(q, k, v, dropout_rate=rate, dropout_rng=rng)
        else:
            k_all = jax.lax.dynamic_update_slice(
                cache["k"], k.astype(cache["k"].dtype), (0, pos, 0, 0)
            )
            v_all = jax.lax.dynamic_update_slice(
                cache["v"], v.astype(cache["v"].dtype), (0, pos, 0, 0)
            )
            cache = {"k": k_all, "v": v_all}
            # Query i (at position pos + i) sees cache slots 0 .. pos + i; later slots are empty.
            mask = jnp.arange(k_all.shape[1])[None, :] <= positions[:, None]
            att = jax.nn.dot_product_attention(
                q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask=mask[None, None]
            )
        att = on_rows(
            Dense(e, kernel_init=out_init, name="attn_out", **dense), att.reshape(b, t, e)
        )
        x_BxTxE = x_BxTxE + Dropout(self.dropout)(att, deterministic=deterministic)

        y = _norm(self.norm, "norm_mlp", self.dtype, self.param_dtype)(x_BxTxE)
        y = on_rows(Dense(self.mlp_dim, kernel_init=init, name="mlp_fc", **dense), y)
        y = _gelu(y)
        y = on_rows(Dense(e, kernel_init=out_init, name="mlp_proj", **dense), y)
        x_BxTxE = x_BxTxE + Dropout(self.dropout)(y, deterministic=deterministic)
        return x_BxTxE, cache


class Transformer(nn.Module):
    """Decoder-only Transformer language model with jaxlm's model interface.

    ``apply({"params": p}, tokens_BxT, carry, deterministic=..., rngs={"dropout": key})``
    returns ``(logits_BxTxV float32, new_carry, aux)``. In training ``carry`` is None (from
    ``initial_carry(B)``) and attention is causal over the window. For decoding,
    ``initial_carry(B, max_length)`` gives an empty key/value cache; each call appends its
    tokens to the cache and attends to everything before them, so a prompt can be read in one
    call and then continued one token per call.

    Attributes:
      vocab_size: V.
      embed_dim: E, the model width.
      num_layers: number of blocks.
      num_heads: attention heads per block.
      mlp_dim: MLP hidden width; 0 means 4E.
      max_len: the longest sequence (learned position table size; cache limit).
      dropout: dropout on the embeddings and on each residual branch.
      attention_dropout: dropout on the attention probabilities (GPT-2's ``attn_pdrop``). While
        it is active, attention runs written out (:func:`causal_attention`) on every backend.
      norm: "layernorm" or "rmsnorm", applied before each sub-block and at the end.
      positions: "learned" or "rotary".
      tie_embeddings: the output layer reuses the token embedding matrix.
      remat: recompute each block's activations in the backward pass to save memory.
      init_scheme: "gpt2" (the default): every weight matrix and embedding normal(0.02), the
        residual output projections ``attn_out`` and ``mlp_proj`` normal(0.02 / sqrt(2 x
        num_layers)) (Radford et al. 2019, as in nanoGPT), biases and norms 0 and 1; "normal":
        normal(0.02) everywhere, with no depth scaling (the ablation).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      output_dtype: dtype of the returned logits (the loss upcasts to float32 either way).

    Example:
      >>> model = Transformer(vocab_size=65, embed_dim=32, num_layers=2, num_heads=4)
      >>> tokens = jnp.zeros((2, 16), jnp.int32)
      >>> params = model.init(jax.random.key(0), tokens, None)["params"]
      >>> logits, carry, aux = model.apply({"params": params}, tokens, None)
      >>> logits.shape
      (2, 16, 65)
    """

    # Steps compile their matrix products with oneDNN on CPU (jaxlm.runtime.compiler_options): the
    # attention's batched products run on every thread instead of one (benchmark step -10%).
    xla_cpu_onednn_matmuls: ClassVar[bool] = True

    vocab_size: int
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 0
    max_len: int = 512
    dropout: float = 0.0
    attention_dropout: float = 0.0
    norm: str = "layernorm"
    positions: str = "learned"
    tie_embeddings: bool = True
    remat: bool = False
    init_scheme: str = "gpt2"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    output_dtype: Dtype = jnp.float32

    @property
    def context_window(self) -> int | None:
        """The most tokens one sequence can hold: ``max_len`` with learned positions (the size
        of their table), None with rotary ones (no limit; a decoding cache is sized to the
        sequence). :func:`jaxlm.sampling.generate` crops longer contexts to this."""
        return self.max_len if self.positions == "learned" else None

    def initial_carry(self, batch_size: int, max_length: int | None = None) -> Cache | None:
        """No carry for training; an empty key/value cache for decoding ``max_length`` tokens.

        Args:
          batch_size: B.
          max_length: total tokens the cache must hold (prompt plus generated); None for
            training. A call that would go past it returns NaN logits.

        Returns:
          None, or ``{"pos": int32 scalar, "layers": ({"k": [B, L, N, D], "v": ...}, ...)}``.
        """
        if max_length is None:
            return None
        if self.positions == "learned" and max_length > self.max_len:
            raise ValueError(
                f"Transformer: {max_length} tokens exceed max_len={self.max_len} of the learned "
                "position table"
            )
        d = self.embed_dim // self.num_heads
        shape = (batch_size, max_length, self.num_heads, d)
        layers = tuple(
            {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
            for _ in range(self.num_layers)
        )
        return {"pos": jnp.zeros((), jnp.int32), "layers": layers}

    @nn.compact
    def __call__(
        self,
        tokens_BxT: jax.Array,
        carry: Cache | None = None,
        *,
        deterministic: bool = True,
        embedded: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache | None, dict[str, jax.Array]]:
        """Runs the model over a window (or appends it to the cache in ``carry``).

        Args:
          tokens_BxT: int token ids.
          carry: None in training, or the decoding cache (:meth:`initial_carry`).
          deterministic: False in training (dropout).
          embedded: ``[B, T, E]`` token embeddings that replace the lookup of ``tokens_BxT``
            (positions are still added): what :mod:`jaxlm.explain` differentiates and
            interpolates. None (the default) leaves the program as it is.

        Returns:
          ``(logits_BxTxV, new_carry, aux)``.
        """
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"Transformer: embed_dim={self.embed_dim} does not divide into "
                f"num_heads={self.num_heads}"
            )
        if self.positions not in ("learned", "rotary"):
            raise ValueError(
                f"Transformer.positions: unknown {self.positions!r}; expected learned or rotary"
            )
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(
                f"Transformer.init_scheme: unknown {self.init_scheme!r}; expected one of "
                f"{INIT_SCHEMES}"
            )
        t = tokens_BxT.shape[1]
        if carry is None and t > self.max_len and self.positions == "learned":
            raise ValueError(f"Transformer: window {t} exceeds max_len={self.max_len}")
        pos = jnp.zeros((), jnp.int32) if carry is None else carry["pos"]
        embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=nn.initializers.normal(0.02),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed",
        )
        x = embed(tokens_BxT) if embedded is None else embedded.astype(self.dtype)
        if self.positions == "learned":
            table = self.param(
                "pos_embed",
                nn.initializers.normal(0.02),
                (self.max_len, self.embed_dim),
                self.param_dtype,
            )
            x = x + jax.lax.dynamic_slice_in_dim(table, pos, t).astype(self.dtype)[None]
        x = self.perturb("embedded", x)  # lets tests take gradients with respect to the inputs
        x = Dropout(self.dropout)(x, deterministic=deterministic)

        block_cls = nn.remat(Block, static_argnums=(4,)) if self.remat else Block
        mlp_dim = self.mlp_dim or 4 * self.embed_dim
        new_layers = []
        for i in range(self.num_layers):
            x, layer_cache = block_cls(
                num_heads=self.num_heads,
                mlp_dim=mlp_dim,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout,
                norm=self.norm,
                positions=self.positions,
                out_init_std=residual_out_std(self.init_scheme, self.num_layers),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"blocks_{i}",
            )(x, None if carry is None else carry["layers"][i], pos, deterministic)
            new_layers.append(layer_cache)
        x = _norm(self.norm, "final_norm", self.dtype, self.param_dtype)(x)
        if self.tie_embeddings:
            logits = on_rows(embed.attend, x)
        else:
            head = Dense(
                self.vocab_size,
                use_bias=False,
                kernel_init=nn.initializers.normal(0.02),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="head",
            )
            logits = on_rows(head, x)
        new_carry = None
        if carry is not None:
            new_carry = {"pos": pos + t, "layers": tuple(new_layers)}
            # Writing past the cache is clamped by dynamic_update_slice, not an error: make the
            # result NaN rather than silently wrong (the cache is sized by initial_carry).
            fits = pos + t <= carry["layers"][0]["k"].shape[1]
            logits = jnp.where(fits, logits, jnp.nan)
        return logits.astype(self.output_dtype), new_carry, {}
