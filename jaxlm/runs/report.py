"""A run's report page: ``report.html``, one self-contained file (no network, the plots inline as
base64 PNG), written by ``python -m jaxlm.runs report DIR`` and by every run at its end.

Sections (each a ``<section id=...>``): ``curves`` (train and validation loss, learning rate),
``throughput`` (tokens/s and any other timing series of the training rows, with medians),
``events`` (health events: metric rows and status.json entries with an ``event`` key),
``final`` (the final metrics, or the latest ones of a run that has not finished), ``sample``
(the generated text) and ``config`` (every field, dotted).
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxlm.errors import RunsError
from jaxlm.monitor import format_duration
from jaxlm.runs import plot
from jaxlm.runs.read import Run, Warn, flatten, load_run, number, stderr

REPORT_FILE = "report.html"
# Training-row series shown as throughput beside tokens/s, when a run logs them.
_TIMING = ("step_time", "step_seconds", "mfu", "memory", "rss", "seconds")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;
background:#f5f6f8}
header{background:#1d2b3a;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d3dd}
main{padding:8px 28px 32px;max-width:1320px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:16px 0;padding:8px 18px}
h2{font-size:16px;margin:8px 0 10px}
img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top;border-bottom:1px solid #eef0f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f0f2f4;padding:10px;white-space:pre-wrap;word-break:break-word;font-size:13px}
.state{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600;background:#888}
.finished{background:#2e7d32}.running,.evaluating,.starting{background:#1565c0}
.failed,.crashed{background:#c62828}.stalled,.preempted,.interrupted,.stopped{background:#ef6c00}
.columns{display:flex;flex-wrap:wrap;gap:0 48px}
.config td{font-family:ui-monospace,monospace;font-size:12px}
.muted{color:#66707a}
"""


def _draw(panels: list[plot.Panel], **kwargs: Any) -> bytes | str:
    """The panels as PNG bytes; without matplotlib, the reason as text (the page has the rest)."""
    try:
        return plot.draw(panels, **kwargs)
    except RunsError as e:
        return str(e)


def _png(data: bytes | str, alt: str) -> str:
    if isinstance(data, str):
        return f'<p class="muted">No plot: {html.escape(data)}</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _fmt(value: Any) -> str:
    v = number(value)
    if v is None:
        return html.escape(str(value))
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.6g}"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] = (), cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            numeric = number(cell) is not None
            cls_ = ' class="num"' if numeric else ""
            cells.append(f"<td{cls_}>{_fmt(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>'


def _curves(run: Run, curves: dict[str, plot.Series]) -> str:
    loss = [
        (name, curves[key])
        for name, key in (("train", "train_loss"), ("validation", "validation_loss"))
        if curves.get(key)
    ]
    lr = [("learning rate", curves["train_lr"])] if curves.get("train_lr") else []
    if not loss and not lr:
        return '<p class="muted">No training metrics were logged.</p>'
    if all(len(series) < 2 for _, series in loss + lr):  # an n-gram run: one evaluation
        return '<p class="muted">One evaluation, no curve: its numbers are below.</p>'
    marks = [e["step"] for e in run.events if isinstance(e.get("step"), int)]
    png = _draw(
        [("loss", loss), (plot.TITLES["train_lr"], lr)],
        columns=2,
        panel_size=(6.0, 3.4),
        marks=marks,
    )
    return _png(png, f"loss and learning rate of {run.name}")


def _throughput(run: Run, curves: dict[str, plot.Series]) -> str:
    names = ["train_tokens_per_s"] + sorted(
        k for k in curves if k.startswith("train_") and any(t in k for t in _TIMING)
    )
    names = [n for n in names if curves.get(n)]
    if not names:
        return '<p class="muted">No throughput was logged.</p>'
    panels = [(plot.TITLES.get(n, n.replace("_", " ")), [(run.name, curves[n])]) for n in names]
    png = _draw(panels, columns=3, panel_size=(4.0, 2.8))
    rows = []
    for n in names:
        values = [v for _, v in curves[n] if math.isfinite(v)]
        if values:
            rows.append([n.removeprefix("train_"), statistics.median(values), values[-1]])
    times = [number(r.get("time")) for r in run.split_rows("train")]
    times = [t for t in times if t is not None]
    if len(times) > 1:
        rows.append(
            ["wall time, first to last train row", format_duration(times[-1] - times[0]), ""]
        )
    return _png(png, f"throughput of {run.name}") + _table(rows, ("series", "median", "last"))


def _events(run: Run) -> str:
    events = run.events
    if not events:
        return '<p class="muted">None recorded.</p>'
    rows = []
    for e in events:
        rest = {k: v for k, v in e.items() if k not in ("step", "event", "split", "time")}
        detail = ", ".join(f"{k}={_fmt(v)}" for k, v in rest.items())
        rows.append([e.get("step", "-"), e["event"], detail])
    return _table(rows, ("step", "event", "details"))


_NGRAM = ("build_seconds", "num_ngrams", "discounts")  # the final report's n-gram entries


def _ngram(run: Run) -> str:
    """An n-gram run's model: its n-grams and discounts per order, and the build time."""
    final = run.final
    counts = final.get("num_ngrams") or []
    discounts = final.get("discounts") or []
    cfg = run.config.get("model", {}) if isinstance(run.config.get("model"), dict) else {}
    rows = []
    for n, count in enumerate(counts, 1):
        d = discounts[n - 1] if n - 1 < len(discounts) else []
        shown = ", ".join(f"{x:.4f}" for x in d) if isinstance(d, list) else str(d)
        rows.append([n, count, shown or "-"])
    seconds = number(final.get("build_seconds"))
    about = (
        f"<p>{html.escape(str(cfg.get('method', '')))}, order {len(counts)}"
        + (f", built in {seconds:.2f} s" if seconds is not None else "")
        + ".</p>"
    )
    return about + _table(rows, ("order", "n-grams", "discounts"))


def _final(run: Run) -> str:
    final = {k: v for k, v in run.final.items() if k != "sample"}
    if run.model == "ngram":
        final = {k: v for k, v in final.items() if k not in _NGRAM}
    if final:
        return _split_table(final)
    status = run.status or {}
    latest = {
        k: v
        for k, v in status.items()
        if k.startswith(("train_", "eval_", "validation_", "test_")) and number(v) is not None
    }
    state = html.escape(run.state)
    if not latest:
        return f'<p class="muted">The run has not finished ({state}): no metrics yet.</p>'
    note = f'<p class="muted">The run has not finished ({state}); its latest metrics:</p>'
    return note + _split_table(latest)


_SPLITS = ("validation", "test", "eval", "train")


def _split_table(metrics: dict[str, Any]) -> str:
    """``validation_loss``, ``test_loss``, ... as one row per metric, one column per split;
    the other entries (step, stop reason, mixture shares) in a table of their own."""
    by_split: dict[str, dict[str, Any]] = {}
    other = []
    for key, value in metrics.items():
        split = next((s for s in _SPLITS if key.startswith(f"{s}_")), None)
        if split is None:
            other.append([key, value])
        else:
            by_split.setdefault(split, {})[key[len(split) + 1 :]] = value
    splits = [s for s in _SPLITS if s in by_split]
    names = list(dict.fromkeys(k for s in splits for k in by_split[s]))
    rows = [[n, *(by_split[s].get(n, "-") for s in splits)] for n in names]
    out = _table(rows, ("metric", *splits)) if rows else ""
    return out + (_table(other) if other else "")


def _sample(run: Run) -> str:
    sample = run.sample
    if not sample:
        return (
            '<p class="muted">No sample (config.train.sample_tokens = 0, or the run has '
            "not finished).</p>"
        )
    return f"<pre>{html.escape(sample)}</pre>"


def _config(run: Run) -> str:
    if not run.config:
        return '<p class="muted">No config.json.</p>'
    rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(run.config).items()]
    half = (len(rows) + 1) // 2
    tables = []
    for part in (rows[:half], rows[half:]):
        cells = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in part
        )
        tables.append(f'<table class="config">{cells}</table>')
    return f'<div class="columns">{"".join(tables)}</div>'


