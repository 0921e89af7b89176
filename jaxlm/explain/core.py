"""Why a model predicted a token: per-position diagnostics and attributions in embedding space.

:func:`attribute` takes any model of the registry (a recurrent model or a Transformer with its
parameters, or a fitted :class:`~jaxlm.models.ngram.NGramModel`), the tokens of a text and the
predictions to explain, and returns an :class:`Explanation`:

- per position, the model's top-k next tokens, the actual next token's probability, rank and
  surprisal in bits, and the entropy of the prediction (one jitted forward pass);
- per target, the attribution of its score to every earlier token by integrated gradients
  (Sundararajan et al. 2017), gradient x input, saliency (the gradient's norm) or occlusion, in
  embedding space; for recurrent models the carried state at the window start is one more
  input ("everything before the window");
- for the Transformer, the attention of every layer and head and their rollout
  (:mod:`jaxlm.explain.attention`); for n-gram models, the back-off path of every token
  (:mod:`jaxlm.explain.ngram`).

What this adds to the field's tools (Captum's ``LLMGradientAttribution``, inseq; both
PyTorch): it is JAX, and every integrated-gradients step of every target runs in one
``jax.jit`` program: the (step, target) pairs are the rows of the model's own batch axis (the
rows are independent, so the gradient of their sum is each row's gradient), in chunks of
:func:`default_chunk` rows through ``jax.lax.map``, so a batch of targets gives the numbers
each target gives alone (inseq's issue 110 reports batching that changed them). The integral
uses Gauss-Legendre nodes (Captum's default), which meet the completeness axiom to well under
1% at 32-64 steps. ``benchmarks/explain_speed.py`` times it against a Python loop of per-step
gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.ngram import NGramModel
from jaxlm.models.recurrent import RecurrentLM
from jaxlm.models.transformer import Transformer

PyTree = Any
METHODS = ("ig", "gxi", "saliency", "occlusion")
"""Attribution methods: integrated gradients, gradient x input, saliency (gradient norm),
occlusion (each token replaced by the baseline)."""
SCORES = ("logprob", "logit")
"""What a target's score is: its log-probability, or its logit (minus the contrast's)."""
LOG2 = math.log(2.0)


class Target(NamedTuple):
    """One prediction to explain.

    Attributes:
      position: the index (in the tokens given) of the last input token: the prediction is of
        the token after it. Negative counts from the end (-1: the token after the text).
      token: the predicted token to explain; None: the model's top token there.
      contrast: explain "token rather than contrast": the score is the difference of the two
        (log-probabilities or logits); None: the token's score alone.
    """

    position: int = -1
    token: int | None = None
    contrast: int | None = None


@dataclasses.dataclass
class Diagnostics:
    """Per-position statistics of the predictions, in bits.

    Index ``t`` is the prediction made after token ``t``, of token ``t + 1``; the last entry is
    the prediction after the text (no actual token: NaN probability and surprisal, rank -1).

    Attributes:
      top_ids: ``[T, k]`` the k most probable next tokens, most probable first.
      top_probs: ``[T, k]`` their probabilities.
      entropy_bits: ``[T]`` the entropy of each prediction.
      actual_prob: ``[T]`` the probability of the actual next token.
      actual_rank: ``[T]`` its rank (1: the top token).
      surprisal_bits: ``[T]`` ``-log2`` of its probability.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    entropy_bits: np.ndarray
    actual_prob: np.ndarray
    actual_rank: np.ndarray
    surprisal_bits: np.ndarray


@dataclasses.dataclass
class TargetAttribution:
    """The attribution of one prediction to the tokens before it.

    Attributes:
      position: index of the last input token (the prediction is of the token after it).
      token: the token explained.
      contrast: the contrast token, or None.
      score: the score explained: ``log p(token)`` (or its logit), minus the contrast's.
      baseline_score: the score with every input at the baseline (the carry at zero): what
        integrated gradients start from; None without ``"ig"``.
      attributions: per method, ``[position + 1]`` scores of tokens ``0 .. position`` (later
        tokens cannot matter: the models are causal).
      carry: per method, the score of the recurrent state at the window start (0 at a zero
        state); empty for models without one.
    """

    position: int
    token: int
    contrast: int | None
    score: float
    baseline_score: float | None
    attributions: dict[str, np.ndarray]
    carry: dict[str, float]

    @property
    def completeness_gap(self) -> float | None:
        """``sum(IG attributions) - (score - baseline_score)``, relative to the latter: the
        integrated-gradients error (0 for the exact integral); None without ``"ig"``."""
        if self.baseline_score is None or "ig" not in self.attributions:
            return None
        total = float(self.attributions["ig"].sum()) + self.carry.get("ig", 0.0)
        change = self.score - self.baseline_score
        return (total - change) / abs(change) if change else total


