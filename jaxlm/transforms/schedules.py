"""Learning-rate schedules: slanted triangular, warm-up + cosine, SGDR, step decays."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def slanted_triangular(
    peak_value: float, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0
) -> optax.Schedule:
    """ULMFiT's slanted triangular rate: a short linear rise, then a long linear fall.

    ``cut = floor(total_steps * cut_frac)``; the rate rises linearly from ``peak_value / ratio``
    at step 0 to ``peak_value`` at step ``cut``, then falls linearly back to ``peak_value / ratio``
    at ``total_steps`` and stays there. It is the paper's formula
    ``lr_t = peak * (1 + p (ratio - 1)) / ratio`` with ``p = t / cut`` before the cut and
    ``p = 1 - (t - cut) / (total_steps - cut)`` after (the paper writes the fall's length as
    ``cut (1 / cut_frac - 1)``, equal when ``total_steps * cut_frac`` is whole). Built from
    ``optax.linear_schedule`` and ``optax.join_schedules``; optax has no such schedule.

    Args:
      peak_value: the highest rate (ULMFiT: 0.01).
      total_steps: T, the number of training steps.
      cut_frac: fraction of steps spent rising (ULMFiT: 0.1).
      ratio: how much smaller the lowest rate is than the peak (ULMFiT: 32).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = slanted_triangular(0.01, 1000)
      >>> round(float(sched(100)), 6), round(float(sched(0)), 6)
      (0.01, 0.000312)

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146 (equation 3).
    """
    if total_steps < 2 or not 0.0 < cut_frac < 1.0 or ratio < 1.0:
        raise ValueError(
            "slanted_triangular: need total_steps >= 2, 0 < cut_frac < 1 and ratio >= 1; got "
            f"{total_steps}, {cut_frac}, {ratio}"
        )
    cut = min(max(int(math.floor(total_steps * cut_frac)), 1), total_steps - 1)
    low = peak_value / ratio
    return optax.join_schedules(
        [
            optax.linear_schedule(low, peak_value, cut),
            optax.linear_schedule(peak_value, low, total_steps - cut),
        ],
        [cut],
    )


def warmup_cosine(
    peak_value: float,
    warmup_steps: int,
    total_steps: int,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value`` at ``total_steps``.

    ``optax.warmup_cosine_decay_schedule`` with ``decay_steps=total_steps``; ours adds the
    checks (a warm-up as long as the run is cut to leave one decay step).
    After warm-up, ``lr_t = end + (peak - end) (1 + cos(pi (t - w) / (T - w))) / 2``.

    Args:
      peak_value: the rate at the end of warm-up.
      warmup_steps: w, steps of linear rise from ``init_value``.
      total_steps: T, the step at which the rate reaches ``end_value``.
      init_value: the rate at step 0.
      end_value: the final rate.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = warmup_cosine(1.0, 10, 110)
      >>> [round(float(sched(t)), 6) for t in (10, 60, 110)]
      [1.0, 0.5, 0.0]

    References:
      Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
      https://arxiv.org/abs/1608.03983; Goyal et al., "Accurate, Large Minibatch SGD", 2017,
      https://arxiv.org/abs/1706.02677 (warm-up).
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"warmup_cosine: bad steps warmup={warmup_steps} total={total_steps}")
    warmup = min(warmup_steps, total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=init_value,
        peak_value=peak_value,
        warmup_steps=warmup,
        decay_steps=total_steps,
        end_value=end_value,
    )


def sgdr(
    peak_value: float,
    first_period: int,
    total_steps: int,
    period_mult: float = 2.0,
    end_value: float = 0.0,
    peak_decay: float = 1.0,
) -> optax.Schedule:
    """SGDR: cosine cycles that restart at the peak, each ``period_mult`` times longer.

    Cycle ``i`` lasts ``T_i = round(first_period * period_mult**i)`` steps and runs
    ``lr = end + (peak_i - end) (1 + cos(pi t_cur / T_i)) / 2`` with
    ``peak_i = peak_value * peak_decay**i``. Ours builds the cycle list that
    ``optax.sgdr_schedule`` takes (which has no period multiplier) until ``total_steps`` is covered;
    after the last cycle the rate stays at ``end_value``.

    Args:
      peak_value: the rate at the start of the first cycle.
      first_period: T_0, length of the first cycle in steps.
      total_steps: cycles are generated until they cover this many steps.
      period_mult: T_mult, growth of the cycle length.
      end_value: eta_min, the rate at the end of every cycle.
      peak_decay: each cycle's peak is the previous one's times this.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = sgdr(1.0, 10, 30)
      >>> [round(float(sched(t)), 6) for t in (0, 5, 10)]
      [1.0, 0.5, 1.0]

    References:
      Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
      https://arxiv.org/abs/1608.03983.
    """
    if first_period < 1 or period_mult < 1.0 or total_steps < 1:
        raise ValueError(
            f"sgdr: need first_period >= 1, period_mult >= 1, total_steps >= 1; got "
            f"{first_period}, {period_mult}, {total_steps}"
        )
    cycles = []
    covered, i = 0, 0
    while covered < total_steps:
        length = max(int(round(first_period * period_mult**i)), 1)
        peak = peak_value * peak_decay**i
        cycles.append(
            dict(
                init_value=peak,
                peak_value=peak,
                warmup_steps=0,
                decay_steps=length,
                end_value=end_value,
            )
        )
        covered += length
        i += 1
    return optax.sgdr_schedule(cycles)


def step_decay(
    init_value: float,
    first_step: int,
    every: int,
    factor: float,
    max_decays: int | None = None,
) -> optax.Schedule:
    """The rate times ``factor`` at step ``first_step`` and every ``every`` steps after it.

    ``lr = init_value * factor ** n``, ``n`` being how many of the decay points
    ``first_step, first_step + every, ...`` (at most ``max_decays`` of them) the step has
    reached. The same values as ``optax.piecewise_constant_schedule`` with one boundary per
    decay point, in closed form: the graph does not grow with the number of decays.

    Args:
      init_value: the rate before the first decay.
      first_step: the step of the first decay (its rate is ``init_value * factor``).
      every: steps between decays (>= 1).
      factor: multiplier at each decay.
      max_decays: stop after this many decays; None: never stop.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = step_decay(1.0, first_step=10, every=5, factor=0.5, max_decays=2)
      >>> [float(sched(s)) for s in (9, 10, 15, 20, 99)]
      [1.0, 0.5, 0.25, 0.25, 0.25]
    """
    if every < 1:
        raise ValueError(f"step_decay: every must be >= 1, got {every}")
    if max_decays is not None and max_decays < 0:
        raise ValueError(f"step_decay: max_decays must be >= 0 or None, got {max_decays}")

    def schedule(step: optax.ScalarOrSchedule) -> jnp.ndarray:
        n = jnp.maximum((jnp.asarray(step, jnp.int32) - first_step) // every + 1, 0)
        if max_decays is not None:
            n = jnp.minimum(n, max_decays)
        return init_value * jnp.power(jnp.float32(factor), n.astype(jnp.float32))

    return schedule


def step_decay_per_epoch(
    init_value: float, steps_per_epoch: int, decay_after_epochs: int, factor: float = 0.5
) -> optax.Schedule:
    """Zaremba et al.'s recipe: the full rate for some epochs, then times ``factor`` every epoch.

    ``lr = init_value * factor ** max(0, epoch - decay_after_epochs + 1)`` with
    ``epoch = step // steps_per_epoch``: epochs ``0 .. decay_after_epochs - 1`` run at
    ``init_value``, epoch ``decay_after_epochs`` at ``init_value * factor`` and so on. optax's
    ``exponential_decay(staircase=True)`` counts from a begin step instead; ours speaks in epochs
    and has no end. It is :func:`step_decay` with a decay at the start of every epoch from
    ``decay_after_epochs`` on.

    Args:
      init_value: the starting rate (Zaremba: 1.0).
      steps_per_epoch: optimizer steps per pass over the training data.
      decay_after_epochs: epochs at the full rate (Zaremba small: 4, medium: 6, large: 14).
      factor: multiplier per later epoch (Zaremba small: 0.5, medium: 1/1.2, large: 1/1.15).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = step_decay_per_epoch(1.0, steps_per_epoch=100, decay_after_epochs=4)
      >>> float(sched(399)), float(sched(400)), float(sched(500))
      (1.0, 0.5, 0.25)

    References:
      Zaremba, Sutskever and Vinyals, "Recurrent Neural Network Regularization", 2014,
      https://arxiv.org/abs/1409.2329.
    """
    if steps_per_epoch < 1 or decay_after_epochs < 0:
        raise ValueError(
            f"step_decay_per_epoch: need steps_per_epoch >= 1 and decay_after_epochs >= 0; got "
            f"{steps_per_epoch}, {decay_after_epochs}"
        )
    # epoch - decay_after_epochs + 1 = the decay points decay_after_epochs * spe + k * spe passed
    return step_decay(init_value, decay_after_epochs * steps_per_epoch, steps_per_epoch, factor)
