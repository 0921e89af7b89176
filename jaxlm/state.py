"""The training state, and the one builder of it from a config that training, checkpoint reading
and weight conversion share.

:func:`build` turns a config and a vocabulary size into the model, the optimizer (built from the
abstract parameter tree) and a pure ``init`` function, so that ``jax.eval_shape(init)`` is the
exact tree a checkpoint of that config holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlm import optim, precision
from jaxlm.models import get_model
from jaxlm.precision import Policy


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, step, base RNG key and the recurrent carry.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the model parameters (a plain nested dict).
      opt_state: the optax state (schedule counts, moments, loss scale, unfreeze progress).
      rng: the run's base key (raw uint32[2]); step ``s`` uses ``fold_in(rng, s)``.
      carry: the recurrent state carried from window to window (None for Transformers).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    carry: Any


FIELDS = tuple(f.name for f in dataclasses.fields(TrainState))


def make_init_fn(
    model: nn.Module, tx: optax.GradientTransformation, batch_size: int, seq_len: int, seed: int
) -> Callable[..., TrainState]:
    """A pure function to a fresh TrainState (to ``jax.eval_shape`` or ``jax.jit``).

    Args:
      model: a jaxlm model.
      tx: the optimizer.
      batch_size: B, for the carry and the init tokens.
      seq_len: T, for the init tokens.
      seed: the run's seed; ``PRNGKey(seed)`` splits into the init key and the base key.

    Returns:
      ``init(params=None)``: with no argument, freshly initialised parameters; with
      ``params`` (e.g. pretrained ones), those, with a fresh optimizer state for them.

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> model = RecurrentLM(vocab_size=10, embed_dim=4, hidden_sizes=(8,))
      >>> init = make_init_fn(model, optax.sgd(0.1), batch_size=2, seq_len=3, seed=0)
      >>> jax.eval_shape(init).params["head"]["kernel"].shape
      (8, 10)
    """

    def init(params: Any = None) -> TrainState:
        init_key, base_key = jax.random.split(jax.random.PRNGKey(seed))
        carry = model.initial_carry(batch_size)
        if params is None:
            tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
            params = model.init(init_key, tokens, carry)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=base_key,
            carry=carry,
        )

    return init


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config builds: the model, its optimizer and the state's init function.

    Attributes:
      model: the flax module (:func:`jaxlm.models.get_model`).
      tx: the optimizer, loss-scaled for float16 policies.
      policy: the dtype policy.
      init: ``init(params=None) -> TrainState``, pure (see :func:`make_init_fn`).
      abstract: ``jax.eval_shape(init)``: the state's tree of shapes and dtypes.
      optimizer_for: ``optimizer_for(hparams) -> (tx, schedule)``: the same optimizer (the
        same state tree) and its learning rate per training step, built from continuous
        hyperparameters that may be traced values (:mod:`jaxlm.train.hparams`); None for a
        Setup built by hand.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    policy: Policy
    init: Callable[..., TrainState]
    abstract: TrainState
    optimizer_for: (
        Callable[[Mapping[str, Any]], tuple[optax.GradientTransformation, Any]] | None
    ) = None


def build(config: ml_collections.ConfigDict, vocab_size: int) -> Setup:
    """Builds the model, the optimizer and the state's init function that a run config describes.

    The fine-tuning preset's model settings apply (:func:`jaxlm.optim.prepare_config`), and the
    optimizer is built from the abstract parameter tree, so every preset knows the model's
    layout before anything is allocated.

    Args:
      config: a run config of a neural model.
      vocab_size: the tokenizer's vocabulary size.

    Returns:
      A :class:`Setup`.

    Example:
      >>> from jaxlm.config import load_config
      >>> setup = build(load_config("lstm:smoke"), vocab_size=50)
      >>> setup.abstract.params["embed"]["embedding"].shape
      (50, 32)
    """
    policy = Policy.from_string(config.precision)
    model = get_model(optim.prepare_config(config).model, vocab_size, policy)
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    params = jax.eval_shape(make_init_fn(model, optax.identity(), batch_size, seq_len, 0)).params
    tx = precision.wrap_optimizer(optim.build_optimizer(config, params), policy)
    init = make_init_fn(model, tx, batch_size, seq_len, config.seed)

    def optimizer_for(hparams: Mapping[str, Any]) -> tuple[optax.GradientTransformation, Any]:
        built = optim.build_optimizer(config, params, hparams)
        rate = optim.learning_rate(config, hparams.get("optimizer.learning_rate"))
        return precision.wrap_optimizer(built, policy), rate

    return Setup(
        model=model,
        tx=tx,
        policy=policy,
        init=init,
        abstract=jax.eval_shape(init),
        optimizer_for=optimizer_for,
    )
