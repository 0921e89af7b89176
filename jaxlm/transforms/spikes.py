"""Loss spikes and gradient-norm explosions, detected in the optimizer and optionally skipped.

:func:`guard_spikes` wraps an optimizer. Each ``update`` receives the step's loss as the extra
argument ``loss=`` (the train step passes it when the optimizer state holds a
:class:`SpikeGuardState`: :func:`wants_loss`) and computes the global norm of the incoming
gradients itself. After a warm-up it compares both with their moving averages (bias-corrected
exponential averages, updated on normal steps only, so a spike does not raise the bar for the
next one): a loss above ``loss_factor`` times its average, or a gradient norm above
``grad_factor`` times its average, is flagged. With ``skip=True`` a flagged step applies no
update and leaves the wrapped optimizer's state as it was (``optax.apply_if_finite``'s way);
else the update goes through and the flag is only reported (the loop warns, or rolls back:
:mod:`jaxlm.train.health`).

What ours adds to ``optax.apply_if_finite`` (which skips non-finite updates): the criterion is
relative to the run's own recent history, the factors may be traced values (a run's
hyperparameters, :mod:`jaxlm.train.hparams`), and the averages live in the optimizer state, so
a resumed run judges every step as the uninterrupted one did.

A level the loss keeps (the data changed, the learning rate rose) is not a spike for ever:
after ``max_consecutive`` flagged steps in a row the step is taken as normal (applied, and the
averages restart from it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.tree import find_states


class SpikeGuardState(NamedTuple):
    """State of :func:`guard_spikes`.

    Attributes:
      loss_avg: the moving average of the loss, before bias correction (float32).
      grad_avg: the same of the gradient's global norm.
      count: normal steps averaged so far (int32).
      consecutive: flagged steps in a row (int32).
      loss_spike: whether the last step's loss was flagged (bool).
      grad_spike: whether the last step's gradient norm was flagged (bool).
      skipped: steps whose update was skipped, in total (int32).
      inner_state: the wrapped optimizer's state.
    """

    loss_avg: jax.Array
    grad_avg: jax.Array
    count: jax.Array
    consecutive: jax.Array
    loss_spike: jax.Array
    grad_spike: jax.Array
    skipped: jax.Array
    inner_state: Any


def guard_spikes(
    inner: optax.GradientTransformation,
    *,
    loss_factor: float | jax.Array = 0.0,
    grad_factor: float | jax.Array = 0.0,
    warmup: int = 50,
    decay: float = 0.99,
    skip_loss: bool = False,
    skip_grad: bool = False,
    max_consecutive: int = 10,
) -> optax.GradientTransformationExtraArgs:
    """Flags (and optionally skips) steps whose loss or gradient norm jumps above its average.

    Args:
      inner: the optimizer to guard.
      loss_factor: a loss above this times its moving average is a spike; 0: not checked
        (a Python 0 leaves the check out of the program; a traced 0 switches it off).
      grad_factor: the same for the gradient's global norm.
      warmup: normal steps averaged before anything is flagged.
      decay: the moving averages' decay per normal step, in [0, 1).
      skip_loss: a loss spike applies no update (zero updates, ``inner``'s state kept).
      skip_grad: the same for a gradient-norm spike.
      max_consecutive: flagged steps in a row after which a step is taken as the new normal.

    Returns:
      A transformation whose ``update`` takes ``loss=`` (a scalar; None: nothing is checked
      or averaged), with :class:`SpikeGuardState`.

    Example:
      >>> tx = guard_spikes(optax.sgd(1.0), loss_factor=2.0, warmup=2, skip_loss=True)
      >>> params = {"w": jnp.zeros(1)}
      >>> state = tx.init(params)
      >>> for loss in [1.0, 1.0, 5.0]:
      ...     updates, state = tx.update({"w": jnp.ones(1)}, state, params, loss=loss)
      >>> bool(state.loss_spike), updates["w"].tolist(), int(state.skipped)
      (True, [0.0], 1)
    """
    if not (0.0 <= decay < 1.0 and warmup >= 0 and max_consecutive >= 1):
        raise ValueError(
            "guard_spikes: need 0 <= decay < 1, warmup >= 0 and max_consecutive >= 1; got "
            f"{decay}, {warmup}, {max_consecutive}"
        )
    inner = optax.with_extra_args_support(inner)
    check_loss = not _off(loss_factor)
    check_grad = not _off(grad_factor)

    def init_fn(params):
        zero = jnp.zeros((), jnp.float32)
        return SpikeGuardState(
            loss_avg=zero,
            grad_avg=zero,
            count=jnp.zeros((), jnp.int32),
            consecutive=jnp.zeros((), jnp.int32),
            loss_spike=jnp.zeros((), bool),
            grad_spike=jnp.zeros((), bool),
            skipped=jnp.zeros((), jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, *, loss=None, **extra_args):
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        if loss is None:
            return new_updates, state._replace(inner_state=new_inner)
        loss = jnp.asarray(loss, jnp.float32)
        norm = optax.tree.norm(updates).astype(jnp.float32)
        correction = 1.0 - jnp.asarray(decay, jnp.float32) ** jnp.maximum(state.count, 1)
        armed = state.count >= warmup
        loss_spike = jnp.zeros((), bool)
        grad_spike = jnp.zeros((), bool)
        # (a traced factor of 0 is off too: a population's member without the check)
        if check_loss:
            bar = loss_factor * state.loss_avg / correction
            loss_spike = armed & (loss_factor > 0) & (loss > bar)
        if check_grad:
            bar = grad_factor * state.grad_avg / correction
            grad_spike = armed & (grad_factor > 0) & (norm > bar)
        flagged = loss_spike | grad_spike
        consecutive = jnp.where(flagged, state.consecutive + 1, 0)
        give_in = consecutive > max_consecutive  # a new level: take it, average afresh
        skip = ((loss_spike & skip_loss) | (grad_spike & skip_grad)) & ~give_in
        finite = jnp.isfinite(loss) & jnp.isfinite(norm)
        average = (~flagged | give_in) & finite
        fresh = give_in | (state.count == 0)

        def mix(avg, x):
            return jnp.where(fresh, (1.0 - decay) * x, decay * avg + (1.0 - decay) * x)

        count = jnp.where(give_in, 1, state.count + 1)
        new_state = SpikeGuardState(
            loss_avg=jnp.where(average, mix(state.loss_avg, loss), state.loss_avg),
            grad_avg=jnp.where(average, mix(state.grad_avg, norm), state.grad_avg),
            count=jnp.where(average, count, state.count).astype(jnp.int32),
            consecutive=jnp.where(give_in, 0, consecutive).astype(jnp.int32),
            loss_spike=loss_spike,
            grad_spike=grad_spike,
            skipped=(state.skipped + skip.astype(jnp.int32)).astype(jnp.int32),
            inner_state=jax.tree.map(
                lambda new, old: jnp.where(skip, old, new), new_inner, state.inner_state
            ),
        )
        new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _off(factor: float | jax.Array) -> bool:
    """A Python 0: the check is left out of the program (a traced factor is always on)."""
    return isinstance(factor, int | float) and factor <= 0


def wants_loss(opt_state: Any) -> bool:
    """Whether an optimizer state holds a :class:`SpikeGuardState` (its ``update`` takes
    ``loss=``); known at trace time, from the state's structure.

    Args:
      opt_state: an optimizer state (or its abstract tree).

    Returns:
      True when the train step must pass the loss to ``update``.

    Example:
      >>> wants_loss(optax.sgd(0.1).init({"w": jnp.ones(2)}))
      False
    """
    return bool(find_states(opt_state, SpikeGuardState))


def spike_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """What a train step reports of the guard: ``loss_spike`` and ``grad_spike`` (1.0 or 0.0:
    whether this step was flagged) and ``skipped_spikes`` (the total); ``{}`` without a guard.

    Args:
      opt_state: the optimizer state after the step.

    Returns:
      float32 scalars by name.

    Example:
      >>> spike_metrics(optax.sgd(0.1).init({"w": jnp.ones(2)}))
      {}
    """
    found = find_states(opt_state, SpikeGuardState)
    if not found:
        return {}
    s = found[0]
    return {
        "loss_spike": s.loss_spike.astype(jnp.float32),
        "grad_spike": s.grad_spike.astype(jnp.float32),
        "skipped_spikes": s.skipped.astype(jnp.float32),
    }
