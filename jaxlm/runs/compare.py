"""Runs side by side: the config fields that differ (dotted keys) and the final metrics.

What this adds to a diff of two ``config.json``: any number of runs at once, only the fields
that differ, and each run's final metrics (and best validation loss, throughput) in the same
columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from jaxlm.runs.read import Run, flatten, number
from jaxlm.runs.table import fit, terminal_width

ABSENT = "<absent>"
# Final metrics in this order first; the rest of the numeric ones after, by name.
FIRST = ("step", "validation_loss", "validation_bits", "test_loss", "test_bits")


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The dotted config keys whose values are not the same in all runs, with each run's value
    (:data:`ABSENT` where a run lacks the key).

    Example:
      >>> from pathlib import Path
      >>> a = Run(Path("a"), "a", {"seed": 0, "model": {"name": "lstm"}}, None, [], "unknown")
      >>> b = Run(Path("b"), "b", {"seed": 1, "model": {"name": "lstm"}}, None, [], "unknown")
      >>> config_differences([a, b])
      {'seed': [0, 1]}
    """
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    out = {}
    for key in keys:
        values = [f.get(key, ABSENT) for f in flat]
        if any(json.dumps(v) != json.dumps(values[0]) for v in values[1:]):
            out[key] = values
    return out


def final_metrics(runs: Sequence[Run]) -> dict[str, list[float | None]]:
    """Each run's final numeric metrics (status.json's ``final``), best validation loss and
    last tokens/s, by name; None where a run has no such value."""
    finals = [{k: number(v) for k, v in r.final.items() if number(v) is not None} for r in runs]
    names = [k for k in FIRST if any(k in f for f in finals)]
    names += sorted({k for f in finals for k in f} - set(names))
    out: dict[str, list[float | None]] = {k: [f.get(k) for f in finals] for k in names}
    out["best_validation_loss"] = [r.best_validation_loss for r in runs]
    out["tokens_per_s"] = [r.tokens_per_s for r in runs]
    return out


def comparison(runs: Sequence[Run]) -> dict[str, Any]:
    """What ``runs compare --json`` prints: run names, states, config differences, finals."""
    return {
        "runs": [r.name for r in runs],
        "paths": [str(r.path) for r in runs],
        "states": [r.state for r in runs],
        "config": config_differences(runs),
        "final": final_metrics(runs),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.5g}"
    if value == "":
        return '""'
    return value if isinstance(value, str) else json.dumps(value)


def render(runs: Sequence[Run], width: int | None = None) -> str:
    """The comparison as two tables (config differences, final metrics) fitting ``width``.

    The key column keeps its width (up to half the line); the runs share the rest, their
    values truncated with ``~``; runs past what fits at 8 characters each are dropped from the
    right.
    """
    width = terminal_width() if width is None else width
    data = comparison(runs)
    out = []
    sections = (("config", data["config"]), ("final", data["final"]))
    for title, table in sections:
        heading = "config differences" if title == "config" else "final metrics"
        if not table:
            out.append(f"{heading}: none")
            continue
        rows = [[key, *(_cell(v) for v in values)] for key, values in table.items()]
        key_width = min(max(len(title), *(len(r[0]) for r in rows)), max(8, width // 2))
        budget = max(8, (width - key_width - 2 * len(runs)) // max(1, len(runs)))
        rows = [[_cut(r[0], key_width), *(_cut(c, budget) for c in r[1:])] for r in rows]
        header = [title, *(_cut(n, budget) for n in data["runs"])]
        priority = [0, 0, *range(1, len(runs))]  # the first run stays
        out.append(f"{heading}:")
        out.extend(fit(header, rows, priority, width, shrink=0))
        out.append("")
    return "\n".join(out).rstrip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"
