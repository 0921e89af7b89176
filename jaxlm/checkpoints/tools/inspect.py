"""Describes a checkpoint from its metadata alone: step, config, tokenizer, every array's shape.

Reads orbax's array metadata and the meta JSON, never the array data, so a 100M-parameter
checkpoint is described in a fraction of a second (``benchmarks/inspect_large.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxlm.checkpoints.layout import PathLike, list_steps, resolve, step_of
from jaxlm.checkpoints.meta import read_meta
from jaxlm.checkpoints.read import metadata_tree
from jaxlm.tree import flatten


def _size(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def inspect(path: PathLike, step: int | None = None) -> dict[str, Any]:
    """Describes a checkpoint from its metadata alone, without reading any array data.

    Args:
      path: a checkpoint path (see :func:`resolve`).
      step: which checkpoint of a run folder.

    Returns:
      A JSON-ready dict: ``directory``, ``step``, ``steps`` (all checkpoints of the run),
      ``config`` (model, data and training summary; the full config is in ``meta``),
      ``tokenizer`` (kind and vocabulary size), ``leaves`` (one entry per array: ``path``,
      ``shape``, ``dtype``, ``size``, ``bytes``) and ``totals`` per top-level part
      (``params``, ``opt_state``, ...) and overall (``count`` of elements and ``bytes``).

    Example:
      >>> report = inspect("runs/lstm_smoke")  # doctest: +SKIP
      >>> report["tokenizer"]  # doctest: +SKIP
      {'kind': 'char', 'vocab_size': 104}
    """
    ckpt = resolve(path, step)
    meta = read_meta(ckpt)
    tree = metadata_tree(ckpt)
    leaves = []
    totals: dict[str, dict[str, int]] = {}
    for name, m in flatten(tree).items():
        dtype = np.dtype(m.dtype)
        size = _size(m.shape)
        leaves.append(
            {
                "path": name,
                "shape": list(m.shape),
                "dtype": dtype.name,
                "size": size,
                "bytes": size * dtype.itemsize,
            }
        )
        part = totals.setdefault(name.split("/")[0], {"leaves": 0, "count": 0, "bytes": 0})
        part["leaves"] += 1
        part["count"] += size
        part["bytes"] += size * dtype.itemsize
    totals["all"] = {k: sum(t[k] for t in totals.values()) for k in ("leaves", "count", "bytes")}
    config = meta.get("config", {})
    tokenizer = meta.get("tokenizer", {})
    return {
        "directory": str(ckpt),
        "step": step_of(ckpt),
        "steps": list_steps(ckpt.parent) if ckpt.parent.name == "checkpoints" else [],
        "config": _config_summary(config),
        "tokenizer": {"kind": tokenizer.get("kind"), "vocab_size": _vocab_size(tokenizer)},
        "leaves": leaves,
        "totals": totals,
    }


def _vocab_size(tokenizer: dict) -> int | None:
    """The vocabulary size from a tokenizer's JSON without building it."""
    from jaxlm.data.tokenizers import tokenizer_from_json

    try:
        return int(tokenizer_from_json(tokenizer).vocab_size)
    except Exception:  # an unknown or newer tokenizer kind: report what can be seen
        if isinstance(tokenizer.get("vocab_size"), int):
            return tokenizer["vocab_size"]
        for key in ("vocab", "chars", "words", "tokens"):
            if isinstance(tokenizer.get(key), list):
                return len(tokenizer[key])
        return None


def _config_summary(config: dict) -> dict[str, Any]:
    model = dict(config.get("model", {}))
    data = config.get("data", {})
    train = config.get("train", {})
    return {
        "name": config.get("name"),
        "model": model,
        "precision": config.get("precision"),
        "data": {k: data.get(k) for k in ("corpus", "path", "tokenizer", "batch_size", "seq_len")},
        "optimizer": {k: config.get("optimizer", {}).get(k) for k in ("name", "learning_rate")},
        "num_steps": train.get("num_steps"),
        "parallel": config.get("parallel"),
    }


def format_inspect(report: dict[str, Any], *, parts: Iterable[str] = ("params",)) -> str:
    """The human-readable text of an :func:`inspect` report.

    Args:
      report: from :func:`inspect`.
      parts: top-level parts whose leaves are listed one per line (all parts are totalled).

    Returns:
      Multi-line text.
    """
    c = report["config"]
    m = c.get("model", {})
    if "hidden_sizes" in m and m.get("name") in ("lstm", "gru", "rnn"):
        model_keys = ("name", "embed_dim", "hidden_sizes", "tie_embeddings")
    else:
        model_keys = (
            "name",
            "embed_dim",
            "num_layers",
            "num_heads",
            "mlp_dim",
            "norm",
            "positions",
            "tie_embeddings",
        )
    model_desc = ", ".join(f"{k}={m[k]}" for k in model_keys if k in m)
    lines = [
        f"checkpoint {report['directory']} (step {report['step']}; run steps {report['steps']})",
        f"config: {c.get('name')}: {model_desc}; precision {c.get('precision')}",
        f"data: {c.get('data')}; {c.get('num_steps')} steps",
        f"tokenizer: {report['tokenizer']['kind']}, vocabulary {report['tokenizer']['vocab_size']}",
    ]
    parts = tuple(parts)
    rows = [leaf for leaf in report["leaves"] if leaf["path"].split("/")[0] in parts]
    if rows:
        width = max(len(r["path"]) for r in rows)
        lines.append(f"{'path':<{width}}  {'shape':<16} {'dtype':<9} {'size':>12}")
        for r in rows:
            shape = str(tuple(r["shape"]))
            lines.append(f"{r['path']:<{width}}  {shape:<16} {r['dtype']:<9} {r['size']:>12,}")
    for part, t in report["totals"].items():
        lines.append(
            f"total {part}: {t['count']:,} values in {t['leaves']} arrays, "
            f"{t['bytes'] / 2**20:,.2f} MiB"
        )
    return "\n".join(lines)
