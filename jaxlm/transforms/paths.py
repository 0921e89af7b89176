"""Parameter paths ("decoder/layers_2/cell/hh/kernel") and regex patterns matched against them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

PyTree = Any
Patterns = str | Sequence[str]


def _key_str(key: Any) -> str:
    """One path component as text: a dict key, attribute name or sequence index."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """Joins a ``jax.tree_util`` key path with "/".

    Args:
      path: a key path as ``jax.tree_util.tree_flatten_with_path`` gives it.

    Returns:
      The path as text, for example ``"layers_0/ih/kernel"``.

    Example:
      >>> import jax
      >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": {"b": 1}})[0]]
      ['a/b']
    """
    return "/".join(_key_str(k) for k in path)


def param_paths(tree: PyTree) -> list[str]:
    """Lists the "/"-joined path of every leaf of a parameter tree, in flattening order.

    Use it to see what a pattern given to :func:`jaxlm.transforms.freeze` and friends will match.

    Args:
      tree: any pytree (parameters, gradients, or their ``jax.eval_shape`` abstractions).

    Returns:
      One path per leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> param_paths({"embed": {"embedding": jnp.zeros((3, 2))}, "head": {"bias": jnp.zeros(3)}})
      ['embed/embedding', 'head/bias']
    """
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def as_patterns(patterns: Patterns) -> list[str]:
    """A single pattern or a sequence of them, as a list (validated as regular expressions)."""
    out = [patterns] if isinstance(patterns, str) else list(patterns)
    for p in out:
        if not isinstance(p, str):
            raise TypeError(f"patterns must be regular-expression strings, got {p!r}")
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
    return out


def _paths_listing(paths: list[str], limit: int = 40) -> str:
    """The paths of a tree for an error message, cut at ``limit``."""
    shown = paths[:limit]
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return "\n  ".join(shown) + more


def match_groups(tree: PyTree, patterns: Patterns, *, what: str = "pattern") -> PyTree:
    """Labels every leaf with the index of the first pattern its path matches (``re.search``).

    Args:
      tree: a parameter (or gradient) tree.
      patterns: regular expressions; a leaf takes the first one that matches its path.
      what: how to name a pattern in the error message (for example "group").

    Returns:
      A tree of Python ints shaped like ``tree``: the pattern index, or -1 where none matches.

    Raises:
      ValueError: when a pattern labels no leaf (it matches nothing, or only leaves an earlier
        pattern already took); the message lists the tree's paths.

    Example:
      >>> import jax.numpy as jnp
      >>> match_groups({"head": {"kernel": jnp.zeros(2)}, "embed": jnp.zeros(2)}, ["head"])
      {'embed': -1, 'head': {'kernel': 0}}
    """
    pats = as_patterns(patterns)
    compiled = [re.compile(p) for p in pats]
    used = [False] * len(pats)
    paths: list[str] = []

    def label(path: Sequence[Any], _: Any) -> int:
        s = path_str(path)
        paths.append(s)
        for i, rx in enumerate(compiled):
            if rx.search(s):
                used[i] = True
                return i
        return -1

    labels = jax.tree_util.tree_map_with_path(label, tree)
    unused = [p for p, u in zip(pats, used, strict=True) if not u]
    if unused:
        raise ValueError(
            f"{what} {unused[0]!r} matches no parameter path"
            + (" not already taken by an earlier one" if len(pats) > 1 else "")
            + f" ({len(unused)} unmatched: {unused}); the paths are:\n  "
            + _paths_listing(paths)
        )
    return labels
