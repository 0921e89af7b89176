"""Compares two checkpoints leaf by leaf: which arrays differ, and by how much."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxlm.checkpoints.layout import PathLike, resolve
from jaxlm.checkpoints.read import load_state
from jaxlm.tree import flatten


def diff(
    a: PathLike, b: PathLike, *, step_a: int | None = None, step_b: int | None = None
) -> dict[str, Any]:
    """Compares two checkpoints leaf by leaf.

    The relative difference of two values is ``|x - y| / max(|x|, |y|)`` (0 where both are 0).

    Args:
      a: a checkpoint path (see :func:`resolve`).
      b: another.
      step_a: which checkpoint of ``a`` when it is a run folder.
      step_b: which checkpoint of ``b``.

    Returns:
      A JSON-ready dict: ``a``, ``b``, ``leaves`` (``path``, ``shape``, ``dtype``,
      ``max_abs``, ``max_rel``, ``equal``), ``only_in_a``, ``only_in_b``, ``mismatched``
      (shape or dtype), the overall ``max_abs``/``max_rel`` and ``identical`` (every leaf
      present in both, same shape, dtype and bits).

    Example:
      >>> diff("runs/resumed", "runs/straight")["identical"]  # doctest: +SKIP
      True
    """
    ca, cb = resolve(a, step_a), resolve(b, step_b)
    sa, _ = load_state(ca)
    sb, _ = load_state(cb)
    fa, fb = flatten(sa), flatten(sb)
    leaves, mismatched = [], []
    for name in [n for n in fa if n in fb]:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            mismatched.append(
                {
                    "path": name,
                    "a": [list(x.shape), x.dtype.name],
                    "b": [list(y.shape), y.dtype.name],
                }
            )
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        d = np.abs(x64 - y64)
        scale = np.maximum(np.abs(x64), np.abs(y64))
        rel = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
        leaves.append(
            {
                "path": name,
                "shape": list(x.shape),
                "dtype": x.dtype.name,
                "max_abs": float(d.max()) if d.size else 0.0,
                "max_rel": float(rel.max()) if rel.size else 0.0,
                "equal": x.tobytes() == y.tobytes(),
            }
        )
    only_a = [n for n in fa if n not in fb]
    only_b = [n for n in fb if n not in fa]
    return {
        "a": str(ca),
        "b": str(cb),
        "leaves": leaves,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "mismatched": mismatched,
        "max_abs": max((r["max_abs"] for r in leaves), default=0.0),
        "max_rel": max((r["max_rel"] for r in leaves), default=0.0),
        "identical": not (only_a or only_b or mismatched) and all(r["equal"] for r in leaves),
    }


def format_diff(report: dict[str, Any], *, all_leaves: bool = False) -> str:
    """The human-readable text of a :func:`diff` report.

    Args:
      report: from :func:`diff`.
      all_leaves: list equal leaves too (else only those that differ).

    Returns:
      Multi-line text.
    """
    lines = [f"a: {report['a']}", f"b: {report['b']}"]
    rows = [r for r in report["leaves"] if all_leaves or not r["equal"]]
    if rows:
        width = max(len(r["path"]) for r in rows)
        lines.append(f"{'path':<{width}}  {'max abs':>12} {'max rel':>12}")
        for r in rows:
            lines.append(f"{r['path']:<{width}}  {r['max_abs']:>12.6g} {r['max_rel']:>12.6g}")
    for key in ("only_in_a", "only_in_b", "mismatched"):
        for item in report[key]:
            lines.append(f"{key}: {item}")
    n_diff = sum(not r["equal"] for r in report["leaves"])
    verdict = "identical" if report["identical"] else f"{n_diff} of {len(report['leaves'])} differ"
    lines.append(
        f"{verdict}; max abs diff {report['max_abs']:.6g}, max rel diff {report['max_rel']:.6g}"
    )
    return "\n".join(lines)