@dataclasses.dataclass
class Explanation:
    """What :func:`attribute` returns.

    Attributes:
      tokens: ``[T]`` the tokens explained (the window: a longer text's earlier tokens went
        into the recurrent state, or were cropped for a Transformer; see ``start``).
      start: how many tokens of the text came before ``tokens``.
      model_kind: "recurrent", "transformer" or "ngram".
      diagnostics: the per-position :class:`Diagnostics`.
      targets: one :class:`TargetAttribution` per target.
      methods: the attribution methods computed.
      options: the options in force (score, steps, baseline, ...).
      attention: for a Transformer, :class:`~jaxlm.explain.attention.Attention`; else None.
      ngram: for an n-gram model, one :class:`~jaxlm.explain.ngram.NGramToken` per token (the
        back-off path that gave its probability); else None.
      warnings: what was changed about the input (a cropped text), one line each.
    """

    tokens: np.ndarray
    start: int
    model_kind: str
    diagnostics: Diagnostics
    targets: list[TargetAttribution]
    methods: tuple[str, ...]
    options: dict[str, Any]
    attention: Any = None
    ngram: list | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def word_scores(
        self, tokenizer: Any, values: Any, how: str = "sum"
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """Per-token values (an attribution, surprisals) gathered to words.

        Uses :func:`jaxlm.data.words.token_words` and :func:`~jaxlm.data.words.aggregate`, so
        it works for char, byte, subword and word tokenizers alike.

        Args:
          tokenizer: the tokenizer of :attr:`tokens`.
          values: ``[n]`` values of the first ``n`` tokens (an attribution covers tokens up to
            its target's position), e.g. ``explanation.targets[0].attributions["ig"]``.
          how: "sum", "mean" or "max".

        Returns:
          ``(words, scores)``: the words of those tokens and each word's score.

        Example:
          >>> words, ig = explanation.word_scores(tok, target.attributions["ig"])  # doctest: +SKIP
        """
        from jaxlm.data.words import aggregate, token_words

        values = np.asarray(values, np.float64)
        words = token_words(tokenizer, self.tokens[: len(values)])
        return words.words, aggregate(values, words, how)


def attribute(
    model: Any,
    params: PyTree,
    tokens: Any,
    targets: Any = None,
    method: str | Sequence[str] = "ig",
    **options: Any,
) -> Explanation:
    """Explains a model's predictions on a text: diagnostics, attributions, attention, n-grams.

    Args:
      model: a registry model (:class:`~jaxlm.models.RecurrentLM`,
        :class:`~jaxlm.models.Transformer`) or a fitted
        :class:`~jaxlm.models.ngram.NGramModel`, e.g. from :func:`jaxlm.load_run`.
      params: the model's parameters (None for an n-gram model).
      tokens: ``[T]`` int token ids of the text, ``T >= 1``.
      targets: what to explain: None (the top token after the text), an int (that token after
        the text), a :class:`Target`, a list of them, ``"all"`` (the actual next token at
        every position, and the top token after the text), or ``["all", Target(-1, ...)]``
        (the actual next tokens, then the given targets). Positions count in the window
        explained (a longer text's last tokens, see ``window``).
      method: one of :data:`METHODS` or a sequence of them (an n-gram model supports only
        ``"occlusion"``; its back-off paths come with every explanation).
      **options: ``score`` ("logprob" or "logit", default "logprob"); ``steps`` (integrated
        gradients' nodes, default 64); ``baseline`` (None: the zero embedding, or a token id:
        its embedding; occlusion replaces tokens by it too); ``top_k`` (default 5); ``window``
        (recurrent models: attribute only the last ``window`` tokens, the earlier ones enter
        as the state at the window start; None: the whole text); ``carry`` (the state before
        the text; default the model's zero state); ``chunk`` (integrated-gradient rows
        computed at once, default 64); ``attention`` (Transformer: keep attention maps,
        default True); ``counts`` (n-gram: the training counts,
        :func:`~jaxlm.models.ngram.count_ngrams`, to show the counts behind each step).

    Returns:
      An :class:`Explanation`.

    Raises:
      ValueError: an empty text, an unknown method, score or option, a target outside the
        text or the vocabulary, a method the model cannot do.

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> model = RecurrentLM(vocab_size=11, embed_dim=8, hidden_sizes=(16,))
      >>> tokens = jnp.array([1, 2, 3, 4])
      >>> init = jax.jit(model.init)  # compiled once, not op by op
      >>> params = init(jax.random.key(0), tokens[None], model.initial_carry(1))["params"]
      >>> e = attribute(model, params, tokens, Target(-1, token=5), method=("ig", "gxi"), steps=32)
      >>> e.targets[0].attributions["ig"].shape, abs(e.targets[0].completeness_gap) < 0.01
      ((4,), True)
    """
    opts = _options(options)
    methods = (method,) if isinstance(method, str) else tuple(method)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method: unknown {m!r}; expected one of {METHODS}")
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size == 0:
        raise ValueError("tokens: the text is empty; give at least one token")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens: expected integer token ids, got dtype {tokens.dtype}")
    if isinstance(model, NGramModel):
        from jaxlm.explain.ngram import attribute_ngram

        return attribute_ngram(model, tokens, targets, methods, opts)
    if not isinstance(model, RecurrentLM | Transformer):
        raise ValueError(
            f"model: {type(model).__name__} is not a jaxlm model (RecurrentLM, Transformer or "
            "a fitted NGramModel)"
        )
    vocab = model.vocab_size
    _check_ids(tokens, vocab, "tokens")
    return _attribute_neural(model, params, tokens, targets, methods, opts)


_DEFAULTS = {
    "score": "logprob",
    "steps": 64,
    "baseline": None,
    "top_k": 5,
    "window": None,
    "carry": None,
    "chunk": None,
    "attention": True,
    "counts": None,
}


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"attribute: unknown option(s) {unknown}; expected {sorted(_DEFAULTS)}")
    opts = {**_DEFAULTS, **options}
    if opts["score"] not in SCORES:
        raise ValueError(f"score: unknown {opts['score']!r}; expected one of {SCORES}")
    for key in ("steps", "top_k", "chunk"):
        if opts[key] is not None and int(opts[key]) < 1:
            raise ValueError(f"{key}: must be >= 1, got {opts[key]}")
    if opts["window"] is not None and int(opts["window"]) < 1:
        raise ValueError(f"window: must be >= 1 or None, got {opts['window']}")
    return opts