def render(run: Run) -> str:
    """The report page of a run, as HTML text.

    Args:
      run: from :func:`jaxlm.runs.read.load_run`.

    Returns:
      The page: inline CSS and images, no reference to anything outside it.
    """
    curves = plot.series(run)
    step, total = run.step, run.total_steps
    state = html.escape(run.state)
    why = f" &mdash; {html.escape(run.error)}" if run.error else ""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.now))
    head = (
        f'<header><h1>{html.escape(run.name)}</h1><p><span class="state {state}">{state}'
        f"</span>{why} &middot; step {step if step is not None else '-'}/"
        f"{total if total is not None else '?'} &middot; model {html.escape(run.model)} "
        f"&middot; {html.escape(str(run.path))} &middot; report of {made}</p></header>"
    )
    counted = run.model == "ngram" and "num_ngrams" in run.final  # no steps: the model instead
    sections = [
        *(
            [_section("model", "Model", _ngram(run))]
            if counted
            else [
                _section("curves", "Loss and learning rate", _curves(run, curves)),
                _section("throughput", "Throughput", _throughput(run, curves)),
            ]
        ),
        _section("events", "Health events", _events(run)),
        _section("final", "Final metrics", _final(run)),
        _section("sample", "Generated sample", _sample(run)),
        _section("config", "Config", _config(run)),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(run.name)}: jaxlm run report</title><style>{_CSS}</style>"
        f"</head><body>{head}<main>{''.join(sections)}</main></body></html>\n"
    )


def write_report(
    workdir: str | Path, *, out: str | Path | None = None, warn: Warn = stderr
) -> Path:
    """Writes the report page of the run in ``workdir``.

    Args:
      workdir: the run folder.
      out: where (default: ``workdir/report.html``).
      warn: told about damaged files of the run.

    Returns:
      The page's path.

    Example:
      >>> write_report("runs/smoke")  # doctest: +SKIP
      PosixPath('runs/smoke/report.html')
    """
    workdir = Path(workdir)
    run = load_run(workdir, workdir.resolve().name, warn=warn)
    path = Path(out) if out is not None else workdir / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    page = render(run)
    try:
        tmp.write_text(page)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunsError(f"{path}: cannot write the report ({e}); give --out=FILE") from None
    return path
