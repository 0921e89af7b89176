"""Mixed-precision dtype policies and dynamic loss scaling for float16.

A :class:`Policy` says which dtype parameters are stored in, matrix work runs in and outputs come
out in. float16 compute needs loss scaling: :func:`dynamic_loss_scale` wraps an optax optimizer,
and the train step multiplies its loss by :func:`loss_scale` of the optimizer state::

    tx = wrap_optimizer(build_optimizer(config), policy)   # loss-scaled only for float16
    ...
    def loss_fn(params):
        return loss_scale(state.opt_state) * loss(params)
    grads = jax.grad(loss_fn)(state.params)                # scaled gradients
    updates, opt_state = tx.update(grads, state.opt_state, state.params)  # unscaled, or skipped
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.runtime.backend import on_cpu
from jaxlm.tree import find_states

_DTYPES = {
    "float32": jnp.float32,
    "f32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "f16": jnp.float16,
}


def _dtype(name: str, field: str):
    try:
        return _DTYPES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"precision: unknown dtype {name!r} for {field!r}; expected one of {sorted(_DTYPES)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype parameters are stored in, matrix work runs in, and outputs come out in.

    Example:
      >>> Policy.from_string("params=float32,compute=bfloat16,output=float32").compute_dtype
      <class 'jax.numpy.bfloat16'>
    """

    param_dtype: type = jnp.float32
    compute_dtype: type = jnp.float32
    output_dtype: type = jnp.float32

    @property
    def needs_loss_scaling(self) -> bool:
        """True when compute or parameters are float16 (bfloat16 has float32's range)."""
        return jnp.float16 in (self.compute_dtype, self.param_dtype)

    @classmethod
    def from_string(cls, spec: str) -> Policy:
        """Parses ``"bfloat16"`` (compute dtype only) or ``"params=..,compute=..,output=.."``.

        Args:
          spec: the policy string.

        Returns:
          The policy; unnamed parts default to float32.
        """
        spec = (spec or "float32").strip()
        if "=" not in spec:
            return cls(compute_dtype=_dtype(spec, "compute"))
        fields = {"params": "param_dtype", "compute": "compute_dtype", "output": "output_dtype"}
        kwargs = {}
        for part in spec.split(","):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in fields:
                raise ValueError(
                    f"precision: unknown field {key!r} in {spec!r}; expected params=, compute=, "
                    "output="
                )
            kwargs[fields[key]] = _dtype(value, key)
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Matrix products in a compute dtype.


def dot_general(a: jax.Array, b: jax.Array, dimension_numbers: Any, dtype: Any) -> jax.Array:
    """``jax.lax.dot_general`` as ``dtype``'s product: operands rounded to it, float32 sums.

    A product of two bfloat16 (or float16) numbers is exact in float32, so multiplying the
    rounded operands in float32 with a float32 sum is the same maths as the compute dtype's
    product accumulated in float32; only the order of the sum may differ. On CPU that is how
    this computes it, because it is faster there: XLA's CPU kernels multiply float32 faster
    than bfloat16 (YNNPACK 171 against 121 GFLOP/s at ``[4096, 256] x [256, 1024]``; torch's
    oneDNN 324 against 179 on the same CPU), and XLA hands its oneDNN products float32 operands
    whatever their dtype. The backward pass keeps the operands in ``dtype`` (half the bytes of
    their float32 copies) and widens them again there. Other backends multiply in ``dtype``
    (GPUs and TPUs are fastest in bfloat16).

    Args:
      a: the left operand, any float dtype.
      b: the right operand.
      dimension_numbers: as ``jax.lax.dot_general``'s.
      dtype: the compute dtype the operands are rounded to.

    Returns:
      The float32 product.

    Example:
      >>> x = jnp.asarray([[1.00390625]])  # 1 + 2**-8: no bfloat16 has it, it rounds to 1
      >>> float(dot_general(x, x, (((1,), (0,)), ((), ())), jnp.bfloat16)[0, 0])
      1.0
    """
    if on_cpu() and jnp.finfo(dtype).bits < 32:
        dtypes = (jnp.dtype(dtype), a.dtype, b.dtype)  # the product's, then the operands'
        return _widened_product(a, b, dimension_numbers, dtypes)
    a, b = a.astype(dtype), b.astype(dtype)
    return jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _widened_product(a: jax.Array, b: jax.Array, dimension_numbers: Any, dtypes: Any) -> jax.Array:
    """The float32 product of ``a`` and ``b`` rounded to ``dtype``, in float32 kernels.

    The backward pass keeps the rounded operands (not their float32 copies) and returns each
    operand's cotangent in its own dtype: a float32 weight gets its gradient unrounded.
    """
    wide = (x.astype(dtypes[0]).astype(jnp.float32) for x in (a, b))
    return _f32_product(*wide, dimension_numbers)


