"""Selecting parameters for the transforms: pattern lists and the labels they give each leaf.

Paths and pattern matching themselves live in :mod:`jaxlm.tree` (one definition for the whole
library); ``param_paths`` and ``path_str`` are its ``tree_paths`` and ``path_str`` under the
names this package has always exported. What is here is specific to the transforms: a pattern
or a list of them, and labelling every leaf with the first pattern that matches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

from jaxlm.tree import Patterns, PyTree, compile_pattern, path_str
from jaxlm.tree import tree_paths as param_paths

__all__ = ["Patterns", "as_patterns", "compile_patterns", "match_groups", "param_paths", "path_str"]


def as_patterns(patterns: Patterns) -> list[str]:
    """A single pattern or a sequence of them, as a list (validated as regular expressions)."""
    if not isinstance(patterns, str | Sequence):  # a dict would give its keys, a set no order
        raise TypeError(
            "patterns must be a regular-expression str or a sequence (list, tuple) of them, got "
            f"{patterns!r:.80} ({type(patterns).__name__})"
        )
    out = [patterns] if isinstance(patterns, str) else list(patterns)
    for p in out:
        compile_pattern(p)  # a str, and valid once bounded
        try:  # and valid alone: "a)|(b" compiles once wrapped but would escape the bounds
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
    return out


def compile_patterns(patterns: Patterns) -> list[re.Pattern[str]]:
    """Validated patterns, compiled to match whole path components.

    Args:
      patterns: a regular expression or a sequence of them.

    Returns:
      One :func:`jaxlm.tree.compile_pattern` per pattern, in order (``.search`` them).

    Raises:
      TypeError: not a str or a sequence of str (a dict, say).
      ValueError: a pattern is not a valid regular expression.

    Example:
      >>> [bool(rx.search("layers_10/kernel")) for rx in compile_patterns(["layers_1", "kernel"])]
      [False, True]
    """
    return [compile_pattern(p) for p in as_patterns(patterns)]


def _paths_listing(paths: list[str], limit: int = 40) -> str:
    """The paths of a tree for an error message, cut at ``limit``."""
    shown = paths[:limit]
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return "\n  ".join(shown) + more


def match_groups(tree: PyTree, patterns: Patterns, *, what: str = "pattern") -> PyTree:
    """Labels every leaf with the index of the first pattern its path matches.

    Patterns match whole path components (:func:`jaxlm.tree.compile_pattern`): ``layers_1``
    takes ``layers_1/kernel`` and ``decoder/layers_1/kernel`` but not ``layers_10/kernel``.
    What this adds to optax: ``optax.partition`` and ``optax.masked`` take labels or masks you
    build yourself; this builds them from the tree's own paths, and fails on a pattern that
    selects nothing instead of silently training (or freezing) everything.

    Args:
      tree: a parameter (or gradient) tree.
      patterns: regular expressions, matched against "/"-joined paths as whole components; a
        leaf takes the first one that matches its path.
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
      >>> match_groups({"layers_1": jnp.zeros(2), "layers_10": jnp.zeros(2)}, "layers_1")
      {'layers_1': 0, 'layers_10': -1}
    """
    pats = as_patterns(patterns)
    compiled = compile_patterns(pats)
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
            + f" ({len(unused)} unmatched: {unused}); patterns match whole path components"
            + " (write 'layers_1.*' to match inside one); the paths are:\n  "
            + _paths_listing(paths)
        )
    return labels