def _check_ids(ids: np.ndarray, vocab: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"{what}: ids must be in [0, {vocab}), found {ids.min()}..{ids.max()}")


def resolve_targets(targets: Any, length: int, tokens: np.ndarray) -> list[Target]:
    """The targets as a list of :class:`Target` with non-negative positions.

    Args:
      targets: as :func:`attribute` takes them.
      length: T, the number of tokens.
      tokens: the tokens (``"all"`` explains each actual next token).

    Returns:
      A list of targets; ``token`` may still be None (the top token).

    Raises:
      ValueError: a position outside the text.

    Example:
      >>> [tuple(t) for t in resolve_targets("all", 3, np.array([4, 5, 6]))]
      [(0, 5, None), (1, 6, None), (2, None, None)]
    """
    if targets is None:
        out = [Target(length - 1)]
    elif isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets: unknown {targets!r}; expected 'all', a token or Targets")
        out = [Target(t, int(tokens[t + 1])) for t in range(length - 1)] + [Target(length - 1)]
    elif isinstance(targets, list | tuple) and targets and isinstance(targets[0], str):
        if targets[0] != "all":
            raise ValueError(f"targets: unknown {targets[0]!r}; expected 'all'")
        rest = [t if isinstance(t, Target) else Target(*t) for t in targets[1:]]
        out = [Target(t, int(tokens[t + 1])) for t in range(length - 1)] + rest
    elif isinstance(targets, int | np.integer):
        out = [Target(length - 1, int(targets))]
    elif isinstance(targets, Target):
        out = [targets]
    else:
        out = [t if isinstance(t, Target) else Target(*t) for t in targets]
    resolved = []
    for t in out:
        pos = t.position + length if t.position < 0 else t.position
        if not 0 <= pos < length:
            raise ValueError(f"targets: position {t.position} is outside the text of {length}")
        resolved.append(t._replace(position=pos))
    return resolved


