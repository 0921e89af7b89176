"""Sampling from a language model: temperature, top-k and top-p, seeded, for every model kind.

Neural models decode inside ``lax.scan`` with their carried state; an n-gram model
(:class:`~jaxlm.models.ngram.NGramModel`, which has no parameters) samples with numpy, its
next-token distributions filtered by the same :func:`sample_logits`
(:mod:`jaxlm.models.ngram.sampling`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.tokenizers import encode_prompt

if TYPE_CHECKING:
    import flax.linen as nn


def sample_logits(
    logits_BxV: jax.Array,
    rng: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Draws one token per row.

    Args:
      logits_BxV: unnormalised scores.
      rng: a PRNG key.
      temperature: divides the logits; 0 takes the argmax.
      top_k: keep only the k highest-scoring tokens, ties broken by index (0 keeps all).
      top_p: keep the smallest set of tokens whose probability reaches p (1 keeps all).

    Returns:
      ``[B]`` int32 token ids.

    Example:
      >>> sample_logits(jnp.array([[0.0, 9.0, 0.0]]), jax.random.key(0), temperature=0.0)
      Array([1], dtype=int32)
    """
    logits = logits_BxV.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        # Exactly k tokens, by index: a threshold on the k-th value would keep every tie.
        idx = jax.lax.top_k(logits, top_k)[1]
        keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), idx, True, axis=-1, inplace=False)
        logits = jnp.where(keep, logits, -jnp.inf)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # The smallest logit still needed to reach mass top_p; always keep the best token.
        cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(
    model: Any,
    params: Any,
    prompt_BxP: Any,
    num_tokens: int,
    rng: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Continues a prompt by ``num_tokens`` sampled tokens.

    The prompt is read in one call, then tokens are drawn one at a time inside ``lax.scan``,
    carrying the model's state (a recurrent model's hidden state, a Transformer's key/value
    cache: whatever ``model.initial_carry(B, max_length)`` gives).

    A model with a ``context_window`` (a Transformer with learned positions: ``max_len``) sees
    at most that many tokens. When the prompt and the new tokens do not fit, the context is
    cropped to its last ``context_window`` tokens, as nanoGPT does: the cache serves while the
    sequence fits, then each token re-reads the window before it. So any ``num_tokens`` works.

    An n-gram model (``params`` unused, None) continues each row as a sentence start followed
    by the prompt, all rows in lockstep (:func:`jaxlm.models.ngram.sampling.sample`): the same
    filters, through :func:`sample_logits`; at temperature 1 without filters it draws exactly
    from the model without building the distributions.

    Args:
      model: a jaxlm model (see :func:`jaxlm.models.get_model`), or an n-gram model.
      params: its parameters (None for an n-gram model).
      prompt_BxP: int32 prompt ids, P >= 1 (an n-gram model also takes P = 0).
      num_tokens: how many tokens to draw, >= 1.
      rng: a PRNG key; the same key gives the same text.
      temperature: see :func:`sample_logits`.
      top_k: see :func:`sample_logits`.
      top_p: see :func:`sample_logits`.

    Returns:
      ``[B, num_tokens]`` int32 sampled ids (the prompt not included).

    Example:
      >>> from jaxlm.models.recurrent import RecurrentLM
      >>> model = RecurrentLM(vocab_size=10, embed_dim=8, hidden_sizes=(8,))
      >>> prompt = jnp.zeros((1, 3), jnp.int32)
      >>> params = model.init(jax.random.key(0), prompt, model.initial_carry(1))["params"]
      >>> generate(model, params, prompt, 5, jax.random.key(1)).shape
      (1, 5)
      >>> import numpy as np
      >>> from jaxlm.models.ngram import build
      >>> lm = build(np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> generate(lm, None, jnp.array([[2], [3]]), 4, jax.random.key(0)).shape
      (2, 4)
    """
    from jaxlm.models.ngram.model import NGramModel

    if isinstance(model, NGramModel):
        if num_tokens < 1:
            raise ValueError(f"generate: num_tokens must be >= 1, got {num_tokens}")
        out = model.sample(
            np.asarray(prompt_BxP),
            num_tokens,
            rng,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        return jnp.asarray(out)
    return _generate(
        model,
        params,
        prompt_BxP,
        num_tokens,
        rng,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )


@functools.partial(
    jax.jit, static_argnames=("model", "num_tokens", "temperature", "top_k", "top_p")
)
def _generate(
    model: nn.Module,
    params,
    prompt_BxP: jax.Array,
    num_tokens: int,
    rng: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """:func:`generate` for a neural model, compiled."""
    if num_tokens < 1:
        raise ValueError(f"generate: num_tokens must be >= 1, got {num_tokens}")
    draw = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    keys = jax.random.split(rng, num_tokens)
    window = getattr(model, "context_window", None)
    plen = prompt_BxP.shape[1]
    if window is None or plen + num_tokens <= window:
        return _continue(model, params, prompt_BxP, keys, draw, plen + num_tokens)
    # Cropped, as nanoGPT does: the cache while the sequence fits (the last token drawn is never
    # fed, so a full window of cache gives window - P + 1 tokens), then the window re-read.
    prompt_BxP = prompt_BxP[:, -window:]
    n_cached = min(window - prompt_BxP.shape[1] + 1, num_tokens)
    head = _continue(model, params, prompt_BxP, keys[:n_cached], draw, window)
    context = jnp.concatenate([prompt_BxP, head], axis=1)[:, -window:]
    no_carry = model.initial_carry(prompt_BxP.shape[0])

    def step(context_BxW, key):
        logits, _, _ = model.apply({"params": params}, context_BxW, no_carry, deterministic=True)
        nxt = draw(logits[:, -1], key)
        return jnp.concatenate([context_BxW[:, 1:], nxt[:, None]], axis=1), nxt

    _, tail = jax.lax.scan(step, context, keys[n_cached:])
    return jnp.concatenate([head, tail.T], axis=1)


def _continue(model, params, prompt_BxP, keys, draw, max_length: int) -> jax.Array:
    """One token per key: the prompt read once, then each token fed to the carried state."""
    carry = model.initial_carry(prompt_BxP.shape[0], max_length)
    logits, carry, _ = model.apply({"params": params}, prompt_BxP, carry, deterministic=True)
    first = draw(logits[:, -1], keys[0])

    def step(state, key):
        carry, token = state
        logits, carry, _ = model.apply(
            {"params": params}, token[:, None], carry, deterministic=True
        )
        nxt = draw(logits[:, -1], key)
        return (carry, nxt), token

    (_, last), tokens = jax.lax.scan(step, (carry, first), keys[1:])
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def sample_text(
    model: Any,
    params: Any,
    tokenizer: Any,
    prompt: str,
    num_tokens: int,
    seed: int,
    *,
    temperature: float = 1.0,
) -> str:
    """The end-of-run sample: ``prompt`` and ``num_tokens`` tokens drawn after it, as text.

    Args:
      model: any model :func:`generate` takes (neural or n-gram).
      params: its parameters (None for an n-gram model).
      tokenizer: the run's tokenizer (``encode``/``decode``).
      prompt: the text to continue (:func:`jaxlm.data.tokenizers.encode_prompt`).
      num_tokens: how many tokens to draw; 0 gives "".
      seed: the PRNG seed (the run's).
      temperature: see :func:`sample_logits`.

    Returns:
      The prompt followed by the decoded tokens.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> from jaxlm.models.ngram import build
      >>> tok = CharTokenizer.train("abab abba ")
      >>> lm = build(tok.encode("abab abba " * 3), tok.vocab_size, order=3)
      >>> len(sample_text(lm, None, tok, "ab", 8, seed=0))
      10
    """
    from jaxlm.models.ngram.model import NGramModel

    if isinstance(model, NGramModel):  # numpy, seeded by the int
        from jaxlm.models.ngram.sampling import sample_text as ngram_text

        return ngram_text(model, tokenizer, prompt, num_tokens, seed, temperature=temperature)
    if not num_tokens:
        return ""
    ids = encode_prompt(tokenizer, prompt)
    tokens = generate(
        model,
        params,
        jnp.asarray(ids[None, :]),
        num_tokens,
        jax.random.PRNGKey(seed),
        temperature=temperature,
    )
    return prompt + tokenizer.decode(np.asarray(tokens[0]))
