"""Curves of runs as PNG through matplotlib (Agg, no display): one panel per metric, a line per
run.

Metric names are ``<split>_<key>`` of ``metrics.jsonl``'s rows (``train_loss``, ``train_lr``,
``validation_loss``, ...); the evaluations during training (split ``eval``) and the final
whole-split one count as ``validation``. ``learning_rate``, ``grad_norm`` and ``tokens_per_s``
name the training rows' ``lr``, ``grad_norm`` and ``tokens_per_s``.

matplotlib is imported when a figure is drawn (about a second on a busy CPU), never before:
listing runs does not pay for it. Figures are ``matplotlib.figure.Figure`` objects drawn on an
Agg canvas, without pyplot's global state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from jaxlm.errors import RunsError
from jaxlm.runs.read import Run, number

DEFAULT_PANELS = ("train_loss", "validation_loss", "learning_rate", "grad_norm", "tokens_per_s")
ALIASES = {
    "loss": "train_loss",
    "lr": "train_lr",
    "learning_rate": "train_lr",
    "grad_norm": "train_grad_norm",
    "gradient_norm": "train_grad_norm",
    "tokens_per_s": "train_tokens_per_s",
    "eval_loss": "validation_loss",
}
TITLES = {
    "train_loss": "train loss",
    "validation_loss": "validation loss",
    "train_lr": "learning rate",
    "train_grad_norm": "gradient norm",
    "train_tokens_per_s": "tokens/s (training)",
}
_NOT_METRICS = ("step", "split", "time", "event")
Series = list[tuple[int, float]]


def series(run: Run) -> dict[str, Series]:
    """Every metric of a run as ``(step, value)`` points in step order (a step logged twice:
    the last value).

    Example:
      >>> from pathlib import Path
      >>> rows = [{"step": 10, "split": "train", "loss": 2.0}, {"step": 10, "split": "eval",
      ...     "loss": 2.5}, {"step": 20, "split": "train", "loss": 1.5}]
      >>> s = series(Run(Path("r"), "r", {}, None, rows, "unknown"))
      >>> s["train_loss"], s["validation_loss"]
      ([(10, 2.0), (20, 1.5)], [(10, 2.5)])
    """
    points: dict[str, dict[int, float]] = {}
    for row in run.rows:
        split = row.get("split")
        if not isinstance(split, str) or "event" in row:
            continue
        split = "validation" if split == "eval" else split
        for key, value in row.items():
            value = number(value)
            if key in _NOT_METRICS or value is None:
                continue
            points.setdefault(f"{split}_{key}", {})[row["step"]] = value
    return {name: sorted(p.items()) for name, p in points.items()}


def canonical(name: str) -> str:
    """A metric name with its alias resolved (``lr`` -> ``train_lr``)."""
    return ALIASES.get(name, name)


def known_metrics(runs: Sequence[Run]) -> list[str]:
    """The metric names ``--metric`` takes for these runs: the aliases and every series."""
    names = {n for r in runs for n in series(r)} | set(ALIASES) | set(DEFAULT_PANELS)
    return sorted(names)


def choose(requested: Sequence[str], runs: Sequence[Run]) -> list[str]:
    """The panels to draw: the default ones, or those ``requested`` (a ``+name`` adds a panel
    to the default ones); canonical names, each once.

    Raises:
      RunsError: a name is no metric of these runs (the message lists the known ones).

    Example:
      >>> choose(["lr"], []), choose(["validation_loss,lr"], [])
      (['train_lr'], ['validation_loss', 'train_lr'])
      >>> choose(["nope"], [])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.RunsError: --metric: unknown metric 'nope'; known: eval_loss, grad_norm, ...
    """
    names = [n.strip() for r in requested for n in r.split(",") if n.strip()]
    adding = [n[1:] for n in names if n.startswith("+")]
    only = [n for n in names if not n.startswith("+")]
    known = known_metrics(runs)
    for name in adding + only:
        if name not in known and canonical(name) not in known:
            raise RunsError(f"--metric: unknown metric {name!r}; known: {', '.join(known)}")
    panels = list(only) if only else [*DEFAULT_PANELS, *adding]
    out: list[str] = []
    for name in panels:
        name = canonical(name)
        if name not in out:
            out.append(name)
    return out


Panel = tuple[str, list[tuple[str, Series]]]  # title, (label, points) per line


def panels_for(runs: Sequence[Run], metrics: Sequence[str]) -> list[Panel]:
    """One panel per metric, one line per run that has it."""
    curves = [series(r) for r in runs]
    return [
        (
            TITLES.get(m, m.replace("_", " ")),
            [(r.name, c[m]) for r, c in zip(runs, curves, strict=True) if c.get(m)],
        )
        for m in metrics
    ]


def draw(
    panels: Sequence[Panel],
    *,
    columns: int = 3,
    panel_size: tuple[float, float] = (4.2, 3.0),
    dpi: int = 100,
    marks: Sequence[int] = (),
) -> bytes:
    """A PNG of panels of lines, with one legend for the figure.

    Args:
      panels: ``(title, [(label, [(step, value), ...]), ...])`` each.
      columns: panels per row at most.
      marks: steps marked with a dotted vertical line on every panel (health events).
      panel_size: inches per panel.
      dpi: resolution.

    Returns:
      The PNG's bytes.

    Raises:
      RunsError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise RunsError(f"plots need matplotlib ({e}): pip install 'jaxlm[runs]'") from None

    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours: dict[str, str] = {}
    cycle = [f"C{i}" for i in range(10)]
    for ax, (title, lines) in zip(axes, panels, strict=False):
        for label, points in lines:
            steps, values = zip(*points, strict=True)
            colour = colours.setdefault(label, cycle[len(colours) % len(cycle)])
            marker = "o" if len(points) <= 12 else None
            ax.plot(steps, values, marker=marker, markersize=3, label=label, color=colour)
        for i, step in enumerate(sorted(set(marks))):
            label = "health event" if i == 0 else None
            ax.axvline(step, color="#c62828", linestyle=":", linewidth=1, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        values = [v for _, points in lines for _, v in points if math.isfinite(v)]
        if values and min(values) > 0 and max(values) / min(values) > 100:
            ax.set_yscale("log")  # runs on different scales (SGD's rate 20 beside Adam's 1e-3)
        elif title == TITLES["train_lr"]:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = {}
    for ax in axes[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    top = 1.0
    if len(handles) > 1:  # one line needs no legend: the caption names it
        legend_rows = math.ceil(len(handles) / 4)
        top = 1 - 0.3 * legend_rows / (panel_size[1] * rows)
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=4, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, top))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def figure_png(runs: Sequence[Run], metrics: Sequence[str], **kwargs) -> bytes:
    """A PNG with one panel per metric and one line per run (``kwargs``: :func:`draw`'s)."""
    return draw(panels_for(runs, metrics), **kwargs)


def write_plot(runs: Sequence[Run], requested: Sequence[str], out: str | Path) -> list[str]:
    """Writes the runs' curves to the PNG ``out``; returns the metrics drawn.

    Raises:
      RunsError: an unknown metric, or ``out`` cannot be written.
    """
    metrics = choose(requested, runs)
    png = figure_png(runs, metrics)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
    except OSError as e:
        raise RunsError(f"--out={out}: cannot write the plot ({e})") from None
    return metrics
