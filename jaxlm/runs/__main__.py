"""Command line: ``python -m jaxlm.runs`` (also installed as ``jaxlm-runs``).

Verbs:
  list [DIR...]            the runs table (default DIR: runs/), searched recursively
  show DIR                 everything about one run: config, state, metrics, events, checkpoints
  compare A B ...          config differences (dotted keys) and final metrics side by side
  plot A B ... --out=F     PNG curves: train and validation loss, learning rate, gradient
                           norm, tokens/s (--metric=NAME selects panels, --metric=+NAME adds one)
  watch [DIR...]           the table, refreshed every --interval seconds (Ctrl-C stops)
  report DIR               writes DIR/report.html (self-contained; --out=FILE elsewhere)

Examples:
  python -m jaxlm.runs list runs/
  python -m jaxlm.runs compare runs/lstm runs/transformer
  python -m jaxlm.runs plot runs/lstm runs/transformer --metric=validation_loss --out=plot.png
  python -m jaxlm.runs report runs/lstm

States: finished, running, evaluating, stalled (alive, but its step has not moved for
--stall_after seconds), crashed (its status says running but its process is gone, or its
heartbeat stopped), failed, preempted, interrupted, stopped; a run that was a job of the balancer
shows the job's state where that says more (queued for a restart, cancelled, failed). ``--json``
prints JSON for scripts. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxlm.errors import JaxlmError

STALL_AFTER = 600.0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--verbose", action="store_true", help="tracebacks of expected errors")
    live = argparse.ArgumentParser(add_help=False)
    live.add_argument(
        "--stall_after",
        type=float,
        default=STALL_AFTER,
        help=f"seconds without a step before a live run is stalled (default {STALL_AFTER:g})",
    )
    live.add_argument(
        "--queue",
        action="append",
        default=[],
        help="a job queue folder whose journal knows these runs (default: any under DIR, "
        "$JAXLM_JOBS_DIR, runs/jobs)",
    )
    p = argparse.ArgumentParser(
        prog="python -m jaxlm.runs",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", parents=[common, live], help="the runs table")
    ls.add_argument("dirs", nargs="*", default=["runs"], metavar="DIR")
    show = verbs.add_parser("show", parents=[common, live], help="one run in full")
    show.add_argument("dir", metavar="DIR")
    cmp_ = verbs.add_parser("compare", parents=[common], help="runs side by side")
    cmp_.add_argument("dirs", nargs="+", metavar="RUN")
    pl = verbs.add_parser("plot", parents=[common], help="curves as a PNG")
    pl.add_argument("dirs", nargs="+", metavar="RUN")
    pl.add_argument(
        "--metric", action="append", default=[], help="panels: NAME[,NAME]; +NAME adds one"
    )
    pl.add_argument("--out", default="plot.png", help="the PNG to write (default plot.png)")
    watch = verbs.add_parser("watch", parents=[common, live], help="a refreshing table")
    watch.add_argument("dirs", nargs="*", default=["runs"], metavar="DIR")
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    watch.add_argument("--once", action="store_true", help="draw once and exit")
    rep = verbs.add_parser("report", parents=[common], help="write report.html")
    rep.add_argument("dir", metavar="DIR")
    rep.add_argument("--out", default=None, help="where (default DIR/report.html)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit status."""
    args = _parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except JaxlmError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # | head: the reader had enough
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def _table_runs(dirs: Sequence[str], args: argparse.Namespace) -> list:
    from jaxlm.runs import journal, read

    runs = read.load_runs(dirs, stall_after=args.stall_after)
    journals = read.find_journals(dirs) + [Path(q) for q in args.queue]
    journals += journal.default_queues()
    journals = list(dict.fromkeys(p.resolve() for p in journals))
    if journals:
        journal.attach(runs, journal.job_records(journals))
    return runs