# --------------------------------------------------------------------------------------------
# Neural models.


def _apply_fn(model: Any):
    """``f(params, emb_BxTxE, carry) -> (logits_BxTxV, new_carry)`` (the ids only give the
    shape: the inputs are the embeddings)."""

    def f(params, emb_BxTxE, carry):
        tokens = jnp.zeros(emb_BxTxE.shape[:2], jnp.int32)
        logits, new_carry, _ = model.apply(
            {"params": params}, tokens, carry, deterministic=True, embedded=emb_BxTxE
        )
        return logits.astype(jnp.float32), new_carry

    return f


def _embed(params: PyTree, ids: Any) -> jax.Array:
    return jnp.take(jnp.asarray(params["embed"]["embedding"], jnp.float32), ids, axis=0)


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _forward(model, params, emb, carry, next_ids, top_k: int):
    """Logits and diagnostics of one window in one program."""
    f = _apply_fn(model)
    logits, new_carry = f(params, emb[None], carry)
    logits = logits[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    top_lp, top_ids = jax.lax.top_k(logp, top_k)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1) / LOG2
    actual = jnp.take_along_axis(logp, next_ids[:, None], axis=-1)[:, 0]
    rank = 1 + jnp.sum(logp > actual[:, None], axis=-1)
    return logits, new_carry, top_ids, jnp.exp(top_lp), entropy, actual, rank


def _in_chunks(block, xs: PyTree, chunk: int) -> PyTree:
    """``block`` (rows of a chunk -> results per row) over all rows of ``xs``, in as few chunks
    of at most ``chunk`` rows as possible, of equal size (the last row repeated to fill them),
    through ``jax.lax.map``: one body compiled, however many rows."""
    rows = jax.tree.leaves(xs)[0].shape[0]
    count = -(-rows // chunk)
    size = -(-rows // count)
    if count == 1:
        return block(xs)
    pad = count * size - rows
    xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]), xs)
    xs = jax.tree.map(lambda a: a.reshape(count, size, *a.shape[1:]), xs)
    out = jax.lax.map(block, xs)
    return jax.tree.map(lambda a: a.reshape(count * size, *a.shape[2:])[:rows], out)


def _row_scores(logits_CxTxV, pos, tok, con, has_con, kind: str) -> jax.Array:
    """Each row's score at its own position: ``[C]``."""
    rows = logits_CxTxV[jnp.arange(logits_CxTxV.shape[0]), pos]
    s = jax.nn.log_softmax(rows, axis=-1) if kind == "logprob" else rows
    pick = jnp.take_along_axis(s, tok[:, None], axis=-1)[:, 0]
    other = jnp.take_along_axis(s, con[:, None], axis=-1)[:, 0]
    return pick - jnp.where(has_con, other, 0.0)


def _target_scores(logits_BxTxV, pos, tok, con, has_con, kind: str) -> jax.Array:
    """Every target's score on every row: ``[B, N]``."""
    rows = logits_BxTxV[:, pos]  # [B, N, V]
    s = jax.nn.log_softmax(rows, axis=-1) if kind == "logprob" else rows
    n = jnp.arange(pos.shape[0])
    return s[:, n, tok] - jnp.where(has_con, s[:, n, con], 0.0)


