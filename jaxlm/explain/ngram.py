"""N-gram explanations: which order supplied each probability, and the back-off path behind it.

A back-off model (:class:`~jaxlm.models.ngram.NGramModel`, the ARPA form) gives
``p(w | h) = p*(w | h)`` when the n-gram ``h w`` is stored, else ``gamma(h) p(w | h')`` with
``h'`` the context without its oldest token. The path of a token lists each order tried, from
the longest usable context down to the one that held the n-gram: the back-off weight paid at
each miss and the probability found, and, given the training counts
(:func:`~jaxlm.models.ngram.count_ngrams`), the raw counts of each n-gram and context. The
product along the path is the model's probability (:meth:`NGramModel.score` computes the same
with one ``searchsorted`` per order; this walks one token at a time, to show its steps).

This is the evidence question of a neural prediction too: ``--ngram=WORKDIR`` puts the n-gram
probability of the same token, and the order it came from, beside the neural one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.models.ngram import NGramCounts, NGramModel
from jaxlm.models.ngram.counts import find_row

LOG2 = math.log(2.0)


@dataclasses.dataclass
class NGramStep:
    """One order tried on a token's back-off path.

    Attributes:
      order: n, the n-gram's length (context ``order - 1`` tokens plus the token).
      context: the context's ids, oldest first (``<s>`` is the model's ``bos_id``).
      found: whether the model stores the n-gram ``context + token``.
      log_prob: ``log p*(token | context)`` (nats) where found, else None.
      log_backoff: ``log gamma(context)`` paid where not found (0 when the context itself is
        not stored); None where found.
      count: the raw training count of the n-gram, given counts; else None.
      context_count: the raw training count of the context, given counts (for the unigram step,
        the number of training tokens); else None.
    """

    order: int
    context: tuple[int, ...]
    found: bool
    log_prob: float | None
    log_backoff: float | None
    count: int | None = None
    context_count: int | None = None


@dataclasses.dataclass
class NGramToken:
    """How an n-gram model gave one token its probability.

    Attributes:
      position: the token's index in the text.
      token: its id.
      log_prob: ``log p(token | context)`` in nats, the product of the path.
      order: the order of the n-gram that supplied it (1: the unigram).
      backoffs: how many orders were tried and missed before it.
      path: the :class:`NGramStep` of each order tried, longest context first.
    """

    position: int
    token: int
    log_prob: float
    order: int
    backoffs: int
    path: list[NGramStep]

    @property
    def prob(self) -> float:
        """``p(token | context)``."""
        return math.exp(self.log_prob)

    def summary(self, order: int | None = None) -> str:
        """One line: "5-gram 0.02, from order 2 after two back-offs".

        Args:
          order: the model's order (shown as "N-gram"); default the path's longest.
        """
        n = order or self.path[0].order
        after = {0: "directly", 1: "after one back-off", 2: "after two back-offs"}.get(
            self.backoffs, f"after {self.backoffs} back-offs"
        )
        return f"{n}-gram {self.prob:.3g}, from order {self.order} {after}"


def context_before(model: NGramModel, tokens: Sequence[int], position: int) -> list[int]:
    """The context an n-gram model predicts the token at ``position`` from.

    The up to ``N - 1`` tokens before it in its sentence, after ``<s>`` when the model adds it
    (a sentence starts at the text's start and after each ``eos_id``), as
    :meth:`NGramModel.score` reads them. ``position == len(tokens)``: the context after the
    text.

    Args:
      model: the model.
      tokens: the text's ids.
      position: ``0 .. len(tokens)``.

    Returns:
      The context's ids, oldest first.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> model = build(np.array([2, 3, 0, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> context_before(model, [2, 3, 0, 4], 1), context_before(model, [2, 3, 0, 4], 3)
      ([5, 2], [5])
    """
    return [
        int(tokens[j]) if j >= 0 else model.bos_id
        for j in _context_positions(model, tokens, position)
    ]


def _context_positions(model: NGramModel, tokens: Sequence[int], position: int) -> list[int]:
    """The text positions of :func:`context_before`'s ids (-1 for ``<s>``)."""
    out: list[int] = []
    j = position - 1
    while j >= 0 and len(out) < model.order - 1:
        if model.eos_id is not None and int(tokens[j]) == model.eos_id:
            break
        out.append(j)
        j -= 1
    at_start = j < 0 or (model.eos_id is not None and int(tokens[j]) == model.eos_id)
    if model.add_bos and at_start and len(out) < model.order - 1:
        out.append(-1)
    return out[::-1]


def _count(counts: NGramCounts, words: Sequence[int]) -> int:
    """The raw count of an n-gram in the count tables (0 when never seen)."""
    row = find_row(counts.keys, counts.vocab_size, words)
    return 0 if row < 0 else int(counts.counts[len(words) - 1][row])


def backoff_path(
    model: NGramModel,
    context: Sequence[int],
    token: int,
    counts: NGramCounts | None = None,
) -> list[NGramStep]:
    """Every order tried for ``p(token | context)``, longest context first.

    Args:
      model: the model.
      context: ids before the token, oldest first (only the last ``N - 1`` are used).
      token: the predicted id.
      counts: the training counts, to fill the steps' ``count`` and ``context_count``.

    Returns:
      The steps; the last is the one found (the unigram always is).

    Example:
      >>> from jaxlm.models.ngram import build
      >>> model = build(np.array([2, 3, 0, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> [(s.order, s.found) for s in backoff_path(model, [model.bos_id, 3], 4)]
      [(3, False), (2, False), (1, True)]
    """
    ctx = [int(c) for c in context][-(model.order - 1) :] if model.order > 1 else []
    steps = []
    for n in range(len(ctx) + 1, 0, -1):
        c = tuple(ctx[len(ctx) - (n - 1) :]) if n > 1 else ()
        row = find_row(model.keys, model.vocab_size, [*c, token])
        step_counts: dict[str, Any] = {}
        if counts is not None:
            step_counts = {
                "count": _count(counts, [*c, token]),
                "context_count": _count(counts, c) if c else int(counts.counts[0].sum()),
            }
        if row >= 0 and np.isfinite(model.log_probs[n - 1][row]):
            steps.append(
                NGramStep(n, c, True, float(model.log_probs[n - 1][row]), None, **step_counts)
            )
            break
        back = 0.0
        if c:
            crow = find_row(model.keys, model.vocab_size, c)
            if crow >= 0:
                back = float(model.log_backoffs[n - 2][crow])
        steps.append(NGramStep(n, c, False, None, back, **step_counts))
    return steps


def explain_ngram(
    model: NGramModel, tokens: Sequence[int], counts: NGramCounts | None = None
) -> list[NGramToken]:
    """The back-off path of every token of a text.

    Args:
      model: the model.
      tokens: the text's ids.
      counts: the training counts (optional), to show the counts behind each step.

    Returns:
      One :class:`NGramToken` per token; their ``log_prob`` equal :meth:`NGramModel.score`'s.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> model = build(np.array([2, 3, 0, 2, 4, 0]), vocab_size=5, order=3, eos_id=0)
      >>> [(t.order, t.backoffs) for t in explain_ngram(model, [2, 4, 0])]
      [(2, 0), (3, 0), (3, 0)]
    """
    out = []
    for j, w in enumerate(tokens):
        path = backoff_path(model, context_before(model, tokens, j), int(w), counts)
        found = path[-1]
        total = found.log_prob + sum(s.log_backoff for s in path[:-1])
        out.append(NGramToken(j, int(w), total, found.order, len(path) - 1, path))
    return out


def attribute_ngram(
    model: NGramModel, tokens: np.ndarray, targets: Any, methods: tuple[str, ...], opts: dict
) -> Any:
    """:func:`jaxlm.explain.attribute` for an n-gram model: diagnostics, back-off paths and
    occlusion (a token replaced by ``baseline``; None: by a token never seen, which cuts the
    context there)."""
    from jaxlm.explain.core import Diagnostics, Explanation, TargetAttribution, resolve_targets

    unsupported = [m for m in methods if m != "occlusion"]
    if unsupported:
        raise ValueError(
            f"method: {unsupported} need gradients; an n-gram model has none (use occlusion; "
            "its back-off paths come with every explanation)"
        )
    if tokens.min() < 0 or tokens.max() >= model.vocab_size:
        raise ValueError(f"tokens: ids must be in [0, {model.vocab_size})")
    t, k = len(tokens), min(int(opts["top_k"]), model.vocab_size)
    logps = np.stack([model.next_log_probs(context_before(model, tokens, j + 1)) for j in range(t)])
    top_ids = np.argsort(-logps, axis=-1, kind="stable")[:, :k]
    p = np.exp(logps)
    entropy = -np.sum(np.where(p > 0, p * logps, 0.0), axis=-1) / LOG2
    actual = np.full(t, np.nan)
    actual[:-1] = logps[np.arange(t - 1), tokens[1:]]
    rank = np.full(t, -1, np.int64)
    rank[:-1] = 1 + np.sum(logps[:-1] > actual[:-1, None], axis=-1)
    diagnostics = Diagnostics(
        top_ids=top_ids,
        top_probs=np.take_along_axis(p, top_ids, -1),
        entropy_bits=entropy,
        actual_prob=np.exp(actual),
        actual_rank=rank,
        surprisal_bits=-actual / LOG2,
    )
    baseline = opts["baseline"]
    results = []
    for r in resolve_targets(targets, t, tokens):
        tok = int(top_ids[r.position, 0]) if r.token is None else int(r.token)
        for what, v in (("token", tok), ("contrast", r.contrast)):
            if v is not None and not 0 <= v < model.vocab_size:
                raise ValueError(f"targets: {what} {v} is outside [0, {model.vocab_size})")

        def score(ctx: list[int], tok: int = tok, con: int | None = r.contrast) -> float:
            lp = model.next_log_probs(ctx)
            return float(lp[tok] - (lp[con] if con is not None else 0.0))

        where = _context_positions(model, tokens, r.position + 1)
        ctx = [int(tokens[j]) if j >= 0 else model.bos_id for j in where]
        full = score(ctx)
        attrs: dict[str, np.ndarray] = {}
        if "occlusion" in methods:
            occ = np.zeros(r.position + 1)  # tokens outside the context cannot matter
            for c, i in enumerate(where):
                if i < 0:
                    continue
                if baseline is None:  # an unseen token: no stored n-gram spans it
                    changed = ctx[c + 1 :]
                else:
                    changed = ctx[:c] + [int(baseline)] + ctx[c + 1 :]
                occ[i] = full - score(changed)
            attrs["occlusion"] = occ
        results.append(TargetAttribution(r.position, tok, r.contrast, full, None, attrs, {}))
    options = {key: v for key, v in opts.items() if key not in ("carry", "counts")}
    options["ngram_order"] = model.order
    return Explanation(
        tokens=tokens,
        start=0,
        model_kind="ngram",
        diagnostics=diagnostics,
        targets=results,
        methods=methods,
        options=options,
        ngram=explain_ngram(model, tokens, opts["counts"]),
    )