def _f32_product(a: jax.Array, b: jax.Array, dimension_numbers: Any) -> jax.Array:
    return jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32)


def _widened_fwd(a, b, dimension_numbers, dtypes):
    narrow = (a.astype(dtypes[0]), b.astype(dtypes[0]))
    out = _f32_product(*(x.astype(jnp.float32) for x in narrow), dimension_numbers)
    return out, narrow


def _widened_bwd(dimension_numbers, dtypes, saved, g):
    a, b = saved
    _, vjp = jax.vjp(
        functools.partial(_f32_product, dimension_numbers=dimension_numbers),
        a.astype(jnp.float32),
        b.astype(jnp.float32),
    )
    da, db = vjp(g.astype(jnp.float32))
    return da.astype(dtypes[1]), db.astype(dtypes[2])


_widened_product.defvjp(_widened_fwd, _widened_bwd)


# --------------------------------------------------------------------------------------------
# Dynamic loss scaling for float16.


class DynamicLossScaleState(NamedTuple):
    """State of :func:`dynamic_loss_scale`.

    Attributes:
      scale: float32 scalar the loss is multiplied by before differentiation.
      good_steps: finite steps since the scale last changed.
      guarded: the state of ``optax.apply_if_finite`` around the wrapped optimizer.
    """

    scale: jax.Array
    good_steps: jax.Array
    guarded: optax.ApplyIfFiniteState

    @property
    def skipped(self) -> jax.Array:
        """Total steps skipped for non-finite gradients."""
        return self.guarded.total_notfinite

    @property
    def last_finite(self) -> jax.Array:
        """Whether the last step's gradients were finite (and it was applied)."""
        return self.guarded.last_finite

    @property
    def inner_state(self) -> optax.OptState:
        """The wrapped optimizer's state (untouched on skipped steps)."""
        return self.guarded.inner_state


