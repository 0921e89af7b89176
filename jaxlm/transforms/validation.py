"""Transforms driven by the validation loss: reduce-on-plateau and AWD-LSTM's NT-ASGD.

Both keep their whole logic in the optimizer state, so the loop only has to hand each
validation loss to :func:`report_validation_loss`, a pure function of the optimizer state that
finds these states wherever they sit inside chains, masks, ``MultiSteps`` or
``apply_if_finite`` wrappers (and leaves the state untouched when there are none).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.tree import find_states, is_node

PyTree = Any


class PlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`, hyper-parameters included so it is self-describing."""

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    factor: jax.Array
    patience: jax.Array
    rtol: jax.Array
    atol: jax.Array
    cooldown: jax.Array
    min_scale: jax.Array


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    min_scale: float = 0.0,
) -> optax.GradientTransformation:
    """Scales updates by a factor that shrinks when the validation loss stops improving.

    The plateau arithmetic is ``optax.contrib.reduce_on_plateau``'s with ``accumulation_size=1``
    (tests check they agree value for value). What ours adds: optax's takes the metric as an
    extra argument of every ``update``, i.e. the training loss of each batch; here ``update``
    needs nothing extra (it composes with any chain) and the validation loss is handed over
    between steps with :func:`report_validation_loss`, once per evaluation.

    Args:
      factor: multiply the scale by this after ``patience`` evaluations without improvement.
      patience: evaluations without improvement before reducing.
      rtol: relative improvement needed: ``loss < (1 - rtol) * best - atol``.
      atol: absolute improvement needed.
      cooldown: evaluations to wait after a reduction before counting again.
      min_scale: the scale never goes below this.

    Returns:
      An ``optax.GradientTransformation`` with :class:`PlateauState`; chain it after the update
      rule, and before :func:`nt_asgd` when both are used (NT-ASGD must see the scaled updates).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), reduce_on_plateau(factor=0.5, patience=1))
      >>> params = {"w": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> for loss in [3.0, 3.0]:
      ...     state = report_validation_loss(state, loss)
      >>> updates, state = tx.update(params, state)
      >>> updates["w"]
      Array([-0.5, -0.5], dtype=float32)

    References:
      PyTorch ``torch.optim.lr_scheduler.ReduceLROnPlateau``; optax
      ``optax.contrib.reduce_on_plateau``.
    """
    if not 0.0 < factor < 1.0:
        raise ValueError(f"reduce_on_plateau: factor must be in (0, 1), got {factor}")
    if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0) or rtol > 1:
        raise ValueError(
            f"reduce_on_plateau: need 0 <= rtol <= 1, atol >= 0, one positive: "
            f"rtol={rtol} atol={atol}"
        )

    def init_fn(params: PyTree) -> PlateauState:
        del params
        f32, i32 = jnp.float32, jnp.int32
        return PlateauState(
            scale=jnp.ones([], f32),
            best_value=jnp.asarray(jnp.inf, f32),
            plateau_count=jnp.zeros([], i32),
            cooldown_count=jnp.zeros([], i32),
            factor=jnp.asarray(factor, f32),
            patience=jnp.asarray(patience, i32),
            rtol=jnp.asarray(rtol, f32),
            atol=jnp.asarray(atol, f32),
            cooldown=jnp.asarray(cooldown, i32),
            min_scale=jnp.asarray(min_scale, f32),
        )

    def update_fn(
        updates: PyTree, state: PlateauState, params: PyTree | None = None
    ) -> tuple[PyTree, PlateauState]:
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _plateau_observe(s: PlateauState, loss: jax.Array) -> PlateauState:
    """One evaluation's worth of optax's reduce-on-plateau logic."""
    loss = jnp.asarray(loss, jnp.float32)
    improved = loss < (1 - s.rtol) * s.best_value - s.atol
    best = jnp.where(improved, loss, s.best_value)
    plateau = jnp.where(improved, 0, s.plateau_count + 1)
    in_cooldown = s.cooldown_count > 0
    hit = jnp.logical_and(~in_cooldown, plateau == s.patience)
    scale = jnp.where(hit, jnp.maximum(s.scale * s.factor, s.min_scale), s.scale)
    plateau = jnp.where(in_cooldown | hit, 0, plateau)
    cooldown = jnp.where(in_cooldown, s.cooldown_count - 1, jnp.where(hit, s.cooldown, 0))
    return s._replace(
        scale=scale,
        best_value=best,
        plateau_count=plateau.astype(jnp.int32),
        cooldown_count=cooldown.astype(jnp.int32),
    )


class NTASGDState(NamedTuple):
    """State of :func:`nt_asgd`.

    Attributes:
      triggered: whether averaging has started.
      min_older: the lowest validation loss logged more than ``nonmono`` checks ago.
      recent: the last ``nonmono`` validation losses, oldest first (``inf`` until logged).
      num_averaged: how many iterates ``average`` holds.
      average: the running mean of the parameters since the trigger.
    """

    triggered: jax.Array
    min_older: jax.Array
    recent: jax.Array
    num_averaged: jax.Array
    average: PyTree


