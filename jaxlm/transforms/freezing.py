"""Freezing, gradual unfreezing and per-group learning rates, selected by parameter path.

Patterns are regular expressions matched against "/"-joined parameter paths as whole path
components (:func:`jaxlm.tree.compile_pattern`): ``layers_1`` selects ``layers_1/...`` but not
``layers_10/...``; a pattern that selects nothing is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.transforms.paths import Patterns, as_patterns, match_groups
from jaxlm.tree import path_str

PyTree = Any


def _is_masked(x: Any) -> bool:
    """True for optax's placeholder of a leaf another transform owns."""
    return isinstance(x, optax.MaskedNode)


FreezeSpec = Patterns | PyTree | Callable[[PyTree], PyTree]

_ACCEPTED = (
    "expected regular-expression pattern(s) (a str or a sequence of str), an optax-style mask "
    "(a pytree of booleans shaped like the parameters or a prefix of them, True = frozen), or a "
    "function from the parameters to such a mask"
)


def _is_patterns(spec: Any) -> bool:
    """A str, or a list or tuple of nothing but str (an empty one included)."""
    return isinstance(spec, str) or (
        isinstance(spec, list | tuple) and all(isinstance(p, str) for p in spec)
    )


def _is_bool(x: Any) -> bool:
    """A Python or NumPy boolean, or a 0-d boolean array (as ``optax.freeze`` takes)."""
    if isinstance(x, bool | np.bool_):
        return True
    return isinstance(x, np.ndarray | jax.Array) and x.shape == () and x.dtype == np.bool_


def _checked_mask(mask: PyTree, tree: PyTree | None, source: str) -> PyTree:
    """A checked boolean (prefix) mask, broadcast to one Python bool per leaf of ``tree``."""
    # broadcast, not passed on as a prefix: the state is then the pattern form's, leaf for leaf
    if isinstance(mask, str) or callable(mask):
        raise TypeError(f"freeze: {source} is {mask!r}; {_ACCEPTED}")
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    bad = [(path_str(p), x) for p, x in leaves if not _is_bool(x)]
    if bad:
        where, x = bad[0]
        at = f" at {where!r}" if where else ""
        raise TypeError(
            f"freeze: {source} has a leaf{at} that is not a boolean: {x!r:.80} "
            f"({type(x).__name__}); {_ACCEPTED}"
        )
    mask = jax.tree.map(bool, mask)
    if tree is None:
        return mask
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, tree)
    except ValueError as e:
        raise ValueError(
            f"freeze: {source} is not shaped like the parameters or a prefix of them: {e}"
        ) from None


def _frozen_mask(spec: FreezeSpec) -> Callable[[PyTree], PyTree]:
    """From :func:`freeze`'s first argument to a function from a tree to its frozen mask."""
    if _is_patterns(spec):
        pats = as_patterns(spec)
        return lambda tree: jax.tree.map(lambda label: label >= 0, match_groups(tree, pats))
    if callable(spec):
        return lambda tree: _checked_mask(spec(tree), tree, "the mask function's result")
    if spec is None or (jax.tree_util.all_leaves([spec]) and not _is_bool(spec)):
        raise TypeError(f"freeze: got {spec!r:.80} ({type(spec).__name__}); {_ACCEPTED}")
    _checked_mask(spec, None, "the mask")  # fail now, not at init
    return lambda tree: _checked_mask(spec, tree, "the mask")


