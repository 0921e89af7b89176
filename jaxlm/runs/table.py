"""The runs table: one row per run, as text that fits the terminal or as JSON-ready dicts.

Columns in order of importance: name and state first, then step, losses, model, throughput,
ETA and the heartbeat's age; a narrow terminal drops the least important columns, then
truncates the name (:func:`fit`).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from typing import Any

from jaxlm.monitor import format_duration
from jaxlm.runs.read import Run

# (key, header, priority: lower stays longer, right-aligned)
COLUMNS = (
    ("name", "name", 0, False),
    ("state", "state", 0, False),
    ("progress", "step", 1, True),
    ("train_loss", "train loss", 2, True),
    ("best_validation_loss", "best val", 2, True),
    ("model", "model", 3, False),
    ("tokens_per_s", "tok/s", 4, True),
    ("eta", "ETA", 5, True),
    ("heartbeat", "beat", 6, True),
)


def summary(run: Run) -> dict[str, Any]:
    """A run's row as JSON-ready values (None where unknown).

    Example:
      >>> from pathlib import Path
      >>> run = Run(Path("r"), "r", {"model": {"name": "lstm"}}, {"state": "finished",
      ...     "step": 60, "total_steps": 60, "final": {}}, [], "finished")
      >>> s = summary(run); s["model"], s["step"], s["state"]
      ('lstm', 60, 'finished')
    """
    return {
        "name": run.name,
        "path": str(run.path),
        "model": run.model,
        "state": run.state,
        "step": run.step,
        "total_steps": run.total_steps,
        "train_loss": run.last("train", "loss"),
        "best_validation_loss": run.best_validation_loss,
        "tokens_per_s": run.tokens_per_s,
        "eta_seconds": run.eta_seconds,
        "heartbeat_age_seconds": run.heartbeat_age,
        "error": run.error or None,
        "job": run.job,
    }


def age(seconds: float | None) -> str:
    """``75`` -> ``"1m"``: a short age (s, m, h, d); ``"-"`` when unknown.

    Example:
      >>> [age(s) for s in (4.2, 75, 7300, 200000, None)]
      ['4s', '1m', '2h', '2d', '-']
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cells(row: dict[str, Any]) -> dict[str, str]:
    """A summary row as the table's text cells."""
    step, total = row["step"], row["total_steps"]
    state = row["state"]
    if row.get("job"):
        state = f"{state} (job {row['job']['id']})"
    return {
        "name": row["name"],
        "state": state,
        "progress": f"{'-' if step is None else step}/{'?' if total is None else total}",
        "train_loss": _num(row["train_loss"], ".4f"),
        "best_validation_loss": _num(row["best_validation_loss"], ".4f"),
        "model": row["model"],
        "tokens_per_s": _num(row["tokens_per_s"], ",.0f"),
        "eta": "-" if row["eta_seconds"] is None else format_duration(row["eta_seconds"]),
        "heartbeat": age(row["heartbeat_age_seconds"]),
    }


def fit(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    priority: Sequence[int],
    width: int,
    *,
    right: Sequence[bool] = (),
    shrink: int = 0,
) -> list[str]:
    """Lines of a table no wider than ``width``: the columns of highest ``priority`` number
    dropped first (the rightmost of equals), then column ``shrink`` truncated with ``~``.

    Args:
      header: the column titles.
      rows: the cells.
      priority: per column; the columns of priority 0 are never dropped.
      width: the most characters per line.
      right: per column, whether it is right-aligned.
      shrink: the column truncated when dropping is not enough.

    Returns:
      The header line and one line per row.

    Example:
      >>> print("\\n".join(fit(["name", "a", "b"], [["long-name", "1", "2"]], [0, 1, 2], 14)))
      name       a
      long-name  1
      >>> fit(["name", "a"], [["long-name", "1"]], [0, 0], 9)[1]
      'long-~  1'
    """
    keep = list(range(len(header)))
    right = list(right) or [False] * len(header)

    def widths(cols: list[int]) -> dict[int, int]:
        return {c: max(len(header[c]), *(len(r[c]) for r in rows)) for c in cols}

    def total(w: dict[int, int]) -> int:
        return sum(w.values()) + 2 * (len(w) - 1)

    w = widths(keep)
    while total(w) > width:
        droppable = [c for c in keep if priority[c] > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: (priority[c], c))
        keep.remove(worst)
        w = widths(keep)
    over = total(w) - width
    if over > 0 and shrink in w:
        w[shrink] = max(4, w[shrink] - over)

    def line(cells_: Sequence[str]) -> str:
        out = []
        for c in keep:
            text = cells_[c]
            if len(text) > w[c]:
                text = text[: w[c] - 1] + "~"
            out.append(text.rjust(w[c]) if right[c] else text.ljust(w[c]))
        return "  ".join(out).rstrip()

    return [line(header), *(line(r) for r in rows)]


def terminal_width() -> int:
    """The terminal's columns (``$COLUMNS`` wins; 100 when not a terminal)."""
    return shutil.get_terminal_size((100, 24)).columns


def render(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    """The runs table as text fitting ``width`` (default: the terminal's)."""
    width = terminal_width() if width is None else width
    text = [cells(r) for r in rows]
    header = [c[1] for c in COLUMNS]
    body = [[t[c[0]] for c in COLUMNS] for t in text]
    lines = fit(
        header,
        body,
        [c[2] for c in COLUMNS],
        width,
        right=[c[3] for c in COLUMNS],
        shrink=0,
    )
    return "\n".join(lines)