def nt_asgd(nonmono: int = 5) -> optax.GradientTransformation:
    """AWD-LSTM's non-monotonically triggered averaged SGD (NT-ASGD), as a chainable transform.

    Updates pass through unchanged. Chain it last: after ``optax.sgd``, any clipping and
    :func:`reduce_on_plateau`, since it averages ``params + updates`` with the final updates. Each
    validation loss goes to :func:`report_validation_loss`; when a loss is worse than the best one
    logged more than ``nonmono`` checks earlier, averaging starts: from then on every update also
    folds the new parameters ``params + updates`` into a running mean, which is what PyTorch's
    ``ASGD(t0=0, lambd=0)`` does after AWD-LSTM's switch. Evaluate and export with
    :func:`averaged_params`. optax has no iterate averaging triggered by a metric; this is it.

    Args:
      nonmono: the non-monotone interval n (AWD-LSTM: 5).

    Returns:
      An ``optax.GradientTransformation`` with :class:`NTASGDState`; its ``update`` needs
      ``params``. The state holds one float copy of the parameters.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.5), nt_asgd(nonmono=1))
      >>> params = {"w": jnp.zeros(1)}
      >>> state = tx.init(params)
      >>> for loss in [2.0, 1.0, 2.5]:  # 2.5 > 2.0, logged more than 1 check ago: trigger
      ...     state = report_validation_loss(state, loss)
      >>> for _ in range(2):
      ...     updates, state = tx.update({"w": -jnp.ones(1)}, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> float(params["w"][0]), float(averaged_params(state, params)["w"][0])
      (1.0, 0.75)

    References:
      Merity, Keskar and Socher, "Regularizing and Optimizing LSTM Language Models", ICLR 2018,
      https://arxiv.org/abs/1708.02182 (algorithm 1); Polyak and Juditsky, 1992.
    """
    if nonmono < 1:
        raise ValueError(f"nt_asgd: nonmono must be >= 1, got {nonmono}")

    def init_fn(params: PyTree) -> NTASGDState:
        return NTASGDState(
            triggered=jnp.zeros([], jnp.bool_),
            min_older=jnp.asarray(jnp.inf, jnp.float32),
            recent=jnp.full([nonmono], jnp.inf, jnp.float32),
            num_averaged=jnp.zeros([], jnp.int32),
            average=jax.tree.map(lambda p: jnp.zeros_like(p), params),
        )

    def update_fn(
        updates: PyTree, state: NTASGDState, params: PyTree | None = None
    ) -> tuple[PyTree, NTASGDState]:
        if params is None:
            raise ValueError("nt_asgd: update needs params (to average the iterates)")
        k = state.num_averaged + state.triggered.astype(jnp.int32)
        weight = jnp.where(state.triggered, 1.0 / jnp.maximum(k, 1), 0.0)

        def fold(avg: jax.Array, p: jax.Array, u: jax.Array) -> jax.Array:
            new_p = (p + u).astype(avg.dtype)
            return avg + weight.astype(avg.dtype) * (new_p - avg)

        average = jax.tree.map(fold, state.average, params, updates)
        return updates, state._replace(num_averaged=k, average=average)

    return optax.GradientTransformation(init_fn, update_fn)


def _nt_asgd_observe(s: NTASGDState, loss: jax.Array) -> NTASGDState:
    """Log one validation loss: trigger if worse than the best logged > nonmono checks ago."""
    loss = jnp.asarray(loss, jnp.float32)
    trigger = loss > s.min_older
    min_older = jnp.minimum(s.min_older, s.recent[0])  # the oldest recent one now ages out
    recent = jnp.concatenate([s.recent[1:], loss[None]])
    return s._replace(triggered=s.triggered | trigger, min_older=min_older, recent=recent)


def report_validation_loss(opt_state: PyTree, loss: jax.Array | float) -> PyTree:
    """Hands a validation loss to every :func:`reduce_on_plateau` and :func:`nt_asgd` state.

    A pure function (jit it or not); call it after each evaluation with the mean validation loss.
    An optimizer state holding neither is returned as it is, so a loop can always call it.

    Args:
      opt_state: an optimizer state, however nested.
      loss: the mean validation loss (a scalar).

    Returns:
      The optimizer state with those states advanced.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.adam(1e-3), reduce_on_plateau(patience=2))
      >>> state = report_validation_loss(tx.init({"w": jnp.ones(2)}), 4.2)

    References:
      Merity et al., 2018, https://arxiv.org/abs/1708.02182 (when to check: each epoch).
    """

    def observe(x: Any) -> Any:
        if isinstance(x, PlateauState):
            return _plateau_observe(x, loss)
        if isinstance(x, NTASGDState):
            return _nt_asgd_observe(x, loss)
        return x

    return jax.tree.map(observe, opt_state, is_leaf=is_node(PlateauState | NTASGDState))


def averaged_params(opt_state: PyTree, params: PyTree) -> PyTree:
    """Parameters to evaluate and export: NT-ASGD's average once started, else ``params``.

    Args:
      opt_state: an optimizer state, however nested (the first :class:`NTASGDState` found counts).
      params: the current parameters.

    Returns:
      A tree like ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(2)}
      >>> averaged_params(optax.sgd(0.1).init(params), params) is params
      True

    References:
      Merity et al., 2018, https://arxiv.org/abs/1708.02182.
    """
    found = find_states(opt_state, NTASGDState)
    if not found:
        return params
    s = found[0]
    use = s.num_averaged > 0
    return jax.tree.map(lambda a, p: jnp.where(use, a.astype(p.dtype), p), s.average, params)