def freeze(
    frozen: FreezeSpec, inner: optax.GradientTransformation | None = None
) -> optax.GradientTransformation:
    """Freezes the selected parameters: their updates are exactly zero.

    ``frozen`` selects them in one of three ways: regular-expression pattern(s), a leaf being
    frozen when its "/"-joined path matches any of them as whole path components
    (:func:`jaxlm.tree.compile_pattern`: ``layers_1`` freezes ``layers_1/...``, not
    ``layers_10/...``); an optax-style mask, a pytree of booleans with the parameters' structure
    or a prefix of it (``{"embed": True, "head": False}``; True = frozen, as in
    ``optax.freeze``); or a function from the parameters to such a mask. A ``str`` or a list or
    tuple of ``str`` is read as patterns, never as a mask.

    Built on ``optax.masked(optax.set_to_zero(), ...)`` (what ``optax.freeze`` is; no ``inner``)
    and ``optax.partition`` (with ``inner``). How it differs from ``optax.freeze``: parameters
    can be selected by path patterns computed from the tree itself, and a pattern that matches
    nothing is an error (a mask, as in optax, must be shaped like the parameters or a prefix of
    them, and an all-False one freezes nothing); mask functions are accepted as well as static
    masks; and with ``inner`` the optimizer keeps no state for frozen leaves and they take no
    part in it at all (moments, weight decay, global-norm clipping): ``inner`` only ever sees
    the trainable leaves, whichever way they were selected. ``optax.freeze`` chained after an
    optimizer only zeroes the updates that optimizer already computed.

    Args:
      frozen: what to freeze: pattern(s) matched against "/"-joined parameter paths as whole
        components; a pytree of booleans shaped like the parameters or a prefix of them (True
        = frozen); or a function from the parameters to such a pytree. The mask must be static
        (Python or NumPy booleans, not values computed under ``jit``).
      inner: the optimizer for the trainable leaves; when None the result only zeroes the frozen
        updates (chain it after your optimizer; that optimizer then still holds state for them).

    Returns:
      An ``optax.GradientTransformation``. Its ``init`` raises ``ValueError`` if a pattern matches
      no parameter or a mask is not shaped like the parameters.

    Raises:
      TypeError: ``frozen`` is none of the three forms (a mapping with a leaf that is not a
        boolean, say); the message says what is accepted.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"embed": jnp.ones(3), "head": jnp.ones(2)}
      >>> grads = {"embed": jnp.ones(3), "head": jnp.ones(2)}
      >>> tx = freeze("^embed", optax.adam(1e-2))
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["embed"]
      Array([0., 0., 0.], dtype=float32)
      >>> tx = freeze({"embed": True, "head": False}, optax.sgd(0.1))  # an optax-style mask
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["embed"], updates["head"]
      (Array([0., 0., 0.], dtype=float32), Array([-0.1, -0.1], dtype=float32))

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146 (freezing all but the top layers).
    """
    mask = _frozen_mask(frozen)
    if inner is None:
        # optax.freeze(mask) is exactly this, but documents only static masks; optax.masked
        # documents a mask function of the tree
        return optax.masked(optax.set_to_zero(), mask)
    return optax.partition(
        {"train": inner, "frozen": optax.set_to_zero()},
        lambda tree: jax.tree.map(lambda f: "frozen" if f else "train", mask(tree)),
    )


class GradualUnfreezeState(NamedTuple):
    """State of :func:`gradual_unfreeze`: the step count and the inner optimizer's state."""

    count: jax.Array
    inner_state: Any


def _keep_frozen_state(new: PyTree, old: PyTree, active: PyTree) -> PyTree:
    """Inner state with every parameter-shaped subtree's frozen leaves taken from ``old``."""
    active_leaves, active_def = jax.tree.flatten(active, is_leaf=_is_masked)

    def is_param_tree(x: Any) -> bool:
        return jax.tree.structure(x, is_leaf=_is_masked) == active_def

    def select(n: Any, o: Any) -> Any:
        if not is_param_tree(n):
            return n
        n_leaves, n_def = jax.tree.flatten(n, is_leaf=_is_masked)
        o_leaves = jax.tree.leaves(o, is_leaf=_is_masked)
        out = [
            nl if _is_masked(nl) or a is True else jnp.where(a, nl, ol)
            for a, nl, ol in zip(active_leaves, n_leaves, o_leaves, strict=True)
        ]
        return jax.tree.unflatten(n_def, out)

    return jax.tree.map(select, new, old, is_leaf=is_param_tree)


