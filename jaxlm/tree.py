"""Pytree paths as "/"-joined text, patterns matched against them, and state lookup.

Every part of jaxlm that names a leaf (sharding rules, freezing and per-group rates, checkpoint
tools, exports) uses these functions, so a path reads the same everywhere:
``params/layers_0/ih/kernel``, ``opt_state/1/0/mu/head/bias``, ``carry/0/1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from types import UnionType
from typing import Any, TypeVar

import jax

PyTree = Any
Patterns = str | Sequence[str]
S = TypeVar("S")


def path_str(path: Sequence[Any]) -> str:
    """Joins a ``jax.tree_util`` key path with "/" (dict keys, attribute names, indices).

    Args:
      path: a key path as ``jax.tree_util.tree_flatten_with_path`` gives it.

    Returns:
      The path as text.

    Example:
      >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": {"b": 1}})[0]]
      ['a/b']
    """
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def tree_paths(tree: PyTree) -> list[str]:
    """The "/"-joined path of every leaf, in flattening order.

    Use it to see what a freezing, learning-rate or sharding pattern will match.

    Args:
      tree: any pytree (parameters, optimizer state, their ``jax.eval_shape``).

    Returns:
      One path per leaf (``None`` subtrees have no leaves).

    Example:
      >>> import jax.numpy as jnp
      >>> tree_paths({"embed": {"embedding": jnp.zeros((3, 2))}, "head": {"bias": jnp.zeros(3)}})
      ['embed/embedding', 'head/bias']
    """
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flatten(tree: PyTree) -> dict[str, Any]:
    """Leaves by "/"-joined path, in tree order (``None`` subtrees have no leaves).

    Args:
      tree: nested dicts, lists, tuples or any pytree.

    Returns:
      ``{path: leaf}``.

    Example:
      >>> flatten({"params": {"head": {"bias": 0.0}}, "opt_state": [None]})
      {'params/head/bias': 0.0}
    """
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten_like(tree: PyTree, flat: dict[str, Any], prefix: str = "") -> PyTree:
    """``tree`` with each leaf replaced by ``flat[prefix + <its path>]``.

    Args:
      tree: the structure to fill.
      flat: values by path; every leaf of ``tree`` must be present.
      prefix: a path prefix that ``flat``'s names carry (e.g. ``"params/"``).

    Returns:
      A tree with ``tree``'s structure and ``flat``'s values.

    Example:
      >>> unflatten_like({"a": [0, 0]}, {"a/0": 1, "a/1": 2})
      {'a': [1, 2]}
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: flat[prefix + path_str(p)], tree)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A pattern that matches whole path components: ``layers_1`` matches ``layers_1/ih/kernel``
    but not ``layers_10/ih/kernel``.

    The pattern is a regular expression searched in the path; a match must begin and end at a
    component boundary (an end of the path, or next to a "/"), so ``head`` matches
    ``head/kernel`` and ``opt_state/0/mu/head/bias``, ``^embed`` matches ``embed/embedding``
    only at the start, ``kernel$`` every kernel, and patterns that spell the slashes out
    (``(^|/)layers_1(/|$)``) keep working. Write ``layers_1.*`` to match inside a component.

    Args:
      pattern: a regular expression.

    Returns:
      The compiled, bounded expression (``.search`` it against a path).

    Raises:
      TypeError: the pattern is not a string.
      ValueError: the pattern is not a valid regular expression on its own.

    Example:
      >>> [bool(compile_pattern("layers_1").search(p)) for p in ("layers_1/k", "layers_10/k")]
      [True, False]
    """
    if not isinstance(pattern, str):
        raise TypeError(f"patterns must be regular-expression strings, got {pattern!r}")
    try:
        re.compile(pattern)  # on its own: "a)|(b" must not escape the boundaries below
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None
    # Lookarounds, so that a pattern may consume the slashes itself.
    return re.compile(rf"(?:(?<![^/])|(?=/))(?:{pattern})(?:(?![^/])|(?<=/))")


def is_node(kind: type | UnionType | tuple[type, ...]) -> Callable[[Any], bool]:
    """The ``is_leaf`` predicate that stops a tree map or flatten at nodes of type ``kind``.

    :func:`find_states` searches with it; use it to *replace* such nodes with ``jax.tree.map``
    (the function then sees each whole node, and every other leaf as usual).

    Args:
      kind: a node type, a union of them (``A | B``) or a tuple, as ``isinstance`` takes.

    Returns:
      ``lambda x: isinstance(x, kind)``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> state = optax.adam(1e-3).init({"w": jnp.ones(2)})
      >>> is_adam = is_node(optax.ScaleByAdamState)
      >>> jax.tree.map(lambda x: type(x).__name__, state, is_leaf=is_adam)
      ('ScaleByAdamState', EmptyState())
    """
    return lambda x: isinstance(x, kind)


def find_states(tree: PyTree, kind: type[S]) -> list[S]:
    """Every node of type ``kind`` in a tree, in flattening order (e.g. an optimizer state inside
    chains, masks and wrappers).

    Args:
      tree: an optimizer state or any pytree.
      kind: the node type to find (a NamedTuple state class, say).

    Returns:
      The nodes found, outermost first (nodes inside a found node are not searched).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> state = optax.chain(optax.clip(1.0), optax.adam(1e-3)).init({"w": jnp.ones(2)})
      >>> [type(s).__name__ for s in find_states(state, optax.ScaleByAdamState)]
      ['ScaleByAdamState']
    """
    nodes = jax.tree.leaves(tree, is_leaf=is_node(kind))
    return [x for x in nodes if isinstance(x, kind)]