def dynamic_loss_scale(
    inner: optax.GradientTransformation,
    *,
    init_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
    max_scale: float = 2.0**24,
) -> optax.GradientTransformation:
    """Dynamic loss scaling around an optimizer, for float16 training.

    Adds to ``optax.apply_if_finite`` (which does the skipping) the scale itself: the gradients
    are unscaled before the check, and the scale grows and backs off with the outcome. The
    train step multiplies its loss by :func:`loss_scale` of the optimizer state before
    differentiating; this transformation receives those scaled gradients, divides them by the
    scale, and then either applies ``inner`` (all gradients finite) or skips the step: zero
    updates, ``inner``'s state unchanged. After ``growth_interval`` finite steps in a row the
    scale is multiplied by ``growth_factor``; on a non-finite step it is multiplied by
    ``backoff_factor`` (never below ``min_scale``). Wrap the whole chain (clipping included) so
    that every inner transformation sees unscaled gradients. Works under ``jit``; the state is a
    pytree that checkpoints with the rest of the optimizer state.

    Args:
      inner: the optimizer to protect, e.g. ``optax.chain(clip, adam)``.
      init_scale: the starting scale.
      growth_interval: finite steps in a row before the scale grows.
      growth_factor: growth multiplier.
      backoff_factor: multiplier on overflow.
      min_scale: the scale never falls below this.
      max_scale: the scale never grows above this.

    Returns:
      An ``optax.GradientTransformation`` with :class:`DynamicLossScaleState`.

    Example:
      >>> tx = dynamic_loss_scale(optax.adam(1e-3), init_scale=2.0**10)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: loss_scale(state) * jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> float(loss_scale(state))
      1024.0
    """
    if not (0.0 < backoff_factor < 1.0 and growth_factor >= 1.0 and growth_interval >= 1):
        raise ValueError(
            "dynamic_loss_scale: need 0 < backoff_factor < 1, growth_factor >= 1 and "
            f"growth_interval >= 1; got {backoff_factor}, {growth_factor}, {growth_interval}"
        )

    # Skip every non-finite step: the backoff, not a give-up count, is what ends a run of them.
    guard = optax.apply_if_finite(inner, max_consecutive_errors=jnp.iinfo(jnp.int32).max)

    def init_fn(params):
        return DynamicLossScaleState(
            scale=jnp.asarray(init_scale, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            guarded=guard.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        inv = 1.0 / state.scale
        grads = jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), updates)
        new_updates, guarded = guard.update(grads, state.guarded, params, **extra_args)
        finite = guarded.last_finite
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, jnp.minimum(state.scale * growth_factor, max_scale), state.scale),
            jnp.maximum(state.scale * backoff_factor, min_scale),
        )
        new_state = DynamicLossScaleState(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good).astype(jnp.int32),
            guarded=guarded,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def loss_scale(opt_state) -> jax.Array:
    """The factor to multiply the loss by before differentiating: 1 without loss scaling.

    Args:
      opt_state: an optimizer state, possibly containing a :class:`DynamicLossScaleState`
        anywhere (e.g. inside ``optax.chain`` or ``optax.MultiSteps``).

    Returns:
      A float32 scalar.

    Example:
      >>> state = dynamic_loss_scale(optax.sgd(0.1), init_scale=8.0).init({"w": jnp.ones(2)})
      >>> float(loss_scale(state)), float(loss_scale(optax.sgd(0.1).init({"w": jnp.ones(2)})))
      (8.0, 1.0)
    """
    found = find_states(opt_state, DynamicLossScaleState)
    return found[0].scale if found else jnp.ones((), jnp.float32)


def loss_scale_metrics(opt_state) -> dict[str, jax.Array]:
    """``{"loss_scale", "skipped_steps", "step_applied"}`` when loss scaling is on, else ``{}``.

    Args:
      opt_state: an optimizer state.

    Returns:
      A dict of scalars to log.

    Example:
      >>> loss_scale_metrics(optax.sgd(0.1).init({"w": jnp.ones(2)}))
      {}
    """
    found = find_states(opt_state, DynamicLossScaleState)
    if not found:
        return {}
    s = found[0]
    return {
        "loss_scale": s.scale,
        "skipped_steps": s.skipped.astype(jnp.float32),
        "step_applied": s.last_finite.astype(jnp.float32),
    }


def wrap_optimizer(
    tx: optax.GradientTransformation, policy: Policy, **kwargs: Any
) -> optax.GradientTransformation:
    """Wraps ``tx`` in :func:`dynamic_loss_scale` when the policy computes in float16.

    Args:
      tx: the optimizer.
      policy: the run's dtype policy.
      **kwargs: passed to :func:`dynamic_loss_scale`.

    Returns:
      ``tx`` itself for float32 and bfloat16 policies, else the loss-scaled optimizer.

    Example:
      >>> tx = wrap_optimizer(optax.sgd(0.1), Policy.from_string("float16"))
    """
    if policy.needs_loss_scaling:
        return dynamic_loss_scale(tx, **kwargs)
    return tx