def gradual_unfreeze(
    groups: Sequence[Patterns],
    boundaries: Sequence[int],
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """ULMFiT gradual unfreezing: group ``i`` trains from step ``boundaries[i]`` on.

    ``groups`` are ordered from the top of the network (the output side) down, each a pattern or
    a list of patterns; a leaf belongs to the first group that matches it. Patterns match whole
    path components (``layers_1`` is not ``layers_10``; see :func:`jaxlm.tree.compile_pattern`).
    Parameters matching no group always train.

    What this adds to optax: optax's freezing takes a static mask, so unfreezing means rebuilding
    the optimizer and losing its state. Here the mask is a function of the step count held in the
    state, inside one compiled update: no recompilation at a boundary, state kept for every leaf.
    A frozen leaf's gradient is zeroed *before* ``inner`` (so it adds nothing to a global-norm
    clip inside ``inner``), its update is zeroed *after* (so weight decay does not move it), and
    its leaves in every parameter-shaped part of ``inner``'s state (moments, traces) are held
    unchanged. Scalar state such as optax's step counts advances for all leaves alike, so
    Adam's bias correction for a group unfrozen at a late step uses the global count: while its
    moments fill, that group's steps are larger than a fresh Adam's would be (for a constant
    gradient with ``b1=0.9, b2=0.999``: 3.2x on its first step, 6.5x around its tenth, within
    1.3x after a thousand). Pair it with a warm-up or slanted triangular schedule, or a smaller
    ``b2``, as ULMFiT does.

    Args:
      groups: per group, regular expression(s) matched against "/"-joined parameter paths as
        whole components.
      boundaries: per group, the first step (update count) at which it trains; non-decreasing.
      inner: the optimizer to run on the trainable leaves (``optax.identity()`` when None).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`GradualUnfreezeState`. ``init``
      raises ``ValueError`` when a group matches no parameter.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"embed": jnp.ones(2), "rnn": jnp.ones(2), "head": jnp.ones(2)}
      >>> tx = gradual_unfreeze(["^head", "^rnn", "^embed"], [0, 2, 4], optax.sgd(0.1))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, state, params)
      >>> updates["rnn"]  # frozen until step 2
      Array([0., 0.], dtype=float32)

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146 (section 3.2, gradual unfreezing).
    """
    group_patterns = [as_patterns(g) for g in groups]
    bounds = [int(b) for b in boundaries]
    if len(group_patterns) != len(bounds):
        raise ValueError(
            f"gradual_unfreeze: {len(group_patterns)} groups but {len(bounds)} boundaries"
        )
    if any(b < 0 for b in bounds) or any(a > b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"gradual_unfreeze: boundaries must be >= 0 and non-decreasing: {bounds}")
    inner = optax.with_extra_args_support(inner or optax.identity())
    flat = [p for ps in group_patterns for p in ps]
    owner = [i for i, ps in enumerate(group_patterns) for _ in ps]

    def labels(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda k: owner[k] if k >= 0 else -1, match_groups(tree, flat))

    def active(tree: PyTree, count: jax.Array) -> PyTree:
        return jax.tree.map(lambda g: True if g < 0 else count >= bounds[g], labels(tree))

    def init_fn(params: PyTree) -> GradualUnfreezeState:
        labels(params)  # fail fast on patterns that match nothing
        return GradualUnfreezeState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(
        updates: PyTree, state: GradualUnfreezeState, params: PyTree | None = None, **extra: Any
    ) -> tuple[PyTree, GradualUnfreezeState]:
        act = active(updates, state.count)

        def keep(a: Any, u: jax.Array) -> jax.Array:
            return u if a is True else jnp.where(a, u, jnp.zeros_like(u))

        new_updates, new_inner = inner.update(
            jax.tree.map(keep, act, updates), state.inner_state, params, **extra
        )
        new_updates = jax.tree.map(keep, act, new_updates)
        new_inner = _keep_frozen_state(new_inner, state.inner_state, act)
        return new_updates, GradualUnfreezeState(optax.safe_increment(state.count), new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def per_group_lr(
    groups: Sequence[Patterns], scales: Sequence[float]
) -> optax.GradientTransformation:
    """Multiplies the updates of group ``i`` by ``scales[i]``: per-group learning rates.

    Chain it after the optimizer (whose own rate then acts as the top rate). A leaf takes the
    first group that matches; leaves matching no group keep scale 1. Patterns match whole path
    components (``layers_1`` is not ``layers_10``; see :func:`jaxlm.tree.compile_pattern`).
    Ours adds over
    ``optax.partition`` of several optimizers: one optimizer state for the whole tree, groups by
    path regex, and an error when a group matches nothing.

    Args:
      groups: per group, regular expression(s) matched against "/"-joined parameter paths as
        whole components.
      scales: per group, the factor applied to its updates.

    Returns:
      A stateless ``optax.GradientTransformation``; ``init`` raises ``ValueError`` when a group
      matches no parameter.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), per_group_lr(["^head", "^embed"], [1.0, 0.5]))
      >>> params = {"embed": jnp.ones(1), "head": jnp.ones(1)}
      >>> updates, _ = tx.update(params, tx.init(params))
      >>> float(updates["embed"][0])
      -0.5

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146 (section 3.2, discriminative fine-tuning).
    """
    group_patterns = [as_patterns(g) for g in groups]
    factors = [float(s) for s in scales]
    if len(group_patterns) != len(factors):
        raise ValueError(f"per_group_lr: {len(group_patterns)} groups but {len(factors)} scales")
    flat = [p for ps in group_patterns for p in ps]
    owner = [i for i, ps in enumerate(group_patterns) for _ in ps]

    def scale_of(tree: PyTree) -> PyTree:
        return jax.tree.map(
            lambda k: factors[owner[k]] if k >= 0 else 1.0, match_groups(tree, flat)
        )

    def init_fn(params: PyTree) -> optax.EmptyState:
        scale_of(params)
        return optax.EmptyState()

    def update_fn(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.EmptyState]:
        del params
        scaled = jax.tree.map(
            lambda s, u: u if s == 1.0 else u * jnp.asarray(s, u.dtype), scale_of(updates), updates
        )
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)


def discriminative_scales(num_groups: int, factor: float = 2.6) -> tuple[float, ...]:
    """Per-group rate factors for discriminative fine-tuning: ``1, 1/factor, 1/factor**2, ...``.

    Args:
      num_groups: number of groups, ordered from the top of the network down.
      factor: each lower group's rate is the one above divided by this (2.6 in ULMFiT).

    Returns:
      ``num_groups`` scales, the first 1.0.

    Example:
      >>> discriminative_scales(3, 2.0)
      (1.0, 0.5, 0.25)

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146 (eta^{l-1} = eta^l / 2.6).
    """
    if factor <= 0:
        raise ValueError(f"discriminative factor must be positive, got {factor}")
    return tuple(float(factor) ** -i for i in range(num_groups))


def discriminative_lr(
    groups: Sequence[Patterns], factor: float = 2.6
) -> optax.GradientTransformation:
    """``per_group_lr(groups, discriminative_scales(len(groups), factor))``: ULMFiT's rates.

    Args:
      groups: per group, regular expression(s) matched against "/"-joined parameter paths as
        whole components (``layers_1`` is not ``layers_10``), ordered from the top down.
      factor: each lower group's rate is the one above divided by this.

    Returns:
      A stateless ``optax.GradientTransformation`` to chain after the optimizer.

    Example:
      >>> import optax
      >>> tx = optax.chain(optax.adam(1e-3), discriminative_lr(["^head", "layers_1", "layers_0"]))

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146.
    """
    return per_group_lr(groups, discriminative_scales(len(groups), factor))