def _rows_dot(a: PyTree, b: PyTree) -> jax.Array:
    """Per-row sum of ``a * b`` over every leaf (leaves ``[C, ...]``): ``[C]``."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: (x * y).reshape(x.shape[0], -1), a, b))
    return sum((leaf.sum(-1) for leaf in leaves), jnp.zeros((jax.tree.leaves(a)[0].shape[0],)))


@functools.partial(jax.jit, static_argnames=("model", "kind", "chunk"))
def _integrated(
    model,
    params,
    emb,
    carry,
    base_emb,
    base_carry,
    alphas,
    weights,
    pos,
    tok,
    con,
    has_con,
    *,
    kind: str,
    chunk: int,
):
    """Integrated gradients (and the gradient at the input) of N targets in one program.

    ``alphas``/``weights`` are the S quadrature nodes on [0, 1], with 0 first and 1 last at
    weight 0: the first row's score is the baseline's, and the last row's gradient (at the input
    itself) gives gradient x input and saliency.

    Returns:
      ``ig [N, T]``, ``ig_carry [N]``, ``grad_dot_input [N, T]``, ``gxi_carry [N]``,
      ``grad_norm [N, T]``, ``carry_grad_norm [N]``, ``score [N]``, ``baseline_score [N]``.
    """
    f = _apply_fn(model)
    n, s = pos.shape[0], alphas.shape[0]
    delta = emb - base_emb
    dcarry = jax.tree.map(jnp.subtract, carry, base_carry)

    def block(args):
        # One chunk of (step, target) rows as the model's own batch: the rows are
        # independent, so the gradient of their sum is each row's gradient.
        a, p, y, c, hc = args
        x = base_emb[None] + a[:, None, None] * delta[None]
        h = jax.tree.map(lambda b, d: b + a[:, None] * d, base_carry, dcarry)

        def total(x, h):
            vals = _row_scores(f(params, x, h)[0], p, y, c, hc, kind)
            return vals.sum(), vals

        (_, vals), (gx, gh) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(x, h)
        rows = a.shape[0]
        full = jax.tree.map(lambda v: jnp.broadcast_to(v, (rows, *v.shape[1:])), carry)
        d_rows = jax.tree.map(lambda v: jnp.broadcast_to(v, (rows, *v.shape[1:])), dcarry)
        return (
            jnp.sum(gx * delta[None], -1),
            _rows_dot(gh, d_rows) if carry is not None else jnp.zeros((rows,)),
            jnp.sum(gx * emb[None], -1),
            _rows_dot(gh, full) if carry is not None else jnp.zeros((rows,)),
            jnp.linalg.norm(gx, axis=-1),
            jnp.sqrt(_rows_dot(gh, gh)) if carry is not None else jnp.zeros((rows,)),
            vals,
        )

    flat = (
        jnp.tile(alphas, n),
        jnp.repeat(pos, s),
        jnp.repeat(tok, s),
        jnp.repeat(con, s),
        jnp.repeat(has_con, s),
    )
    outs = _in_chunks(block, flat, chunk)
    outs = [o.reshape(n, s, *o.shape[1:]) for o in outs]
    ig_tok, ig_carry, gxi, gxi_carry, norm, carry_norm, vals = outs
    return (
        jnp.einsum("nst,s->nt", ig_tok, weights),
        ig_carry @ weights,
        gxi[:, -1],
        gxi_carry[:, -1],
        norm[:, -1],
        carry_norm[:, -1],
        vals[:, -1],
        vals[:, 0],
    )


@functools.partial(jax.jit, static_argnames=("model", "kind", "chunk", "with_carry"))
def _occlusion(
    model,
    params,
    emb,
    carry,
    base_emb,
    zero_carry,
    pos,
    tok,
    con,
    has_con,
    *,
    kind,
    chunk,
    with_carry,
):
    """``score(x) - score(x with token i at the baseline)`` for every token i and target, and
    for the carry set to zero: ``[N, T]``, ``[N]``, and the scores ``[N]``."""
    f = _apply_fn(model)
    t = emb.shape[0]

    def scores(x_CxTxE, h):  # every target's score on each row: [C, N]
        return _target_scores(f(params, x_CxTxE, h)[0], pos, tok, con, has_con, kind)

    full = scores(emb[None], carry)[0]

    def block(i_C):
        hide = (i_C[:, None] == jnp.arange(t)[None])[..., None]  # [C, T, 1]
        h = jax.tree.map(lambda v: jnp.broadcast_to(v, (i_C.shape[0], *v.shape[1:])), carry)
        return scores(jnp.where(hide, base_emb[None], emb[None]), h)

    per_token = _in_chunks(block, jnp.arange(t), chunk)  # [T, N]
    carry_drop = full - scores(emb[None], zero_carry)[0] if with_carry else jnp.zeros_like(full)
    return full[None] - per_token, carry_drop, full


@functools.partial(jax.jit, static_argnames=("model",))
def _run_prefix(model, params, tokens_T, carry):
    """The state after the tokens before the window."""
    _, new_carry, _ = model.apply({"params": params}, tokens_T[None], carry, deterministic=True)
    return new_carry


def default_chunk(length: int) -> int:
    """How many rows (interpolation steps x targets, or occluded copies) of ``length`` tokens
    one chunk computes: about 2,048 tokens on CPU, 65,536 on accelerators.

    On CPU a bigger batch does not run faster per row and its activations leave the caches:
    integrated gradients at 64 steps over 256 tokens of the Transformer recipe took 6.8 s in
    chunks of 8 rows, 11.0 s in 16 and 25.9 s in 64 (2 busy cores); the char LSTM 2.5 s in 16
    and 2.9 s in 64.

    Args:
      length: T, the window's tokens.

    Returns:
      The rows per chunk, at least 1.

    Example:
      >>> default_chunk(256) if jax.default_backend() == "cpu" else 8
      8
    """
    budget = 2048 if jax.default_backend() == "cpu" else 65536
    return max(1, budget // max(1, length))


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on ``[0, 1]`` (Captum's default rule for IG).

    Args:
      steps: the number of nodes.

    Returns:
      ``(alphas, weights)``, float32 ``[steps]`` each; the weights sum to 1.

    Example:
      >>> a, w = gauss_legendre(4)
      >>> round(float(w.sum()), 6), round(float((w * a**3).sum()), 6)  # exact: 1/4
      (1.0, 0.25)
    """
    x, w = np.polynomial.legendre.leggauss(int(steps))
    return ((x + 1) / 2).astype(np.float32), (w / 2).astype(np.float32)