def _list(args: argparse.Namespace) -> int:
    from jaxlm.runs import table

    rows = [table.summary(r) for r in _table_runs(args.dirs, args)]
    if args.json:
        _print_json(rows)
    else:
        print(table.render(rows))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from jaxlm.runs import table

    while True:
        rows = [table.summary(r) for r in _table_runs(args.dirs, args)]
        if args.json:
            print(json.dumps(rows, default=str), flush=True)
        else:
            stamp = time.strftime("%H:%M:%S")
            print("\x1b[2J\x1b[H", end="")  # clear the screen, cursor home
            print(f"jaxlm runs in {' '.join(args.dirs)} at {stamp} (every {args.interval:g}s)")
            print(table.render(rows), flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


def _one(folder: str, args: argparse.Namespace) -> Any:
    from jaxlm.errors import RunsError
    from jaxlm.runs import read

    path = Path(folder)
    if path.is_dir() and not read.is_run(path):
        raise RunsError(
            f"{path}: not a run folder (it holds none of {', '.join(read.RUN_FILES)}); "
            f"python -m jaxlm.runs list {path} lists the runs under it"
        )
    runs = _table_runs([folder], args)
    return runs[0]


def _show(args: argparse.Namespace) -> int:
    from jaxlm.runs import table

    run = _one(args.dir, args)
    last = {s: _last_row(run, s) for s in ("train", "eval", "validation", "test")}
    data = {
        "summary": table.summary(run),
        "config": run.config,
        "status": run.status,
        "last": {s: row for s, row in last.items() if row},
        "events": run.events,
        "checkpoints": run.checkpoints,
        "sample": run.sample,
    }
    if args.json:
        _print_json(data)
        return 0
    width = table.terminal_width()
    print("\n".join(_show_lines(run, data, width)))
    return 0


def _last_row(run: Any, split: str) -> dict[str, Any]:
    rows = run.split_rows(split)
    return rows[-1] if rows else {}


_CONFIG_KEYS = {
    "data": ("corpus", "path", "tokenizer", "vocab_size", "batch_size", "seq_len"),
    "optimizer": ("name", "learning_rate", "schedule", "warmup_steps", "clip_norm"),
    "train": ("num_steps", "eval_every", "checkpoint_every"),
}


def _show_lines(run: Any, data: dict[str, Any], width: int) -> list[str]:
    from jaxlm.runs.table import age, cells

    c = cells(data["summary"])
    wrap = textwrap.TextWrapper(width=max(40, width), subsequent_indent="    ")
    out = [f"{run.name}  ({run.path})"]
    out.append(
        f"state {c['state']}, step {c['progress']}, model {run.model}, heartbeat "
        f"{age(run.heartbeat_age)} ago" + (f", ETA {c['eta']}" if c["eta"] != "-" else "")
    )
    if run.error:
        out.extend(wrap.wrap(f"why: {run.error}"))
    if run.job:
        j = run.job
        out.append(
            f"job {j['id']} in {j['queue']}: {j['state']}, attempt {j['attempt']}"
            + (f", last outcome {j['outcome']}" if j.get("outcome") else "")
        )
    out.append("config:")
    cfg = run.config
    out.append(f"  name {cfg.get('name', '?')}, seed {cfg.get('seed', '?')}")
    if isinstance(cfg.get("model"), dict):
        parts = ", ".join(f"{k}={_short(v)}" for k, v in cfg["model"].items())
        out.extend(wrap.wrap(f"  model: {parts}"))
    for section, keys in _CONFIG_KEYS.items():
        values = cfg.get(section)
        if isinstance(values, dict):
            parts = ", ".join(f"{k}={_short(values[k])}" for k in keys if k in values)
            out.extend(wrap.wrap(f"  {section}: {parts}"))
    out.append("last metrics:")
    if not data["last"]:
        out.append("  none")
    for split, row in data["last"].items():
        values = {k: v for k, v in row.items() if k not in ("step", "split", "time")}
        parts = ", ".join(f"{k} {_short(v)}" for k, v in values.items())
        out.extend(wrap.wrap(f"  {split} (step {row['step']}): {parts}"))
    final = {k: v for k, v in run.final.items() if k != "sample"}
    if final:
        out.extend(wrap.wrap("final: " + ", ".join(f"{k} {_short(v)}" for k, v in final.items())))
    out.append(f"events: {len(run.events) or 'none'}")
    for event in run.events:
        rest = {k: v for k, v in event.items() if k not in ("step", "event", "split", "time")}
        detail = ", ".join(f"{k}={_short(v)}" for k, v in rest.items())
        out.extend(wrap.wrap(f"  step {event.get('step', '-')}: {event['event']} {detail}"))
    steps = run.checkpoints
    out.append(
        f"checkpoints: {', '.join(map(str, steps))} in {run.path / 'checkpoints'}"
        if steps
        else "checkpoints: none"
        + (" (an n-gram model.npz)" if (run.path / "model.npz").is_file() else "")
    )
    if run.sample:
        out.append("sample:")
        out.extend("  " + line for line in run.sample.splitlines())
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:39] + "~"


def _runs(folders: Sequence[str]) -> list:
    from jaxlm.runs import read

    runs = read.load_runs(folders)
    return runs


def _compare(args: argparse.Namespace) -> int:
    from jaxlm.runs import compare

    runs = _runs(args.dirs)
    if args.json:
        _print_json(compare.comparison(runs))
    else:
        print(compare.render(runs))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxlm.runs import plot

    runs = _runs(args.dirs)
    metrics = plot.choose(args.metric, runs)  # an unknown name fails before matplotlib loads
    drawn = plot.write_plot(runs, metrics, args.out)
    if args.json:
        _print_json({"out": str(args.out), "metrics": drawn, "runs": [r.name for r in runs]})
    else:
        print(f"Wrote {args.out}: {', '.join(drawn)} of {len(runs)} run(s)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from jaxlm.errors import RunsError
    from jaxlm.runs import read, report

    path = Path(args.dir)
    if not path.is_dir():
        raise RunsError(f"{path}: no such folder")
    if not read.is_run(path):
        raise RunsError(f"{path}: not a run folder (it holds none of {', '.join(read.RUN_FILES)})")
    out = report.write_report(path, out=args.out)
    if args.json:
        _print_json({"report": str(out)})
    else:
        print(f"Wrote {out}")
    return 0


VERBS = {
    "list": _list,
    "show": _show,
    "compare": _compare,
    "plot": _plot,
    "watch": _watch,
    "report": _report,
}

if __name__ == "__main__":
    run()
