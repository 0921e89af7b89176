"""Sampling from an n-gram model: next-token distributions for a batch of contexts, and text.

Many independent streams are drawn in lockstep, one vectorised numpy step per token position,
with no Python loop over streams or over the vocabulary:

- :func:`next_log_probs_batch`: ``log p(w | h)`` over the whole vocabulary for ``B`` contexts
  at once (``[B, V]``), exactly the distribution :meth:`NGramModel.score` scores with.
- :func:`sample`: continues ``B`` prompts. With top-k, top-p or greedy decoding each step
  builds the ``[B, V]`` distributions and draws with :func:`jaxlm.sampling.sample_logits`, the
  neural models' sampler, so the filters mean the same for every model kind. At a temperature
  alone numpy draws from those distributions raised to ``1 / temperature`` (what
  ``sample_logits`` draws then; no JAX). At temperature 1 (the model's own distribution, as a
  synthetic corpus wants) it draws without building them: back-off sampling, ``O(N log n)`` per
  token instead of ``O(V)`` (see :func:`_draw_exact`).

What this adds to the field's tools: KenLM and SRILM score but do not sample (SRILM's
``ngram -gen`` draws one sentence at a time in C, without temperature or top-k); NLTK's
``LanguageModel.generate`` loops in Python per token and per vocabulary entry.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxlm.models.ngram.counts import check_tokens

if TYPE_CHECKING:
    from jaxlm.models.ngram.model import NGramModel

_MAX_ROUNDS = 64  # rounds of the exact sampler before the last streams take the full distribution


def context_rows(model: NGramModel, contexts: np.ndarray) -> np.ndarray:
    """The row of every suffix of each context in its order's table (-1: not stored).

    Args:
      model: the n-gram model.
      contexts: ``[B, L]`` int ids, oldest first, left-padded with -1 (no token); ``<s>`` is
        ``model.bos_id``. Only the last ``N - 1`` columns are used.

    Returns:
      ``[N - 1, B]`` int64: row ``l - 1`` holds each context's last ``l`` tokens' row in order
      ``l``'s table, or -1 where that suffix is not stored (or runs into the padding).

    Example:
      >>> from jaxlm.models.ngram import build
      >>> model = build(np.array([2, 3, 0, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> context_rows(model, np.array([[-1, 5], [5, 2], [3, 3]])).tolist()
      [[5, 2, 3], [-1, 4, -1]]
    """
    m = model.vocab_size + 1
    depth = model.order - 1
    ctx = np.asarray(contexts, np.int64)
    if ctx.ndim != 2:
        raise ValueError(f"contexts: expected [B, L] ids, got shape {ctx.shape}")
    ctx = ctx[:, ctx.shape[1] - min(depth, ctx.shape[1]) :]
    if ctx.shape[1] < depth:
        ctx = np.concatenate([np.full((len(ctx), depth - ctx.shape[1]), -1), ctx], axis=1)
    rows = np.full((depth, len(ctx)), -1, np.int64)
    for length in range(1, depth + 1):
        suffix = ctx[:, depth - length :]
        row = suffix[:, 0].copy()
        for j in range(1, length):
            ok = (row >= 0) & (suffix[:, j] >= 0)
            key = row * m + suffix[:, j]
            table = model.keys[j]
            if len(table) == 0:
                row[:] = -1
                break
            i = np.minimum(np.searchsorted(table, key), len(table) - 1)
            row = np.where(ok & (table[i] == key), i, -1)
        rows[length - 1] = row
    return rows


def _ranges(table: np.ndarray, rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` of each row's continuations in the next order's sorted table."""
    return np.searchsorted(table, rows * m), np.searchsorted(table, (rows + 1) * m)


def next_log_probs_batch(model: NGramModel, contexts: Any) -> np.ndarray:
    """``log p(w | context)`` for every token ``w`` and every context of a batch.

    Args:
      model: the n-gram model.
      contexts: ``[B, L]`` int ids, oldest first, left-padded with -1 where a context is shorter
        (a sentence's first tokens); begin a sentence with ``model.bos_id``. Only the last
        ``N - 1`` columns are used.

    Returns:
      float64 ``[B, V]`` log-probabilities (nats); each row sums to 1 in probability and equals
      :meth:`NGramModel.next_log_probs` of its context.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
      >>> model = build(tokens, vocab_size=5, order=3, eos_id=0, method="kneser_ney")
      >>> p = np.exp(next_log_probs_batch(model, [[-1, model.bos_id], [2, 4]]))
      >>> p.round(3).tolist()[0], p.sum(axis=1).round(12).tolist()
      ([0.104, 0.006, 0.586, 0.252, 0.051], [1.0, 1.0])
    """
    ctx = np.asarray(contexts, np.int64)
    if ctx.ndim == 1:
        ctx = ctx[None, :]
    rows = context_rows(model, ctx) if model.order > 1 else np.zeros((0, len(ctx)), np.int64)
    return _full_rows(model, rows)


@functools.lru_cache(maxsize=8)
def _jitted_draw(greedy: bool, top_k: int, top_p: float):
    """:func:`jaxlm.sampling.sample_logits`, compiled once per filter (the temperature is an
    argument: dividing first and drawing at temperature 1 is what it computes)."""
    import jax
    import jax.numpy as jnp

    from jaxlm.sampling import sample_logits

    def draw(logits, key, temperature):
        if greedy:
            return sample_logits(logits, key, temperature=0.0)
        scaled = logits.astype(jnp.float32) / temperature
        return sample_logits(scaled, key, temperature=1.0, top_k=top_k, top_p=top_p)

    return jax.jit(draw)


def numpy_rng(rng: Any) -> np.random.Generator:
    """A numpy generator from a seed, a numpy generator (returned as is) or a JAX PRNG key.

    Args:
      rng: an int seed, ``np.random.Generator``, or a JAX key (typed or raw ``uint32``).

    Returns:
      The generator; the same key or seed gives the same draws.

    Example:
      >>> float(numpy_rng(0).random()) == float(numpy_rng(0).random())
      True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer):
        return np.random.default_rng(int(rng))
    import jax

    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return np.random.default_rng(np.asarray(rng).astype(np.uint64).reshape(-1).tolist())


class _Tables:
    """Per order, the running sum of the stored n-grams' probabilities (for drawing within a
    context's continuations), computed once per model."""

    def __init__(self, model: NGramModel) -> None:
        v = model.vocab_size
        self.uni = np.cumsum(np.exp(np.asarray(model.log_probs[0][:v], np.float64)))
        self.cdf = [self.uni] + [
            np.cumsum(np.exp(np.asarray(lp, np.float64))) for lp in model.log_probs[1:]
        ]


def _tables(model: NGramModel) -> _Tables:
    cached = model.__dict__.get("_sampling_tables")
    if cached is None:
        cached = _Tables(model)
        model.__dict__["_sampling_tables"] = cached
    return cached


def _draw_exact(model: NGramModel, rows: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """One token per stream from its context's distribution, without building it.

    In back-off form ``p(w|h)`` is the stored probability when ``h w`` is stored, and
    ``gamma(h) p(w|h')`` otherwise. A draw from ``p(.|h)``: with probability ``M(h)``, the mass
    of the stored continuations, one of them in proportion to its probability (a binary search
    in the order's running sums); else a draw from ``p(.|h')``, repeated until it is not a
    stored continuation of ``h`` (which gives ``gamma(h) p(w|h')`` exactly, since
    ``1 - M(h) = gamma(h) (1 - p(stored(h) | h'))``). The unigram level draws from all ``V``.
    A rejection retries the draw of the level below the rejecting one, not from the top, which
    is what keeps it exact. Streams still unresolved after ``_MAX_ROUNDS`` rounds (contexts whose
    back-off almost never lands outside their continuations) take their full distribution.
    """
    depth, b_size = rows.shape
    m = model.vocab_size + 1
    tabs = _tables(model)
    lo = np.zeros((depth + 1, b_size), np.int64)
    hi = np.zeros((depth + 1, b_size), np.int64)
    lo[0], hi[0] = 0, model.vocab_size
    valid = np.ones((depth + 1, b_size), bool)
    for c in range(1, depth + 1):
        r = rows[c - 1]
        valid[c] = r >= 0
        lo[c], hi[c] = _ranges(model.keys[c], np.maximum(r, 0), m)
        hi[c] = np.where(valid[c], hi[c], lo[c])
    base = np.zeros((depth + 1, b_size))
    mass = np.zeros((depth + 1, b_size))
    mass[0] = tabs.uni[-1]
    for c in range(1, depth + 1):
        cdf = tabs.cdf[c]
        before = np.where(lo[c] > 0, cdf[np.maximum(lo[c] - 1, 0)] if len(cdf) else 0.0, 0.0)
        after = cdf[np.maximum(hi[c] - 1, 0)] if len(cdf) else np.zeros(b_size)
        base[c] = before
        mass[c] = np.where(hi[c] > lo[c], after - before, 0.0)
    # the highest usable level at or below each level (0 always is)
    below = np.zeros((depth + 1, b_size), np.int64)
    for c in range(1, depth + 1):
        below[c] = np.where(valid[c], c, below[c - 1])
    level = below[depth].copy()
    out = np.full(b_size, -1, np.int64)
    active = np.arange(b_size)
    for _ in range(_MAX_ROUNDS):
        if len(active) == 0:
            break
        lev = level[active]
        u = gen.random(len(active))
        top = lev == 0
        u[top] *= mass[0, active[top]]
        hit = u < mass[lev, active]
        down = active[~hit]
        level[down] = below[np.maximum(level[down] - 1, 0), down]
        s, lev_s = active[hit], lev[hit]
        target = base[lev_s, s] + u[hit]
        w = np.empty(len(s), np.int64)
        for c in range(depth + 1):
            sel = lev_s == c
            if not sel.any():
                continue
            cdf = tabs.cdf[c]
            i = np.searchsorted(cdf, target[sel], "right")
            i = np.clip(i, lo[c, s[sel]], hi[c, s[sel]] - 1)
            w[sel] = i if c == 0 else model.keys[c][i] % m
        # a draw from level c is kept unless a higher usable level stores it
        reject = np.zeros(len(s), np.int64)  # the rejecting level, 0: none
        for k in range(depth, 0, -1):
            chk = (lev_s < k) & valid[k, s]
            if not chk.any():
                continue
            table = model.keys[k]
            key = rows[k - 1][s[chk]] * m + w[chk]
            j = np.minimum(np.searchsorted(table, key), max(len(table) - 1, 0))
            stored = table[j] == key if len(table) else np.zeros(len(key), bool)
            sub = np.flatnonzero(chk)[stored]
            reject[sub] = k  # the loop runs downwards: the lowest rejecting level wins
        bad = reject > 0
        level[s[bad]] = below[reject[bad] - 1, s[bad]]
        out[s[~bad]] = w[~bad]
        active = np.concatenate([down, s[bad]])
        active.sort()
    if len(active):  # the rare stragglers: their full distribution
        full = _full_rows(model, rows[:, active])
        p = np.exp(full)
        cdf = np.cumsum(p, axis=1)
        u = gen.random(len(active)) * cdf[:, -1]
        out[active] = np.minimum((cdf < u[:, None]).sum(axis=1), model.vocab_size - 1)
    return out


def _full_rows(model: NGramModel, rows: np.ndarray) -> np.ndarray:
    """:func:`next_log_probs_batch` from precomputed :func:`context_rows`."""
    v, m = model.vocab_size, model.vocab_size + 1
    out = np.repeat(np.asarray(model.log_probs[0][:v], np.float64)[None, :], rows.shape[1], axis=0)
    for length in range(1, model.order):
        b = np.flatnonzero(rows[length - 1] >= 0)
        if len(b) == 0:
            continue
        r = rows[length - 1][b]
        out[b] += np.asarray(model.log_backoffs[length - 1])[r][:, None]
        table = model.keys[length]
        lo, hi = _ranges(table, r, m)
        count = hi - lo
        idx = np.arange(count.sum()) + np.repeat(lo - (np.cumsum(count) - count), count)
        out[np.repeat(b, count), table[idx] % m] = model.log_probs[length][idx]
    return out


def start_contexts(model: NGramModel, prompt: np.ndarray) -> np.ndarray:
    """The ``[B, N - 1]`` contexts after each prompt row (-1 padded), sentence rules applied:
    each row starts a sentence (``<s>`` when ``add_bos``) and restarts after ``eos_id``."""
    depth = max(model.order - 1, 1)
    b_size = prompt.shape[0]
    ctx = np.full((b_size, depth), -1, np.int64)
    if model.add_bos:
        ctx[:, -1] = model.bos_id
    for t in range(prompt.shape[1]):
        ctx = advance(model, ctx, prompt[:, t])
    return ctx


def advance(model: NGramModel, ctx: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The contexts after appending one token per row (a sentence end restarts the context).

    Args:
      model: the model (its ``eos_id`` and ``add_bos``).
      ctx: ``[B, L]`` contexts, -1 padded on the left.
      tokens: ``[B]`` the next token of each row.

    Returns:
      The new ``[B, L]`` contexts.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> model = build(np.array([2, 3, 0, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> advance(model, np.array([[5, 2], [2, 3]]), np.array([4, 0])).tolist()
      [[2, 4], [-1, 5]]
    """
    out = np.concatenate([ctx[:, 1:], np.asarray(tokens, np.int64)[:, None]], axis=1)
    if model.eos_id is not None:
        ends = np.asarray(tokens) == model.eos_id
        if ends.any():
            out[ends] = -1
            if model.add_bos:
                out[ends, -1] = model.bos_id
    return out


def sample(
    model: NGramModel,
    prompt: Any,
    num_tokens: int,
    rng: Any = 0,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> np.ndarray:
    """Continues ``B`` prompts by ``num_tokens`` tokens each, all streams in lockstep.

    Each prompt row starts a sentence (from ``<s>`` when the model has it); a sampled or prompted
    ``eos_id`` ends the sentence and the next token starts a new one, as in training.

    Args:
      model: the n-gram model.
      prompt: ``[B, P]`` int ids (``P`` may be 0: every stream starts at a sentence start).
      num_tokens: tokens to draw per stream, >= 1.
      rng: a JAX PRNG key, an int seed or a ``np.random.Generator``; the same one gives the same
        text.
      temperature: divides the log-probabilities; 0 takes the most probable token.
      top_k: keep only the k most probable tokens (0 keeps all).
      top_p: keep the smallest set of tokens whose probability reaches p (1 keeps all).

    Returns:
      ``[B, num_tokens]`` int32 ids (the prompt not included). With ``temperature == 1`` and no
      top-k or top-p the draws are exact samples of the model, taken without building the
      distributions (fast); at another temperature without filters, numpy draws from each
      step's distribution (:func:`next_log_probs_batch`) raised to ``1 / temperature``; with
      top-k, top-p or temperature 0, each step draws with :func:`jaxlm.sampling.sample_logits`.
      Only that last needs JAX.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
      >>> model = build(tokens, vocab_size=5, order=3, eos_id=0, method="kneser_ney")
      >>> sample(model, np.zeros((2, 0), np.int64), 6, rng=0).shape
      (2, 6)
      >>> sample(model, np.array([[2]]), 4, rng=0, temperature=0.0).tolist()
      [[4, 0, 2, 4]]
    """
    if num_tokens < 1:
        raise ValueError(f"sample: num_tokens must be >= 1, got {num_tokens}")
    if temperature < 0:
        raise ValueError(f"sample: temperature must be >= 0, got {temperature}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample: need top_k >= 0 and 0 < top_p <= 1, got {top_k}, {top_p}")
    prompt = np.asarray(prompt)
    if prompt.ndim != 2:
        raise ValueError(f"sample: expected a [B, P] prompt, got shape {prompt.shape}")
    if prompt.size:
        check_tokens(prompt, model.vocab_size, "sample prompt")
    top_k = top_k if top_k < model.vocab_size else 0
    unfiltered = temperature > 0 and top_k == 0 and top_p >= 1.0  # numpy draws: no JAX
    exact = unfiltered and temperature == 1.0
    ctx = start_contexts(model, prompt.astype(np.int64))
    out = np.empty((prompt.shape[0], num_tokens), np.int32)
    if unfiltered:
        gen = numpy_rng(rng)
    else:
        import jax
        import jax.numpy as jnp

        keys = _jax_keys(rng, num_tokens)
        draw = _jitted_draw(temperature == 0.0, int(top_k), float(top_p))
        scale = jnp.float32(temperature if temperature > 0 else 1.0)
    for t in range(num_tokens):
        if model.order > 1:
            rows = context_rows(model, ctx)
        else:
            rows = np.zeros((0, len(ctx)), np.int64)
        if exact:
            token = _draw_exact(model, rows, gen)
        elif unfiltered:
            token = _draw_scaled(_full_rows(model, rows), temperature, gen)
        else:
            logits = jnp.asarray(_full_rows(model, rows), jnp.float32)
            token = np.asarray(jax.device_get(draw(logits, keys[t], scale)), np.int64)
        out[:, t] = token
        ctx = advance(model, ctx, token)
    return out


def _draw_scaled(log_probs_BxV: np.ndarray, temperature: float, gen: np.random.Generator):
    """One token per row from ``p ** (1 / temperature)`` renormalised: what
    :func:`jaxlm.sampling.sample_logits` draws at that temperature with no filter, by the inverse
    of each row's running sum (float64).

    Example:
      >>> logp = np.array([[np.log(0.5), np.log(0.5), -np.inf]])
      >>> sorted(set(_draw_scaled(np.repeat(logp, 100, 0), 0.5, numpy_rng(0)).tolist()))
      [0, 1]
    """
    z = np.asarray(log_probs_BxV, np.float64) / temperature
    cdf = np.cumsum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)
    u = gen.random(len(cdf)) * cdf[:, -1]
    token = (cdf <= u[:, None]).sum(axis=1)  # the first index whose running sum passes u
    return np.minimum(token, cdf.shape[1] - 1)


def _jax_keys(rng: Any, n: int) -> Any:
    """``n`` JAX keys from a JAX key or an int seed (a numpy generator draws a seed)."""
    import jax

    if isinstance(rng, np.random.Generator):
        rng = int(rng.integers(2**31))
    if isinstance(rng, int | np.integer):
        rng = jax.random.key(int(rng))
    return jax.random.split(rng, n)


def sample_text(
    model: NGramModel,
    tokenizer: Any,
    prompt: str,
    num_tokens: int,
    seed: int,
    *,
    temperature: float = 1.0,
) -> str:
    """:func:`jaxlm.sampling.sample_text` for an n-gram model (that function hands it here; this
    module needs no JAX at a temperature alone): the prompt and ``num_tokens`` drawn after it.

    Example:
      >>> from jaxlm.data.tokenizers import WordTokenizer
      >>> from jaxlm.models.ngram import build
      >>> tok = WordTokenizer.train("a b a\\nb a\\n")
      >>> lm = build(tok.encode("a b a\\nb a\\n" * 3), tok.vocab_size, order=2, eos_id=tok.eos_id)
      >>> sample_text(lm, tok, "a", 3, seed=0) == sample_text(lm, tok, "a", 3, seed=0)
      True
    """
    from jaxlm.data.tokenizers import encode_prompt

    if not num_tokens:
        return ""
    ids = encode_prompt(tokenizer, prompt).astype(np.int64)
    tokens = sample(model, ids[None, :], num_tokens, int(seed), temperature=temperature)
    return prompt + tokenizer.decode(tokens[0])
