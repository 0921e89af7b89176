"""Evaluation as sums and counts: the loss over a whole split, added up before dividing.

:class:`Evaluator` compiles one evaluation window for a model on a mesh and walks a split's
streams, carrying a recurrent model's state from window to window; :func:`summarize` (from
:mod:`jaxlm.train.summary`, which needs no JAX) turns a ``(loss_sum, count)`` into nats, bits and
perplexity for every model kind (n-grams too);
:func:`evaluate_run` evaluates a saved run, what ``python -m jaxlm.evaluate`` prints.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm import runtime, sharding
from jaxlm.data import batching
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.train.steps import make_eval_step
from jaxlm.train.summary import LN2, summarize

__all__ = ["LN2", "SPLITS", "Evaluator", "evaluate", "evaluate_run", "summarize"]
SPLITS = ("validation", "test")


class Evaluator:
    """The loss of a model over token streams, window by window, summed before dividing.

    The window step is compiled once (with the model's compiler options) and reused for every
    split and every evaluation of a run.

    Attributes:
      step: the jitted window, ``step(params, carry, sums, batch) -> (carry, sums)``.

    Args:
      model: a jaxlm model.
      mesh: the device mesh; the batch is split over "data".
      batch_size: parallel streams (a multiple of the data axis).
      seq_len: window length.

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> model = RecurrentLM(vocab_size=10, embed_dim=4, hidden_sizes=(8,))
      >>> params = model.init(jax.random.key(0), np.zeros((2, 4), np.int32),
      ...                     model.initial_carry(2))["params"]
      >>> evaluator = Evaluator(model, sharding.make_mesh(1, 1), batch_size=2, seq_len=4)
      >>> evaluator(params, np.arange(40) % 10)["tokens"]
      39.0
    """

    def __init__(self, model: Any, mesh: Any, *, batch_size: int, seq_len: int):
        self.model, self.mesh = model, mesh
        self.batch_size, self.seq_len = batch_size, seq_len
        batch = sharding.batch_sharding(mesh)
        # Made by a jitted function, not device_put of a local array (that would be a
        # cross-host transfer on several processes).
        self._initial_carry = jax.jit(
            functools.partial(model.initial_carry, batch_size), out_shardings=batch
        )
        self.step = jax.jit(
            make_eval_step(model),
            out_shardings=(batch, sharding.replicated(mesh)),
            compiler_options=runtime.compiler_options(model),
        )

    def sums(self, params: Any, tokens: np.ndarray, max_windows: int = 0) -> tuple[float, float]:
        """``(loss_sum, count)`` over a split (or its first ``max_windows`` windows)."""
        streams = batching.make_streams(tokens, self.batch_size, pad_to=self.seq_len)
        carry = self._initial_carry()
        sums = jax.device_put((np.float32(0), np.float32(0)), sharding.replicated(self.mesh))
        for i, batch in enumerate(batching.eval_batches(streams, self.seq_len)):
            if max_windows and i >= max_windows:
                break
            batch.pop("reset")
            carry, sums = self.step(params, carry, sums, sharding.device_batch(batch, self.mesh))
            if runtime.serialise_steps(self.mesh):
                jax.block_until_ready(sums)
        return float(sums[0]), float(sums[1])

    def __call__(
        self,
        params: Any,
        tokens: np.ndarray,
        max_windows: int = 0,
        counts: dict[str, int] | None = None,
    ) -> dict[str, float]:
        """Loss, bits, perplexity and token count over a split (see :func:`summarize`); per
        word and per byte too when ``counts`` (the split's ``{"words", "bytes"}``,
        ``Corpus.counts[split]``) are given and the whole split was evaluated."""
        total, count = self.sums(params, tokens, max_windows)
        if count <= 0:
            raise ValueError(
                f"evaluated no tokens ({len(tokens)} tokens in the split, max_windows="
                f"{max_windows}, batch_size={self.batch_size}, seq_len={self.seq_len})"
            )
        whole = counts and int(count) == len(tokens) - 1
        return summarize(total, count, **(counts if whole else {}))


@functools.lru_cache(maxsize=8)
def _evaluator(model: Any, mesh: Any, batch_size: int, seq_len: int) -> Evaluator:
    return Evaluator(model, mesh, batch_size=batch_size, seq_len=seq_len)


def evaluate(
    model: Any,
    params: Any,
    tokens: np.ndarray,
    mesh: Any,
    *,
    batch_size: int,
    seq_len: int,
    max_windows: int = 0,
    counts: dict[str, int] | None = None,
) -> dict[str, float]:
    """Loss over a whole split (or its first ``max_windows`` windows), summed before dividing.

    Repeated calls with the same model, mesh and shapes reuse one compiled :class:`Evaluator`.

    Args:
      model: a jaxlm model.
      params: its parameters.
      tokens: the split's token ids.
      mesh: the device mesh.
      batch_size: number of parallel streams.
      seq_len: window length.
      max_windows: stop after this many windows (0: the whole split).
      counts: the split's ``{"words", "bytes"}`` (``Corpus.counts[split]``): the whole
        split's loss per word and per byte too.

    Returns:
      ``loss`` (nats per token), ``bits`` (bits per token), ``perplexity`` and ``tokens``
      (and with ``counts``, see :func:`summarize`).

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> model = RecurrentLM(vocab_size=10, embed_dim=4, hidden_sizes=(8,))
      >>> params = model.init(jax.random.key(0), np.zeros((4, 4), np.int32),
      ...                     model.initial_carry(4))["params"]
      >>> r = evaluate(model, params, np.arange(99) % 10, sharding.make_mesh(), batch_size=4,
      ...              seq_len=8)
      >>> r["tokens"], round(r["perplexity"])  # an untrained model: about the vocabulary size
      (98.0, 10)
    """
    return _evaluator(model, mesh, batch_size, seq_len)(params, tokens, max_windows, counts)


def _data_parallel_size(batch_size: int, model: int, devices: int) -> int:
    """The largest data-parallel size that fits the devices and divides the batch."""
    return max(d for d in range(1, devices // model + 1) if batch_size % d == 0)


def evaluate_run(
    path: str | Path, *, step: int | None = None, split: str = "validation"
) -> dict[str, Any]:
    """Loss, bits and perplexity of a saved run over a whole split of its corpus.

    Works for every model of the registry: a neural run's checkpoint (NT-ASGD runs with their
    averaged parameters, as the trainer evaluates them) or an n-gram run's ``model.npz``.

    Args:
      path: a run folder (its latest checkpoint, or ``step``), its ``checkpoints/`` folder, one
        ``<workdir>/checkpoints/<step>`` folder, or an n-gram run's folder.
      step: which checkpoint of a run folder.
      split: ``"validation"`` or ``"test"``.

    Returns:
      ``loss`` (nats per token), ``bits``, ``perplexity``, ``tokens``; the same per word and
      per byte of the split's text (``loss_per_word``, ``bits_per_byte``, ... see
      :func:`summarize`), so runs with different tokenizers compare; plus ``checkpoint``
      (what was read), ``step``, ``split`` and ``unit`` (what a token is: char, byte, word or
      token).

    Example:
      >>> evaluate_run("runs/lstm_smoke", split="test")["perplexity"]  # doctest: +SKIP
      32.26
    """
    from jaxlm import checkpoints, data

    if split not in SPLITS:
        raise ConfigError(f"split: {split!r}; expected one of {SPLITS}")
    if checkpoints.is_ngram_run(path):
        read, step = checkpoints.absolute(path) / checkpoints.layout.NGRAM_MODEL, None
        run = checkpoints.load_run(path)
    else:
        read = checkpoints.resolve(path, step)
        step = checkpoints.layout.step_of(read)
        run = checkpoints.load_run(read)
    if run.tokenizer is None:
        raise CheckpointError(
            f"{read}: its tokenizer is not one jaxlm can read (a GPT-2 converted from a folder "
            "without vocab.json + merges.txt or tokenizer.json?); convert it again from a "
            "folder that has them"
        )
    corpus = data.load_corpus(run.config.data, run.tokenizer)
    tokens, counts = corpus.split(split), corpus.counts[split]
    if run.params is None:  # an n-gram model scores on the host
        result = summarize(*run.model.nll(tokens), **counts)
    else:
        batch_size = run.config.data.eval_batch_size
        n_model = run.config.parallel.model or 1
        mesh = sharding.make_mesh(
            _data_parallel_size(batch_size, n_model, jax.device_count()), n_model
        )
        rules = sharding.parallel_rules(run.config.parallel)
        params = jax.device_put(run.params, sharding.rule_shardings(run.params, mesh, rules))
        with jax.set_mesh(mesh):
            evaluator = Evaluator(
                run.model, mesh, batch_size=batch_size, seq_len=run.config.data.seq_len
            )
            result = evaluator(params, tokens, counts=counts)
    return dict(result, checkpoint=str(read), step=step, split=split, unit=run.tokenizer.unit)