def _attribute_neural(
    model: Any,
    params: PyTree,
    tokens: np.ndarray,
    targets: Any,
    methods: tuple[str, ...],
    opts: dict[str, Any],
) -> Explanation:
    notes: list[str] = []
    recurrent = isinstance(model, RecurrentLM)
    carry = opts["carry"] if opts["carry"] is not None else model.initial_carry(1)
    start = 0
    if recurrent:
        window = opts["window"]
        if window is not None and len(tokens) > window:
            start = len(tokens) - int(window)
            carry = _run_prefix(model, params, jnp.asarray(tokens[:start], jnp.int32), carry)
    else:
        carry = None
        limit = model.context_window
        if limit is not None and len(tokens) > limit:
            start = len(tokens) - limit
            notes.append(
                f"the text's {len(tokens)} tokens exceed the Transformer's context of {limit}: "
                f"the first {start} were cropped, the last {limit} explained"
            )
            warnings.warn(notes[-1], stacklevel=3)
    window_tokens = tokens[start:]
    t = len(window_tokens)
    f = model  # the jitted functions take the module as a static argument
    emb = _embed(params, window_tokens)
    next_ids = jnp.asarray(np.append(window_tokens[1:], 0), jnp.int32)
    top_k = min(int(opts["top_k"]), model.vocab_size)
    logits, _, top_ids, top_p, entropy, actual, rank = _forward(
        f, params, emb, carry, next_ids, top_k
    )
    top_ids = np.asarray(top_ids)
    actual = np.asarray(actual, np.float64)
    actual[-1] = np.nan
    rank = np.asarray(rank).astype(np.int64)
    rank[-1] = -1
    diagnostics = Diagnostics(
        top_ids=top_ids,
        top_probs=np.asarray(top_p, np.float64),
        entropy_bits=np.asarray(entropy, np.float64),
        actual_prob=np.exp(actual),
        actual_rank=rank,
        surprisal_bits=-actual / LOG2,
    )
    resolved = resolve_targets(targets, t, window_tokens)
    tok = np.array([top_ids[r.position, 0] if r.token is None else r.token for r in resolved])
    con = np.array([-1 if r.contrast is None else r.contrast for r in resolved])
    _check_ids(tok, model.vocab_size, "targets: token")
    _check_ids(con[con >= 0], model.vocab_size, "targets: contrast")
    pos = jnp.asarray([r.position for r in resolved], jnp.int32)
    has_con = jnp.asarray(con >= 0)
    tok_j, con_j = jnp.asarray(tok, jnp.int32), jnp.asarray(np.maximum(con, 0), jnp.int32)
    baseline = opts["baseline"]
    if baseline is None:
        base_emb = jnp.zeros_like(emb)
    else:
        _check_ids(np.array([baseline]), model.vocab_size, "baseline")
        base_emb = jnp.broadcast_to(_embed(params, jnp.asarray(baseline)), emb.shape)
    zero_carry = jax.tree.map(jnp.zeros_like, carry)
    kind = opts["score"]
    chunk = int(opts["chunk"]) if opts["chunk"] is not None else default_chunk(t)
    n = len(resolved)
    attrs: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    carry_attrs: list[dict[str, float]] = [{} for _ in range(n)]
    scores = baseline_scores = None
    grad_methods = [m for m in methods if m in ("ig", "gxi", "saliency")]
    if grad_methods:
        if "ig" in methods:
            # 0 and 1 with weight 0: the scores at the baseline and at the input, exactly
            alphas, weights = gauss_legendre(int(opts["steps"]))
            alphas = np.concatenate([[0.0], alphas, [1.0]]).astype(np.float32)
            weights = np.concatenate([[0.0], weights, [0.0]]).astype(np.float32)
        else:  # only the gradient at the input
            alphas, weights = np.ones(1, np.float32), np.zeros(1, np.float32)
        outs = _integrated(
            f,
            params,
            emb,
            carry,
            base_emb,
            zero_carry,
            jnp.asarray(alphas),
            jnp.asarray(weights),
            pos,
            tok_j,
            con_j,
            has_con,
            kind=kind,
            chunk=chunk,
        )
        ig, ig_c, gxi, gxi_c, norm, norm_c, vals, base_vals = (np.asarray(o) for o in outs)
        scores = vals
        if "ig" in methods:
            baseline_scores = base_vals
        per_method = {"ig": (ig, ig_c), "gxi": (gxi, gxi_c), "saliency": (norm, norm_c)}
        for m in grad_methods:
            tok_scores, carry_scores = per_method[m]
            for i, r in enumerate(resolved):
                attrs[i][m] = tok_scores[i, : r.position + 1].astype(np.float64)
                if recurrent:
                    carry_attrs[i][m] = float(carry_scores[i])
    if "occlusion" in methods:
        occ, occ_c, full = _occlusion(
            f,
            params,
            emb,
            carry,
            base_emb,
            zero_carry,
            pos,
            tok_j,
            con_j,
            has_con,
            kind=kind,
            chunk=chunk,
            with_carry=recurrent,
        )
        occ, occ_c = np.asarray(occ), np.asarray(occ_c)
        scores = np.asarray(full) if scores is None else scores
        for i, r in enumerate(resolved):
            attrs[i]["occlusion"] = occ[: r.position + 1, i].astype(np.float64)
            if recurrent:
                carry_attrs[i]["occlusion"] = float(occ_c[i])
    if scores is None:  # no method: the scores from the forward pass
        scores = np.asarray(_target_scores(logits[None], pos, tok_j, con_j, has_con, kind)[0])
    results = [
        TargetAttribution(
            position=r.position,
            token=int(tok[i]),
            contrast=None if con[i] < 0 else int(con[i]),
            score=float(scores[i]),
            baseline_score=None if baseline_scores is None else float(baseline_scores[i]),
            attributions=attrs[i],
            carry=carry_attrs[i],
        )
        for i, r in enumerate(resolved)
    ]
    attention = None
    if not recurrent and opts["attention"]:
        from jaxlm.explain.attention import attention_maps

        attention = attention_maps(model, params, window_tokens)
    options = {k: v for k, v in opts.items() if k not in ("carry", "counts")}
    return Explanation(
        tokens=window_tokens,
        start=start,
        model_kind="recurrent" if recurrent else "transformer",
        diagnostics=diagnostics,
        targets=results,
        methods=methods,
        options=options,
        attention=attention,
        warnings=notes,
    )
