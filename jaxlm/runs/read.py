"""Run folders read back, tolerantly: finding them, their metrics, status, config and events.

A run folder is one holding ``status.json``, ``metrics.jsonl`` or ``config.json`` (what
:mod:`jaxlm.monitor` and :mod:`jaxlm.train.workdir` write). Reading one never fails on a damaged
file: a half-written last line of ``metrics.jsonl`` (a run writing it, or killed mid-write) and
garbage lines are skipped with one warning per file, an unreadable ``status.json`` or
``config.json`` is named and treated as absent.

This module imports only :mod:`jaxlm.monitor` and :mod:`jaxlm.errors`, so the training loop
writes each run's report through :mod:`jaxlm.runs.report` without a layer above it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jaxlm import monitor
from jaxlm.errors import RunsError

CONFIG_FILE = "config.json"  # jaxlm.checkpoints.layout's names (that package imports JAX)
CHECKPOINTS = "checkpoints"
NGRAM_MODEL = "model.npz"
SAMPLE_FILE = "sample.txt"
RUN_FILES = (monitor.STATUS_FILE, monitor.METRICS_FILE, CONFIG_FILE)
_NOT_RUNS = {CHECKPOINTS, "tensorboard", "__pycache__"}
Warn = Callable[[str], None]


def stderr(message: str) -> None:
    """The default ``warn``: ``warning: <message>`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds any of a run's files."""
    return any((folder / name).is_file() for name in RUN_FILES)


def find_runs(folders: Iterable[str | Path]) -> list[Path]:
    """Every run folder under each of ``folders`` (itself included), in path order.

    A run's own subfolders (checkpoints, TensorBoard events) are not searched.

    Args:
      folders: folders to search.

    Returns:
      The run folders.

    Raises:
      RunsError: a folder is missing, not a folder, or holds no run.

    Example:
      >>> import tempfile
      >>> root = Path(tempfile.mkdtemp()); (root / "a/b").mkdir(parents=True)
      >>> _ = (root / "a/b/status.json").write_text('{"state": "running"}')
      >>> [p.relative_to(root).as_posix() for p in find_runs([root])]
      ['a/b']
    """
    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise RunsError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise RunsError(f"{folder}: not a folder (give a run folder or one holding runs)")
        here = sorted(_walk(folder))
        if not here:
            raise RunsError(
                f"{folder}: no runs in it (no folder under it holds {', '.join(RUN_FILES)})"
            )
        found.extend(p for p in here if p not in found)
    return found


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        if any(name in files for name in RUN_FILES):
            dirs.clear()  # a run's own subfolders hold no runs
            yield Path(root)
            continue
        dirs[:] = sorted(d for d in dirs if d not in _NOT_RUNS and not d.startswith("."))


def find_journals(folders: Iterable[str | Path]) -> list[Path]:
    """The job queues' journals (``journal.jsonl``) under ``folders``, outside run folders."""
    out = []
    for folder in map(Path, folders):
        for root, dirs, files in os.walk(folder):
            if "journal.jsonl" in files:
                out.append(Path(root) / "journal.jsonl")
            if any(name in files for name in RUN_FILES):
                dirs.clear()
            dirs[:] = [d for d in dirs if d not in _NOT_RUNS and not d.startswith(".")]
    return out


def read_metrics(workdir: str | Path, warn: Warn = stderr) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``: each a JSON object with an integer ``step``.

    A last line without its newline (being written, or cut by a crash) and lines that are not
    such objects are skipped, with one warning for the file.

    Args:
      workdir: the run folder.
      warn: told once what was skipped, if anything.

    Returns:
      The rows in file order; [] without a file.

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp())
      >>> _ = (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\\nxx\\n{"step": 2')
      >>> read_metrics(run, warn=lambda m: print(m.split(": ", 1)[1]))
      skipped 1 unreadable line (line 2: 'xx') and a partial last line (being written, or cut off)
      [{'step': 1, 'loss': 2.0}]
    """
    path = Path(workdir) / monitor.METRICS_FILE
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        warn(f"{path}: cannot read it ({e}); no metrics")
        return []
    lines = text.split("\n")
    partial = lines.pop() != ""  # the text after the last newline
    rows, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _parse_row(line)
        if row is None:
            bad.append((number, line))
        else:
            rows.append(row)
    if bad or partial:
        parts = []
        if bad:
            number, line = bad[0]
            s = "s" if len(bad) > 1 else ""
            first = "first: " if len(bad) > 1 else ""
            parts.append(f"{len(bad)} unreadable line{s} ({first}line {number}: {line[:40]!r})")
        if partial:
            parts.append("a partial last line (being written, or cut off)")
        warn(f"{path}: skipped {' and '.join(parts)}")
    return rows


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    step = row.get("step")
    return row if isinstance(step, int) and not isinstance(step, bool) else None


def read_json(path: Path, warn: Warn = stderr) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing or unreadable (said so)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warn(f"{path}: unreadable ({e}); ignored")
        return None
    if not isinstance(data, dict):
        warn(f"{path}: expected a JSON object, found {str(data)[:40]}; ignored")
        return None
    return data


def number(value: Any) -> float | None:
    """``value`` as a finite-or-not float, or None when it is no number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclasses.dataclass
class Run:
    """One run folder as read: its files and what they say.

    Attributes:
      path: the run folder.
      name: how tables name it (the path below the folder searched).
      config: ``config.json`` ({} when missing or unreadable).
      status: ``status.json`` (None when missing or unreadable).
      rows: ``metrics.jsonl``'s readable rows.
      state: :func:`jaxlm.monitor.run_state`'s verdict, or the job's (see ``job``).
      job: the job balancer's record of it (id, state, outcome, attempt), when it ran as a job.
    """

    path: Path
    name: str
    config: dict[str, Any]
    status: dict[str, Any] | None
    rows: list[dict[str, Any]]
    state: str
    job: dict[str, Any] | None = None
    now: float = dataclasses.field(default_factory=time.time)

    @property
    def model(self) -> str:
        """The model's name (config, else "?")."""
        model = self.config.get("model")
        return str(model.get("name", "?")) if isinstance(model, dict) else "?"

    @property
    def step(self) -> int | None:
        """The step the status (else the metrics) last reached."""
        step = (self.status or {}).get("step")
        if isinstance(step, int):
            return step
        return max((r["step"] for r in self.rows), default=None)

    @property
    def total_steps(self) -> int | None:
        """The run's last step (status, else config)."""
        total = (self.status or {}).get("total_steps")
        if isinstance(total, int):
            return total
        train = self.config.get("train")
        return train.get("num_steps") if isinstance(train, dict) else None

    def split_rows(self, *splits: str) -> list[dict[str, Any]]:
        """The metric rows of these splits (event rows left out)."""
        return [r for r in self.rows if r.get("split") in splits and "event" not in r]

    def last(self, split: str, key: str) -> float | None:
        """The last value of ``key`` in the rows of ``split``."""
        for row in reversed(self.split_rows(split)):
            value = number(row.get(key))
            if value is not None:
                return value
        return None

    @property
    def best_validation_loss(self) -> float | None:
        """The lowest finite validation loss: evaluations during training and the final one."""
        values = [number(r.get("loss")) for r in self.split_rows("eval", "validation")]
        values.append(number(self.final.get("validation_loss")))
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return min(finite) if finite else None

    @property
    def tokens_per_s(self) -> float | None:
        """The last training throughput logged."""
        return self.last("train", "tokens_per_s")

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left while it runs; None otherwise."""
        if self.state not in (*monitor.ACTIVE_STATES, "stalled"):
            return None
        return number((self.status or {}).get("eta_seconds"))

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the status was last rewritten (heartbeat or update)."""
        status = self.status or {}
        beat = number(status.get("heartbeat", status.get("updated")))
        return None if beat is None else max(0.0, self.now - beat)

    @property
    def final(self) -> dict[str, Any]:
        """The final metrics (status.json's ``final``), {} before the run ends."""
        final = (self.status or {}).get("final")
        return final if isinstance(final, dict) else {}

    @property
    def sample(self) -> str:
        """The generated sample: ``sample.txt``, else the final metrics' ``sample``."""
        try:
            return (self.path / SAMPLE_FILE).read_text(errors="replace")
        except OSError:
            sample = self.final.get("sample")
            return sample if isinstance(sample, str) else ""

    @property
    def error(self) -> str:
        """Why it failed or stopped, as its status says ("" if nothing)."""
        status = self.status or {}
        return str(status.get("error") or status.get("stop_reason") or "")

    @property
    def events(self) -> list[dict[str, Any]]:
        """Health events: metric rows with an ``event`` key and status.json's ``events`` list
        (each once, by step and kind), in step order."""
        seen: dict[tuple[Any, str], dict[str, Any]] = {}
        listed = (self.status or {}).get("events")
        candidates = [r for r in self.rows if "event" in r]
        if isinstance(listed, list):
            candidates += [e if isinstance(e, dict) else {"event": str(e)} for e in listed]
        for event in candidates:
            if "event" not in event:
                continue
            key = (event.get("step"), str(event["event"]))
            seen.setdefault(key, event)
        return sorted(seen.values(), key=lambda e: (_step_key(e.get("step")), str(e["event"])))

    @property
    def checkpoints(self) -> list[int]:
        """The steps of ``checkpoints/<step>`` folders."""
        folder = self.path / CHECKPOINTS
        try:
            names = [p.name for p in folder.iterdir() if p.is_dir()]
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit())


def _step_key(step: Any) -> float:
    return float(step) if isinstance(step, int | float) else math.inf


def load_run(
    path: str | Path,
    name: str | None = None,
    *,
    stall_after: float | None = None,
    now: float | None = None,
    warn: Warn = stderr,
) -> Run:
    """Reads one run folder.

    Args:
      path: the run folder.
      name: its name in tables (default: the folder's name).
      stall_after: seconds without a step after which a live run is "stalled" (None: never).
      now: the time to judge heartbeats and stalls by (default: now).
      warn: told about damaged files.

    Returns:
      The :class:`Run`.

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp())
      >>> _ = (run / "status.json").write_text('{"state": "failed", "error": "boom"}')
      >>> r = load_run(run); r.state, r.error, r.model
      ('failed', 'boom', '?')
    """
    path = Path(path)
    now = time.time() if now is None else now
    status = monitor.read_status(path, log=warn)
    config = read_json(path / CONFIG_FILE, warn) or {}
    rows = read_metrics(path, warn)
    state = monitor.run_state(status, now=now, stall_after=stall_after)
    return Run(path, name or path.name, config, status, rows, state, now=now)


def load_runs(
    folders: Iterable[str | Path],
    *,
    stall_after: float | None = None,
    warn: Warn = stderr,
) -> list[Run]:
    """Every run under ``folders``, named by its path below the folder searched.

    Raises:
      RunsError: a folder is missing or holds no run.
    """
    folders = [Path(f) for f in folders]
    now = time.time()
    runs = []
    for folder in folders:
        for path in find_runs([folder]):
            rel = path.relative_to(folder).as_posix()
            name = folder.resolve().name if rel == "." else rel
            runs.append(load_run(path, name, stall_after=stall_after, now=now, warn=warn))
    return runs


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys.

    Example:
      >>> flatten({"a": {"b": 1, "c": [2, 3]}, "d": "x"})
      {'a.b': 1, 'a.c': [2, 3], 'd': 'x'}
    """
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree} if prefix else {}
